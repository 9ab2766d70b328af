"""Writing benchmark results: CSV with timm's column names, JSON files, sweep plots."""

from __future__ import annotations

import io
import os

from cnnbench import files
from cnnbench.errors import CnnbenchError


def write_csv(rows: list[dict], path: str) -> None:
    import csv

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and not isinstance(row[k], (dict, list))]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(path, text.getvalue())


def write_json(result, path: str) -> None:
    files.write_json(path, result)


def plot_sweep(result: dict | list[dict], path: str) -> None:
    """Step time (median, IQR bars) and throughput against the swept batch (a log-2 axis) or
    size; ``result`` may be a list of models' results, drawn side by side."""
    try:
        import matplotlib
    except ImportError:
        raise CnnbenchError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = result if isinstance(result, list) else [result]
    result = results[0]
    rows, deform = result["rows"], "op" in result
    fig, (ax_time, ax_rate) = plt.subplots(1, 2, figsize=(10, 4))
    if deform:
        keys = [(f"{r['batch']}x{r['channels']}x{r['height']}x{r['width']}") for r in rows]
        xs = list(dict.fromkeys(keys))
        for impl in dict.fromkeys(r["impl"] for r in rows):
            sel = [r for r in rows if r["impl"] == impl and r.get("fwd_bwd_ms")]
            pos = [xs.index(f"{r['batch']}x{r['channels']}x{r['height']}x{r['width']}")
                   for r in sel]
            ax_time.errorbar(pos, [r["fwd_bwd_ms"] for r in sel],
                             yerr=[r.get("fwd_bwd_ms_iqr", 0) for r in sel], marker="o",
                             label=impl, capsize=3)
            ax_rate.plot(pos, [r["fwd_ms"] for r in sel], marker="o", label=impl)
        for ax in (ax_time, ax_rate):
            ax.set_xticks(range(len(xs)), xs, rotation=20, fontsize=8)
            ax.set_xlabel("input batch x channels x height x width")
            ax.set_yscale("log")
            ax.legend()
        ax_time.set_ylabel("forward+backward (ms)")
        ax_rate.set_ylabel("forward (ms)")
        fig.suptitle(f"deform_conv2d: time per call against the input, on "
                     f"{result['device_name']} ({result['dtype']})")
    else:
        by_size = result["sweep"] == "size"
        ticks: set = set()
        for res in results:
            name = f"{res['model']} " if len(results) > 1 else ""
            for mode in ("infer", "train"):
                sel = [r for r in res["rows"] if f"{mode}_step_time" in r]
                xs = [r[f"{mode}_img_size" if by_size else f"{mode}_batch_size"] for r in sel]
                if not sel:
                    continue
                ticks.update(xs)
                ax_time.errorbar(xs, [r[f"{mode}_step_time"] for r in sel],
                                 yerr=[r[f"{mode}_step_time_iqr"] for r in sel], marker="o",
                                 capsize=3, label=name + mode)
                ax_rate.plot(xs, [r[f"{mode}_samples_per_sec"] for r in sel], marker="o",
                             label=name + mode)
        for ax in (ax_time, ax_rate):
            ax.set_xlabel("image size (px)" if by_size else "batch size")
            if not by_size:  # 1, 2, 4, ... evenly spaced rather than crowded into a corner
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
                ax.minorticks_off()
            ax.legend()
        ax_time.set_ylabel("ms per step (median, IQR bars)")
        ax_rate.set_ylabel("samples / s")
        models = ", ".join(r["model"] for r in results)
        swept = "image size" if by_size else "batch size"
        fig.suptitle(f"{models}: step time and throughput against the {swept}, on "
                     f"{result['device_name']} ({result['precision']})")
    fig.tight_layout()
    kind = os.path.splitext(path)[1][1:].lower() or "png"
    try:
        files.write_with(path, lambda f: fig.savefig(f, format=kind, dpi=120))
    except ValueError as exc:  # a format matplotlib does not write
        raise CnnbenchError(f"cannot write --plot {path}: {exc}") from None
    finally:
        plt.close(fig)

