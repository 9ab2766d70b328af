"""Rendering for people (rich tables) and machines (JSON); data on stdout, messages on stderr.

Rich turns colour off by itself when ``NO_COLOR`` is set or the output is not a terminal.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnnbench import strict_json

# Piped output has no terminal width to fit: keep table rows on one line.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False)


def print_json(data) -> None:
    sys.stdout.write(strict_json.dumps(data, indent=2) + "\n")


def print_yaml(data: dict) -> None:
    """A configuration as ``config.yaml`` holds it."""
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


def human(n: float, unit: str = "", base: int = 1000) -> str:
    """12_345_678 -> '12.35 M' (``base`` 1024 for bytes: 'MiB')."""
    prefixes = ["", "K", "M", "G", "T", "P"]
    i = 0
    while abs(n) >= base and i < len(prefixes) - 1:
        n /= base
        i += 1
    prefix = prefixes[i] + ("i" if base == 1024 and i else "")
    return f"{n:,.0f} {unit}".rstrip() if i == 0 else f"{n:.2f} {prefix}{unit}"


def fmt_shape(shape) -> str:
    if shape is None:
        return "--"
    if shape and all(isinstance(s, int) for s in shape):
        return "[" + ", ".join(str(s) for s in shape) + "]"
    if isinstance(shape, dict):
        return " ".join(f"{k}: {fmt_shape(v)}" for k, v in shape.items())
    return " ".join(fmt_shape(s) for s in shape)


def models_table(rows: list[dict]) -> None:
    table = Table(title="Registered models", title_justify="left")
    for col, justify in (("name", "left"), ("task", "left"), ("input", "left"),
                         ("params", "right"), ("source", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "source")
    for r in rows:
        table.add_row(r["name"], r["task"], "x".join(map(str, r["input_size"])),
                      f"{r['params']:,}", r["source"])
    out.print(table)
    out.print("Any torchvision model too: torchvision:<name> (e.g. torchvision:resnet50).")


_SUMMARY_HEADERS = {"input_shape": "input shape", "output_shape": "output shape",
                    "kernel": "kernel", "params": "params", "params_percent": "params %",
                    "trainable": "trainable", "flops": "FLOPs", "rf": "RF / stride"}


def _pair(v) -> str:
    return "--" if v is None else str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"


def _summary_cells(layer: dict) -> dict:
    params, rf = layer["params"], layer.get("receptive_field")
    trainable = {True: "yes", False: "no"}.get(layer["trainable"], layer["trainable"])
    return {
        "input_shape": fmt_shape(layer.get("input_shape")),
        "output_shape": fmt_shape(layer["output_shape"]),
        "kernel": "x".join(map(str, layer["kernel_size"])) if layer.get("kernel_size") else "--",
        "params": f"{params:,}" if params else "--",
        "params_percent": f"{layer.get('params_percent', 0):.2f} %" if params else "--",
        "trainable": trainable if params else "--",
        "flops": human(layer["flops"]) if layer["flops"] else "--",
        "rf": f"{_pair(rf)} / {_pair(layer['stride'])}" if rf else "--",
    }


def summary_table(s: dict, columns=("output_shape", "params", "trainable", "flops")) -> None:
    """The layer table with ``columns`` (see ``cnnbench.summary.COLUMNS``), then the totals;
    a row per weight tensor under its layer where the summary has them (``verbose``)."""
    size = (fmt_shape(s["input_size"]) if not isinstance(s["input_size"][0], list)
            else ", ".join(map(fmt_shape, s["input_size"])))
    table = Table(title=f"{s['model']}  (input {size})", title_justify="left")
    table.add_column("layer (type)", no_wrap=True)
    for c in columns:
        table.add_column(_SUMMARY_HEADERS[c], no_wrap=c.endswith("shape"),
                         justify="center" if c == "trainable" else
                         "left" if c.endswith("shape") else "right")
    for layer in s["layers"]:
        indent = "  " * (layer["depth"] - 1)
        cells = _summary_cells(layer)
        table.add_row(f"{indent}{layer['name']} ({layer['type']})", *(cells[c] for c in columns))
        for w in layer.get("weights", []):
            extra = {"params": f"{w['params']:,}", "kernel": "", "input_shape": "",
                     "params_percent": "", "trainable": "yes" if w["trainable"] else "no"}
            table.add_row(f"{indent}  · {w['name']} {fmt_shape(w['shape'])}",
                          *(extra.get(c, "") for c in columns))
    out.print(table)
    lines = [
        ("Total params", f"{s['total_params']:,}"),
        ("Trainable params", f"{s['trainable_params']:,}"),
        ("Non-trainable params", f"{s['non_trainable_params']:,}"),
        ("Total FLOPs", f"{human(s['flops'], 'FLOPs')}  (1 multiply-add = 2 FLOPs; "
                        f"batch {s['input_size'][0]})"),
        ("Input size", f"{size}  ({human(s['input_bytes'], 'B', 1024)})"),
        ("Output", fmt_shape(s["outputs"])),
        ("Parameter memory", human(s["param_bytes"], "B", 1024) + "  (parameters and buffers)"),
        ("Activation memory", human(s["activation_bytes"], "B", 1024)
         + "  (estimate: outputs of all leaf layers, kept for backward)"),
    ]
    if s.get("uncounted_ops"):
        lines.append(("Not in FLOPs", ", ".join(s["uncounted_ops"])
                      + "  (no FLOP formula in torch.utils.flop_counter)"))
    lines += [("Note", n) for n in s["notes"]]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out.print(f"{key:<{width}}  {value}")


# --- training (issue 3) ---

def epoch_line(row: dict, epochs: int | None = None) -> str:
    """One line per epoch: what `cnnbench train --quiet` prints."""
    of = f"/{epochs}" if epochs else ""
    parts = [f"epoch {row['epoch']:>2}{of}", f"lr {row['lr']:.3g}"]
    for split in ("train", "val"):
        if f"{split}_loss" in row:
            parts.append(f"{split} loss {row[f'{split}_loss']:.4f}")
        # Then the task's own metrics: acc for classifiers, miou, map50, f1, ... for the others.
        parts += [f"{key.removeprefix(split + '_')} {value:.4f}" for key, value in row.items()
                  if key.startswith(split + "_") and key != f"{split}_loss"
                  and isinstance(value, float)]
    parts.append(f"{row['epoch_seconds']:.1f} s")
    parts.append(f"{row['images_per_second']:,.0f} img/s")
    return "  ".join(parts)


class TrainReporter:
    """The trainer's progress: a rich bar per epoch (on stderr) and one line per epoch."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or out  # stderr when stdout carries JSON
        self.live = not quiet
        self.epochs = None
        self._bar = self._task = None

    def start(self, info: dict) -> None:
        self.epochs = info["epochs"]
        what = "resuming" if info["resumed"] else "training"
        size = "x".join(map(str, info["input_size"]))
        profile = f", profile {info['profile']}" if info.get("profile", "none") != "none" else ""
        how = [info["amp"].replace("torch.", "")] if info.get("amp", "none") != "none" else []
        if info.get("compile"):  # the first steps take seconds: say why before they start
            how.append(f"torch.compile {info['compile']}, compiling at the first steps")
        profile += f" ({', '.join(how)})" if how else ""
        self.console.print(
            f"{what} {info['model']} ({info['task']}, {info['params']:,} params) on "
            f"{info['device']}: {info['train']:,} train / {info['val']:,} val / "
            f"{info['test']:,} test images at {size}, epochs {info['start_epoch']}-"
            f"{info['epochs']}{profile}, run {info['run_dir']}", soft_wrap=True)

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        if self.quiet:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                             TimeElapsedColumn(), TimeRemainingColumn(),
                             console=err, transient=True)
        self._task = self._bar.add_task("train", total=batches, epoch=f"{epoch}/{epochs}",
                                        stats="")
        self._bar.start()

    def progress(self, batch: int, metrics: dict, images_per_second: float) -> None:
        if self._bar is None:
            return
        stats = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("loss", "acc"))
        self._bar.update(self._task, completed=batch,
                         stats=f"{stats}  {images_per_second:,.0f} img/s")

    def epoch_end(self, row: dict) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self.console.print(epoch_line(row, self.epochs), soft_wrap=True)

    def finish(self, results: dict) -> None:
        tests = "  ".join(f"{k[5:]} {v:.4f}" for k, v in results.items()
                          if k.startswith("test_") and k != "test_seconds"
                          and isinstance(v, float))
        weights = f"{results.get('test_checkpoint', 'last')}.pt of epoch {results['test_epoch']}"
        stopped = (f", stopped early after epoch {results['stopped_early']}"
                   if results.get("stopped_early") else "")
        self.console.print(f"test on {weights}  {tests}  ({results['minutes']:.1f} min "
                           f"training, best val epoch {results['best_epoch']}{stopped}) -> "
                           f"{results['run_dir']}", soft_wrap=True)


def lr_find_lines(result: dict) -> None:
    """What `cnnbench lr-find` prints: the sweep, the minimum and the suggestion."""
    stop = ("stopped: the smoothed loss passed 4x its best" if result["diverged"]
            else "the whole sweep")
    batch = f"batch {result['batch_size']}" + (f" x {result['accumulate_steps']} accumulated"
                                               if result["accumulate_steps"] > 1 else "")
    out.print(f"lr-find {result['model']} ({result['optimizer']}, {batch}, "
              f"{result['train_images']:,} training images, {result['device']}): "
              f"{result['steps']} steps, lr {result['start']:.1e} to {result['lrs'][-1]:.2e} "
              f"({stop}), {result['seconds']:.1f} s", soft_wrap=True)
    out.print(f"smoothed loss: lowest {result['min_loss']:.4f} at lr "
              f"{result['min_loss_lr']:.2e}; minimum / 10: {result['minimum_div10_lr']:.2e}")
    out.print(f"suggested lr: {result['suggested_lr']:.2e} ({result['rule']})")
    if result.get("steepest_lr") is not None:
        out.print(f"steepest descent: {result['steepest_lr']:.2e} (fastai's steep, Lightning's "
                  "suggestion; often too high)")
    if result.get("plot"):
        out.print(f"Plot written to {result['plot']}")


def _cell(value) -> str:
    """A configuration value in a table cell: YAML's spelling, floats short."""
    if value is None:
        return "--"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _score(value, monitor: str) -> str:  # other tasks name their metric (e.g. "0.6120 miou")
    return "--" if value is None else f"{value:.4f}" + ("" if monitor == "acc" else f" {monitor}")


def runs_table(rows: list[dict], sweeps: list[str] = ()) -> None:
    """`cnnbench runs`: a row per run, with the ``--columns`` keys after the model; then the
    sweep folders beside them."""
    columns = list(rows[0].get("config", {})) if rows else []
    table = Table(title="Runs", title_justify="left")
    for col, justify in (("run", "left"), ("model", "left"), *((c, "right") for c in columns),
                         ("started", "left"), ("epochs", "right"), ("best val acc", "right"),
                         ("test acc", "right"), ("minutes", "right"), ("status", "left")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in rows:
        epochs = str(r["epochs"])
        if r["epochs"] != r["of_epochs"]:
            epochs += f"/{r['of_epochs']}"
        table.add_row(r["run"], r["model"], *(_cell(r["config"][c]) for c in columns),
                      r["started"].replace("T", " "), epochs,
                      _score(r["best_val"], r["monitor"]), _score(r["test"], r["monitor"]),
                      f"{r['minutes']:.1f}", r.get("status", ""))
    out.print(table)
    if not rows:
        out.print("No runs yet: `cnnbench train lenet` makes one.")
    for folder in sweeps:
        out.print(f"Sweep {folder}: `cnnbench runs --sweep {folder}`")


def _spread(s: dict) -> str:
    """mean ± sample standard deviation (cnnbench.sweep.spread); one value alone."""
    if s["mean"] is None:
        return "--"
    return f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s["std"] is not None else "")


def sweep_table(t: dict) -> None:
    """`cnnbench sweep` and `cnnbench runs --sweep DIR`: a row per setting over its seeds."""
    monitor = t["monitor"] or "?"
    table = Table(title=f"Sweep {t['model']}: {t['sweep']}", title_justify="left")
    for col in [*t["varied"], "runs", f"best val {monitor}", f"test {monitor}", "min..max test",
                "minutes", "best"]:
        table.add_column(col, justify="left" if col == "best" else "right", no_wrap=True)
    for r in t["rows"]:
        test = r["test"]
        table.add_row(*(_cell(r["setting"][k]) for k in t["varied"]),
                      f"{r['finished']}/{r['of']}", _spread(r["best_val"]), _spread(test),
                      "--" if test["min"] is None else f"{test['min']:.4f}..{test['max']:.4f}",
                      "--" if r["minutes"] is None else f"{r['minutes']:.2f}",
                      "*" if r["best"] else "")
    out.print(table)
    seeds = ", ".join(map(str, t["seeds"] or []))
    out.print(f"mean ± sample standard deviation over the seeds ({seeds}) of the finished runs; "
              f"* the best mean best-validation {monitor} ({t['mode']})")


def search_table(t: dict) -> None:
    """`cnnbench sweep --search` and `cnnbench runs --sweep DIR` of a search: a row per trial."""
    monitor = t["monitor"]
    keys = list(dict.fromkeys(k for r in t["rows"] for k in r["params"]))
    table = Table(title=f"Search {t['model']} ({t['search']}, pruner {t['pruner']}): "
                        f"{t['sweep']}", title_justify="left")
    for col in ["trial", *keys, "state", "epochs", f"best val {monitor}", f"test {monitor}",
                "best"]:
        table.add_column(col, justify="left" if col in ("state", "best") else "right",
                         no_wrap=True)
    for r in t["rows"]:
        table.add_row(str(r["trial"]), *(_cell(r["params"].get(k)) for k in keys), r["state"],
                      str(r["epochs"] or 0),
                      "--" if r["value"] is None else f"{r['value']:.4f}",
                      "--" if r[f"test_{monitor}"] is None else f"{r[f'test_{monitor}']:.4f}",
                      "*" if r["trial"] == t["best"] else "")
    out.print(table)
    c = t["counts"]
    out.print(f"{len(t['rows'])} of {t['trials']} trials: {c['complete']} complete, "
              f"{c['pruned']} pruned, {c['running']} running, {c['fail']} failed; "
              f"{t['epochs']} epochs trained; * the best validation {monitor} "
              f"({t['direction']}); study in {t['storage']}")
    for picture in t.get("pictures", {}).values():
        out.print(f"Picture written to {picture}")


def compare_table(result: dict) -> None:
    """`cnnbench runs --compare`: the keys that differ and the metrics, a column per run."""
    runs = result["runs"]
    table = Table(title="Runs compared", title_justify="left")
    table.add_column("", no_wrap=True)
    for r in runs:
        table.add_column(r["run"], justify="right", no_wrap=True)
    for key in result["differ"]:
        table.add_row(key, *(_cell(r["settings"][key]) for r in runs))
    if result["differ"]:
        table.add_section()
    for key in result.get("environment_differ", ()):
        table.add_row(f"env {key}", *(escape(_cell(r["environment"][key])) for r in runs))
    if result.get("environment_differ"):
        table.add_section()
    table.add_row("epochs", *(str(r["epochs"]) for r in runs))
    table.add_row("best val", *(_score(r["best_val"], r["monitor"]) for r in runs))
    table.add_row("test", *(_score(r["test"], r["monitor"]) for r in runs))
    table.add_row("minutes", *(f"{r['minutes']:.2f}" for r in runs))
    table.add_row("status", *(r["status"] for r in runs))
    out.print(table)
    if not result["differ"]:
        out.print("Their configurations are the same (seed included).")


def keys_table(rows: list[dict]) -> None:
    """`cnnbench train --keys`: each key, where it is declared, its default, rule and help."""
    with_value = any("value" in r for r in rows)
    table = Table(title="Configuration keys (--set KEY=VALUE, or in a recipe)",
                  title_justify="left")
    for col in ("key", "group", "default", *(("value",) if with_value else ()), "accepts",
                "help"):
        table.add_column(col, no_wrap=col in ("key", "group"), overflow="fold",
                         max_width={"accepts": 34, "help": 64}.get(col))
    for r in rows:
        accepts = (", ".join(map(str, r["choices"])) if r["choices"]
                   else f"{r['type']} {r['bounds']}" if r["bounds"] else r["type"])
        table.add_row(r["key"], r["group"], _yaml_cell(r["default"]),
                      *((_yaml_cell(r["value"]),) if with_value else ()), accepts, r["help"])
    out.print(table)


def _yaml_cell(value) -> str:
    return escape(yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n..."))


# --- eval and predict (issue 17) ---

def _stat_cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "--"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def eval_report(result: dict, top_losses: int = 8) -> None:
    """`cnnbench eval RUN`: metrics, per-class table, confusion matrix, top losses, pictures."""
    tta = ", flip TTA" if result["tta"] else ""
    ema = " (its model EMA)" if result.get("weights") == "ema" else ""
    out.print(f"{result['run']} ({result['model']}, {result['task']}): "
              f"{result['checkpoint']}.pt{ema} of epoch {result['epoch']} on {result['images']:,} "
              f"test images{tta}", soft_wrap=True)
    out.print("  ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items()))
    rows = result["per_class"]
    if rows:
        table = Table(title="Per class", title_justify="left")
        for col in rows[0]:
            table.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)
        for r in rows:
            table.add_row(*(str(v) if k == "class" else _stat_cell(v) for k, v in r.items()))
        out.print(table)
        if result.get("per_class_note"):
            out.print(result["per_class_note"], soft_wrap=True)
    confusion = result["confusion_matrix"]
    if confusion and len(confusion) <= 20:
        names = result["class_names"]
        if len(confusion) == len(names) + 1:
            names = ["background", *names]
        table = Table(title="Confusion matrix (rows: actual, columns: predicted)",
                      title_justify="left")
        table.add_column("actual", no_wrap=True)
        for i in range(len(names)):
            table.add_column(str(i), justify="right", no_wrap=True)
        for i, (name, row) in enumerate(zip(names, confusion)):
            table.add_row(f"{i} {name}", *(f"{v:,}" for v in row))
        out.print(table)
    worst = result.get("top_losses", [])[:top_losses]
    if worst:
        table = Table(title="Top losses", title_justify="left")
        named = "file" in worst[0]  # images read from files: the file, not only the index
        for col in ("image", *(("file",) if named else ()), "actual", "predicted", "loss",
                    "p(actual)"):
            table.add_column(col, justify="right" if col in ("image", "loss", "p(actual)")
                             else "left", no_wrap=col != "file")
        for w in worst:
            table.add_row(str(w["index"]), *((w["file"],) if named else ()), w["actual"],
                          w["predicted"], f"{w['loss']:.3f}", f"{w['probability']:.3f}")
        out.print(table)
    for name, path in result["pictures"].items():
        out.print(f"{name.replace('_', ' ')}: {path}", soft_wrap=True)


def predictions_lines(rows: list[dict]) -> None:
    """`cnnbench predict`: one block per file."""
    for r in rows:
        found = r["predictions"]
        out.print(f"{r['file']}: {r['summary']}", soft_wrap=True)
        for p in found:
            box = (" at " + ",".join(f"{v:.0f}" for v in p["box"])) if "box" in p else ""
            out.print(f"  {p['class']:<16} {p['score']:.4f}{box}", soft_wrap=True)
        if r.get("picture"):
            out.print(f"  drawn: {r['picture']}", soft_wrap=True)

def export_lines(result: dict) -> None:
    """`cnnbench export`: the file, what it takes and returns, and the check."""
    out.print(f"{result['file']}: {result['format']}, {result['bytes'] / 2**20:.1f} MiB, "
              f"{result['model']} ({result['task']}) {result['checkpoint']}.pt of epoch "
              f"{result['epoch']}", soft_wrap=True)
    out.print(f"  input   {result['input']['text']}", soft_wrap=True)
    out.print(f"  output  {result['outputs']['text']}", soft_wrap=True)
    names = result["class_names"]
    shown = ", ".join(names[:10]) + (f", ... ({len(names)})" if len(names) > 10 else "")
    out.print(f"  classes {shown} (in the file's metadata)", soft_wrap=True)
    out.print(f"  check   max abs difference from the eager model {result['max_abs_diff']:.3g} "
              f"on {result['checked_images']} test images (one batch, then one image; "
              f"largest output {result['max_abs_output']:.3g})",
              soft_wrap=True)


def exported_scenes_lines(result: dict) -> None:
    """`cnnbench export-scenes`: each folder written and the ``--data`` that reads it."""
    for name in ("coco", "masks"):
        if name in result:
            out.print(escape(f"wrote {result['scenes']} training and {result['test_scenes']} test "
                             f"scenes to {result[name]['folder']}: train on them with --data "
                             f"{result[name]['data']}"), soft_wrap=True)


@contextmanager
def progress_bar(what: str, quiet: bool = False):
    """A bar on stderr for long work: yields ``update(done, total)``; the bar starts at the
    first update (an error before it prints its one line alone); nothing when ``quiet``."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    bar = None

    def update(done: int, total: int | None = None) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TimeRemainingColumn(), console=err,
                           transient=True)
            bar.add_task(what, total=total)
            bar.start()
        bar.update(bar.task_ids[0], completed=done, total=total)

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()


def predict_csv_line(result: dict) -> None:
    """`cnnbench predict --csv`: one line."""
    out.print(f"{result['files']:,} files -> {result['csv']} ({result['model']}, "
              f"{result['task']}, top {result['top']}, {result['checkpoint']}.pt) in "
              f"{result['seconds']:.1f} s", soft_wrap=True)


# --- bench (issue 4) ---

def _ms(value, spread=None) -> str:
    if value is None:
        return "--"
    text = f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return text + (f" ±{spread / 2:.2g}" if spread else "")


def bench_table(result: dict | list[dict]) -> None:
    """`cnnbench bench MODEL...`: one line per batch size (or swept size), per model."""
    results = result if isinstance(result, list) else [result]
    first = results[0]
    several = len(results) > 1
    detail = any("train_fwd_time" in r for res in results for r in res["rows"])
    threads = f"{first['threads']} CPU thread{'s' * (first['threads'] > 1)}"
    title = (f"{first['model'] if not several else f'{len(results)} models'} on "
             f"{first['device_name']}, {first['precision']}"
             f"{', channels-last' if first['channels_last'] else ''}"
             f"{', compiled' if first['compile'] else ''}, {threads}"
             f"{' (' + first['threads_source'] + ')' if first.get('threads_source') else ''}")
    table = Table(title=title, title_justify="left")
    columns = (["model"] if several else []) + [
        "batch", "input", "infer ms/step", "infer samples/s", "infer GFLOP/s", "infer peak MiB",
        "train ms/step", *(["fwd ms", "bwd ms", "opt ms"] if detail else []), "train samples/s",
        "train GFLOP/s", "train peak MiB"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "input") else "right",
                         no_wrap=True)
    for res in results:
        for r in res["rows"]:
            train_batch = r.get("train_batch_size", r["infer_batch_size"])
            cells = [res["model"]] if several else []
            cells += [_batch(r), "x".join(map(str, r["infer_input_size"])),
                      _ms(r["infer_step_time"], r["infer_step_time_iqr"]),
                      f"{r['infer_samples_per_sec']:,.1f}", f"{r['infer_gflops_per_sec']:.3g}",
                      f"{r['infer_peak_mem_mb']:.1f}",
                      (f"(b{train_batch}) " if train_batch != r["infer_batch_size"] else "")
                      + _ms(r.get("train_step_time"), r.get("train_step_time_iqr"))]
            if detail:
                cells += [_ms(r.get(f"train_{k}_time"), r.get(f"train_{k}_time_iqr"))
                          for k in ("fwd", "bwd", "opt")]
            cells += [f"{r['train_samples_per_sec']:,.1f}" if "train_samples_per_sec" in r
                      else "--",
                      f"{r['train_gflops_per_sec']:.3g}" if "train_gflops_per_sec" in r else "--",
                      f"{r['train_peak_mem_mb']:.1f}" if "train_peak_mem_mb" in r else "--"]
            table.add_row(*cells)
    out.print(table)
    for res in results:
        rows = res["rows"]
        name = f"{res['model']}: " if several else ""
        if rows:
            out.print(f"{name}params {rows[0]['param_count']:.3f} M; "
                      f"{rows[0]['gmacs']:.4g} GMACs per sample at {rows[0]['infer_img_size']} px"
                      f"{_optimizer_text(res.get('optimizer'))}")
        if len(rows) > 1 and res.get("sweep"):
            a, b = rows[0], rows[-1]
            what = "batch" if res["sweep"] == "batch" else "image size"
            out.print(f"{name}growth over the {what} sweep: inference step x"
                      f"{b['infer_step_time'] / a['infer_step_time']:.1f} for x"
                      f"{_scale(a, b, res['sweep']):.1f} the work")
    out.print("ms/step is the median ± half the IQR")
    for note in dict.fromkeys(n for res in results for n in res["notes"]):
        out.print(f"Note  {note}")


def exported_bench_table(result: dict) -> None:
    """`cnnbench bench FILE`: each runtime per batch size, and its speed against eager."""
    table = Table(title=f"{result['file']} ({result['model']}) on {result['device_name']}, "
                        f"threads: {result['threads_source']}", title_justify="left")
    for col in ("batch", "runtime", "infer ms/step", "infer samples/s", "speed vs eager"):
        table.add_column(col, justify="left" if col == "runtime" else "right", no_wrap=True)
    for r in result["rows"]:
        ratio = r["speed_vs_eager"]
        table.add_row(str(r["infer_batch_size"]), r["runtime"],
                      _ms(r["infer_step_time"], r["infer_step_time_iqr"]),
                      f"{r['infer_samples_per_sec']:,.1f}",
                      "--" if ratio is None else f"{ratio:.2f}x")
    out.print(table)
    out.print(f"input {result['input']}; ms/step is the median ± half the IQR")
    for note in result["notes"]:
        out.print(f"Note  {note}")


def _batch(row: dict) -> str:
    """The batch asked for, and the one measured after out-of-memory retries (32→16)."""
    failed = row.get("infer_oom_batch_sizes")
    return f"{failed[0]}→{row['infer_batch_size']}" if failed else str(row["infer_batch_size"])


def _optimizer_text(settings: dict | None) -> str:
    if not settings:
        return ""
    values = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in settings.items()
                       if k not in ("name", "source", "betas", "nesterov") and v)
    return f"; training step with {settings['name']} ({values}) from {settings['source']}"


def _scale(first, last, sweep) -> float:
    if sweep == "batch":
        return last["infer_batch_size"] / first["infer_batch_size"]
    return (last["flops_per_sample"] / first["flops_per_sample"]) if first["flops_per_sample"] else 0


def deformconv_table(result: dict) -> None:
    """`cnnbench bench deformconv`: the implementations side by side, fastest named below."""
    tf32 = result.get("tf32")
    tf32_text = "" if tf32 is None else (
        ", TF32 " + ("on" if any(tf32.values()) else "off") + " in the timings"
        + (f" (matmul {_on(tf32['matmul'])}, cuDNN {_on(tf32['cudnn'])})"
           if any(tf32.values()) else ""))
    table = Table(title=f"deform_conv2d on {result['device_name']}, {result['dtype']}{tf32_text} "
                        f"({result['layer']})", title_justify="left")
    for col in ("impl", "shape NxCxHxW k", "fwd ms", "fwd+bwd ms", "fwd+bwd vs torchvision",
                "peak MiB", "max abs err"):
        table.add_column(col, justify="left" if col in ("impl", "shape NxCxHxW k") else "right",
                         no_wrap=True)
    tv = {(r["batch"], r["channels"], r["height"], r["width"], r["kernel"]): r["fwd_bwd_ms"]
          for r in result["rows"] if r["impl"] == "torchvision"}
    for r in result["rows"]:
        key = (r["batch"], r["channels"], r["height"], r["width"], r["kernel"])
        ratio = "--"
        if r["impl"] == "torchvision":
            ratio = "baseline"
        elif tv.get(key) and r.get("fwd_bwd_ms"):
            speedup = tv[key] / r["fwd_bwd_ms"]
            ratio = f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"
        err = r.get("max_abs_err")
        table.add_row(r["impl"], f"{r['batch']}x{r['channels']}x{r['height']}x{r['width']} "
                                 f"k{r['kernel']}",
                      _ms(r.get("fwd_ms"), r.get("fwd_ms_iqr")),
                      _ms(r.get("fwd_bwd_ms"), r.get("fwd_bwd_ms_iqr")), ratio,
                      f"{r['peak_mem_mb']:.1f}" if r.get("peak_mem_mb") is not None else "--",
                      r.get("error", "--")[:40] if err is None else f"{err:.1e}")
    out.print(table)
    for line in result["summary"]:
        out.print(line)
    out.print("max abs err: largest difference of the output and of every gradient from "
              "torchvision's op, computed with TF32 off (JSON: per tensor, and relative); conv2d "
              "is the plain-convolution floor (no sampling)"
              + ("; ours dispatches to triton on CUDA." if any(
                  r["impl"] == "triton" for r in result["rows"]) else "."))
    for note in result.get("notes", []):
        out.print(f"Note  {note}")


def _on(flag: bool) -> str:
    return "on" if flag else "off"


# --- receptive fields (issue 5) ---

def _hw(pair) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in pair)


def receptive_field_table(result: dict, checks: dict | None = None) -> None:
    """One row per layer: field, stride (jump), start, what the centre unit sees, notes."""
    size = result["input_size"]
    table = Table(title=f"{result['model']}  receptive fields (input {_hw(size)})",
                  title_justify="left")
    for col, justify in (("layer", "left"), ("type", "left"), ("RF h x w", "right"),
                         ("stride", "right"), ("start", "right"), ("seen", "right"),
                         ("notes", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "notes")
    if checks is not None:
        table.add_column("verify", justify="center", no_wrap=True)
    by_name = {c["name"]: c for c in (checks or {}).get("checked", [])}
    for layer in result["layers"]:
        row = [layer["name"], layer["type"], _hw(layer["receptive_field"]), _hw(layer["stride"]),
               _hw(layer["start"]), _hw(layer["seen"]) + (" all" if layer["whole_input"] else ""),
               "; ".join(layer["notes"])]
        if checks is not None:
            check = by_name.get(layer["name"])
            row.append("--" if check is None else
                       ("[green]ok*[/]" if check.get("note") else "[green]ok[/]")
                       if check["agree"] else f"[red]{_box(check['gradient'])}[/]")
        table.add_row(*row)
    out.print(table)
    for note in result.get("notes", []):
        out.print(f"Note: {note}")
    out.print("RF: receptive field (largest unit, extending into padding); stride: input pixels "
              "between neighbouring units; start: centre of the first unit's field (h, w); "
              "seen: the centre unit's field inside the input ('all': the whole input).")
    if checks is not None:
        bad = [c for c in checks["checked"] if not c["agree"]]
        out.print(f"Verify ({checks['dtype']}, linearised model, gradient of one unit): "
                  f"{len(checks['checked']) - len(bad)}/{len(checks['checked'])} layers agree; "
                  "'--': same field as the layer before it, not checked again.")
        if any(c.get("note") for c in checks["checked"]):
            out.print("ok*: the gradient box equals the pixels the unit really reads; the "
                      "field clipped to the input is larger at the border, where only padding "
                      "units (ceil-mode pooling, padding, dilation) would add pixels.")
        for c in bad:
            out.print(f"  {c['name']}: analytic {_box(c['analytic'])} gradient "
                      f"{_box(c['gradient'])}" + (f" ({c['note']})" if c.get("note") else ""))


def _box(box) -> str:
    if not box or box[0] is None or box[1] is None:
        return "none"
    (y0, y1), (x0, x1) = box
    return f"rows {y0}-{y1}, cols {x0}-{x1}"


def effective_field_lines(erf: dict) -> None:
    sides = erf["mass_sides"]
    out.print(f"Effective receptive field of {erf['model']} layer {erf['layer']} "
              f"({erf['type']}), centre unit {tuple(erf['unit'])} at input pixel "
              f"{tuple(erf['centre'])}; {erf['inputs']}, "
              + (f"weights from {erf['checkpoint']}" if erf["checkpoint"] else "untrained weights"))
    table = Table(title_justify="left", show_header=True)
    table.add_column("measure")
    table.add_column("h x w", justify="right")
    table.add_row("theoretical field", _hw(erf["receptive_field"]))
    table.add_row("theoretical, inside the input", _hw(erf["seen"]))
    for key in ("50%", "90%", "99%"):
        table.add_row(f"square holding {key} of |gradient|", _hw(sides[key] or [0, 0]))
    out.print(table)


def grid_table(result: dict, cells: int = 4) -> None:
    """Per feature map: grid, cell stride, field; the input region of a few cells."""
    table = Table(title=f"{result['model']}  what each grid cell sees (input "
                        f"{_hw(result['input_size'])})", title_justify="left")
    for col in ("map (layers)", "grid", "RF", "stride", "cell (0,0)", "centre cell", "last cell"):
        table.add_column(col, no_wrap=col != "map (layers)")
    for m in result["maps"]:
        rows, cols = m["rows"], m["cols"]
        ci, cj = (len(rows) - 1) // 2, (len(cols) - 1) // 2

        def cell(i, j):
            return _box([rows[i], cols[j]])

        table.add_row(", ".join(m["layers"]), _hw(m["grid"]), _hw(m["receptive_field"]),
                      _hw(m["stride"]), cell(0, 0), f"({ci},{cj}) {cell(ci, cj)}",
                      cell(len(rows) - 1, len(cols) - 1))
    out.print(table)
    for m in result["maps"]:
        if max(m["grid"]) <= cells:
            out.print(f"{', '.join(m['layers'])}: {_hw(m['grid'])} cells; cell rows see input "
                      "rows " + ", ".join(f"{r[0]}-{r[1]}" for r in m["rows"] if r)
                      + "; cell columns see input columns "
                      + ", ".join(f"{c[0]}-{c[1]}" for c in m["cols"] if c))
    out.print("A cell's region is its receptive field clipped to the image; the anchors of "
              "a cell are centred in it, but the network sees the whole region (more weight "
              "near the centre: see --erf).")
