"""The shared training loop: one loop for every model and task.

The loop knows nothing of any model or task. It asks the task (``cnnbench/tasks/``) for the data,
the model's input batch, the loss and the metrics; it owns the device, the optimizer and its
schedule, AMP, checkpoints, TensorBoard, ``metrics.jsonl`` and ``results.json``.

A run folder holds::

    config.yaml            the resolved configuration
    metrics.jsonl          one JSON object per epoch
    tensorboard/           event files (scalars, hyper-parameters, graph, images)
    checkpoints/last.pt    written atomically every epoch; best.pt when validation improves
    results.json           test metrics and timing, written at the end

Per batch the loop does no host sync: metrics are summed on the device and read only for the
progress bar (at most twice a second) and at the end of an epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from pathlib import Path

import torch

from cnnbench import config as cfg
from cnnbench.checkpoints import read_checkpoint
from cnnbench.errors import CnnbenchError
from cnnbench.devices import resolve_device
from cnnbench.tasks.base import Split, get_task, targets_to

PROGRESS_EVERY = 0.5  # seconds between progress-bar updates; each reads the metric (one sync)
# Keys that may change when a run is resumed; the rest would not fit the checkpoint.
RESUMABLE_KEYS = {"epochs", "device", "amp", "compile", "log_graph", "log_images", "data",
                  "eval_batch_size"}


class Reporter:
    """What the loop tells its user; this one is silent. ``render.TrainReporter`` draws it."""

    live = False  # True: progress() is called during an epoch (and costs a metric read)

    def start(self, info: dict) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None: ...

    def progress(self, batch: int, metrics: dict, images_per_second: float) -> None: ...

    def epoch_end(self, row: dict) -> None: ...

    def finish(self, results: dict) -> None: ...


# --- devices, seeds, run folders, checkpoints ---

def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_states(device: torch.device, shuffle: torch.Generator) -> dict:
    """Every random state the run uses, as tensors, lists and numbers (``weights_only``-safe)."""
    version, internal, gauss = random.getstate()
    states = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(),
              "python": [version, list(internal), gauss]}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    if device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def set_rng_states(states: dict, device: torch.device, shuffle: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    shuffle.set_state(states["shuffle"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
    if device.type == "mps" and "mps" in states:
        torch.mps.set_rng_state(states["mps"])


def new_run_dir(model: str, root: str | os.PathLike = "runs") -> Path:
    """``root/<model>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that name is taken."""
    base = f"{model.replace(':', '-').replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(root).mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = Path(root) / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CnnbenchError(f"cannot find a free run folder name for {base} in {root}")


def check_run_dir(path: str | os.PathLike) -> Path:
    """``--run-dir`` must be new or empty: an existing run is never overwritten."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CnnbenchError(f"{path} already exists and is not empty: a run is never overwritten "
                            f"(use --resume {path} to continue it, or another --run-dir)")
    return path


def claim_run_dir(path: str | os.PathLike) -> Path:
    path = check_run_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_checkpoint(state: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    state = read_checkpoint(path)
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch"} <= set(state):
        raise CnnbenchError(f"{path} is not a cnnbench checkpoint")
    return state


# --- learning-rate schedule ---

class Schedule:
    """Sets every parameter group's learning rate (and one-cycle momentum) before each step.

    ``constant``, ``step`` (x ``gamma`` every ``step_epochs``) and ``cosine`` (to zero) follow an
    optional linear warm-up; ``onecycle`` is fast.ai's ``fit_one_cycle``: cosine up from
    ``lr / div_factor`` to ``lr`` over ``pct_start`` of the steps, then cosine down to
    ``lr / div_factor / final_div_factor``, with momentum going 0.95 -> 0.85 -> 0.95.
    """

    MOMENTUM = (0.95, 0.85)

    def __init__(self, optimizer: torch.optim.Optimizer, config: dict, steps_per_epoch: int):
        self.optimizer, self.c = optimizer, config
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total = self.steps_per_epoch * config["epochs"]
        self.warmup = round(config["warmup_epochs"] * self.steps_per_epoch)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> tuple[float, float | None]:
        """(multiplier of the base lr, momentum or None) at ``step`` (0-based)."""
        c, total = self.c, max(self.total, 1)
        kind = c["schedule"]
        if kind == "onecycle":
            up = max(1, round(c["pct_start"] * total))
            start, end = 1 / c["div_factor"], 1 / (c["div_factor"] * c["final_div_factor"])
            hi, lo = self.MOMENTUM
            if step < up:
                t = step / up
                return _cos(start, 1.0, t), _cos(hi, lo, t)
            t = min(1.0, (step - up) / max(1, total - up))
            return _cos(1.0, end, t), _cos(lo, hi, t)
        warm = 1.0 if step >= self.warmup else (step + 1) / self.warmup
        if kind == "step":
            f = c["gamma"] ** (step // self.steps_per_epoch // max(1, c["step_epochs"]))
        elif kind == "cosine":
            t = min(1.0, max(0, step - self.warmup) / max(1, total - self.warmup))
            f = _cos(1.0, 0.0, t)
        else:
            f = 1.0
        return warm * f, None

    def _apply(self) -> None:
        f, momentum = self.factor(self.step_count)
        cycle = momentum is not None and self.c["cycle_momentum"]
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f
            if cycle and "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            elif cycle and group.get("momentum", 0) > 0:
                group["momentum"] = momentum

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()


def _cos(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


# --- the trainer ---

def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        obj = obj.detach()
        return (obj.float() if obj.is_floating_point() else obj).cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _split_to(split: Split, device: torch.device) -> Split:
    return Split(split.images.to(device), targets_to(split.targets, device))


class Trainer:
    """Everything one run needs: task, data on the device, model, optimizer, schedule, scaler.

    ``Trainer(config, run_dir).fit()`` trains and returns the results; ``train_step`` and
    ``train_epoch`` are public so that tests and ``benchmarks/`` can time exactly the loop.
    """

    def __init__(self, config: dict, run_dir: Path | None = None,
                 reporter: Reporter | None = None, checkpoint: dict | None = None):
        from cnnbench.building import build, ensure_input_fits
        from cnnbench.ops.deform import param_groups
        from cnnbench.registry import get_model_info

        self.config = c = config
        self.run_dir = Path(run_dir) if run_dir else None
        self.reporter = reporter or Reporter()
        self.device = resolve_device(c["device"])
        if c.get("threads"):
            torch.set_num_threads(c["threads"])  # process-wide, as torch allows nothing finer
        self.cuda = self.device.type == "cuda"
        seed_everything(c["seed"])
        self.shuffle = torch.Generator().manual_seed(c["seed"])

        self.task = get_task(c["task"], c)
        data = self.task.load_data()
        self.class_names, self.data_info = data.class_names, data.info
        self.train_split, self.val_split, self.test_split = (
            _split_to(s, self.device) for s in (data.train, data.val, data.test))
        if len(self.train_split) == 0:
            raise CnnbenchError("the training split is empty (check --limit and --data)")

        info = get_model_info(c["model"])
        torch.manual_seed(c["seed"])  # the first weights do not depend on how data were made
        model_args = {**self.task.model_args(info, data), **c["model_args"]}
        model, self.info = build(c["model"], model_args, in_channels=c["input_size"][0])
        self.channels_last = self.cuda and c["channels_last"]
        self.model = model.to(self.device, memory_format=(
            torch.channels_last if self.channels_last else torch.preserve_format))
        ensure_input_fits(self.model, c["model"], tuple(c["input_size"]), model_args, self.device)
        self.forward = torch.compile(self.model) if c["compile"] else self.model
        self.params = sum(p.numel() for p in self.model.parameters())

        self.batch_size = c["batch_size"]
        self.eval_batch_size = c["eval_batch_size"] or 2 * c["batch_size"]
        groups = param_groups(self.model, c["lr"])
        if c["optimizer"] == "sgd":
            if c["nesterov"] and c["momentum"] <= 0:
                raise CnnbenchError("nesterov needs momentum > 0 (e.g. --set momentum=0.9)")
            self.optimizer = torch.optim.SGD(groups, lr=c["lr"], momentum=c["momentum"],
                                             nesterov=c["nesterov"],
                                             weight_decay=c["weight_decay"])
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=c["lr"], betas=tuple(c["betas"]),
                                               weight_decay=c["weight_decay"])
        self.schedule = Schedule(self.optimizer, c, len(self._batch_starts()))
        amp = c["amp"] if self.cuda else "none"  # AMP is for CUDA; elsewhere full precision
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

        self.epoch = 0  # epochs completed
        self.best = -math.inf
        self.best_epoch = 0
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")
        if checkpoint is not None:
            self._restore(checkpoint)

    # -- one step, one epoch, one evaluation --

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batch_starts(self) -> range | list:
        n, bs = len(self.train_split), self.batch_size
        starts = range(0, n, bs)
        if n > 1 and n % bs == 1:  # a last batch of one image breaks batch normalisation
            starts = starts[:-1]
        return starts

    def _input(self, images, targets, train: bool):
        x, y = self.task.prepare(images, targets, train=train)
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def train_step(self, images: torch.Tensor, targets):
        """One optimizer step on a uint8 batch on the device; returns (output, targets, loss)."""
        x, y = self._input(images, targets, train=True)
        with self._autocast():
            output = self.forward(x)
            loss = self.task.loss(output, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        return output, y, loss

    def train_epoch(self) -> tuple[dict, float, int, float]:
        """One pass over the shuffled training split: (metrics, seconds, images, last lr)."""
        self.model.train()
        split, bs = self.train_split, self.batch_size
        metric = self.task.new_metric()
        perm = torch.randperm(len(split), generator=self.shuffle).to(self.device)
        starts = self._batch_starts()
        live = self.reporter.live
        seen, lr = 0, self.schedule.lr
        t0 = last = time.perf_counter()
        for i, s in enumerate(starts):
            lr = self.schedule.lr
            images, targets = split.take(perm[s:s + bs])
            output, y, loss = self.train_step(images, targets)
            metric.update(output, y, loss)
            seen += images.shape[0]
            if live and (now := time.perf_counter()) - last >= PROGRESS_EVERY:
                self.reporter.progress(i + 1, metric.compute(), seen / (now - t0))
                last = now
        metrics = metric.compute()  # reads the device: the epoch's one sync
        return metrics, time.perf_counter() - t0, seen, lr

    @torch.no_grad()
    def evaluate(self, split: Split, collect: bool = False) -> tuple[dict, list]:
        """Metrics of the model in eval mode on ``split``; with ``collect``, the outputs too."""
        self.model.eval()
        metric, collected = self.task.new_metric(), []
        try:
            for s in range(0, len(split), self.eval_batch_size):
                images, targets = split.take(slice(s, s + self.eval_batch_size))
                x, y = self._input(images, targets, train=False)
                with self._autocast():
                    output = self.forward(x)
                    loss = self.task.loss(output, y)
                metric.update(output, y, loss)
                if collect:
                    collected.append((_to_cpu(output), _to_cpu(y)))
        finally:
            self.model.train()
        return metric.compute(), collected

    # -- checkpoints --

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "started": self.started,
            "rng": rng_states(self.device, self.shuffle),
            "config": self.config,
        }

    def _restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0][:120]
            raise CnnbenchError(f"the checkpoint does not fit this model/optimizer ({reason})") \
                from None
        self.schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.started = state.get("started", self.started)
        set_rng_states(state["rng"], self.device, self.shuffle)

    # -- the whole run --

    def fit(self) -> dict:
        """Train up to ``config['epochs']`` (the total, also when resuming); returns results."""
        from torch.utils.tensorboard import SummaryWriter

        c, run = self.config, self._require_run_dir()
        resumed = self.epoch > 0
        cfg.dump(c, run / "config.yaml")
        writer = SummaryWriter(str(run / "tensorboard"),
                               purge_step=self.epoch + 1 if resumed else None)
        try:
            if not resumed and c["log_graph"]:
                self._log_graph(writer)
            self.reporter.start(self._describe(resumed))
            for epoch in range(self.epoch + 1, c["epochs"] + 1):
                self._fit_epoch(epoch, writer)
            results = self._test(writer)
        finally:
            writer.close()
        self.reporter.finish(results)
        return results

    def _require_run_dir(self) -> Path:
        if self.run_dir is None:
            raise CnnbenchError("this trainer has no run folder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return self.run_dir

    def _describe(self, resumed: bool) -> dict:
        return {"model": self.config["model"], "task": self.task.name, "device": str(self.device),
                "run_dir": str(self.run_dir), "params": self.params,
                "train": len(self.train_split), "val": len(self.val_split),
                "test": len(self.test_split), "epochs": self.config["epochs"],
                "start_epoch": self.epoch + 1, "resumed": resumed,
                "input_size": self.config["input_size"], "amp": str(self.amp_dtype or "none")}

    def _fit_epoch(self, epoch: int, writer) -> None:
        monitor = self.task.monitor
        self.reporter.epoch_start(epoch, self.config["epochs"], len(self._batch_starts()))
        t0 = time.perf_counter()
        train_metrics, train_seconds, seen, lr = self.train_epoch()
        val_metrics, _ = self.evaluate(self.val_split) if len(self.val_split) else ({}, [])
        row = {"epoch": epoch, "lr": lr}
        row.update({f"train_{k}": v for k, v in train_metrics.items()})
        row.update({f"val_{k}": v for k, v in val_metrics.items()})
        row["epoch_seconds"] = time.perf_counter() - t0
        row["images_per_second"] = seen / train_seconds if train_seconds > 0 else 0.0
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in train_metrics.items():
            writer.add_scalar(f"train/{k}", v, epoch)
        for k, v in val_metrics.items():
            writer.add_scalar(f"val/{k}", v, epoch)
        writer.add_scalar("lr", lr, epoch)
        writer.add_scalar("time/epoch_seconds", row["epoch_seconds"], epoch)
        writer.add_scalar("time/images_per_second", row["images_per_second"], epoch)
        if self.config["log_images"]:
            self._log_images(writer, epoch)
        writer.flush()

        if not math.isfinite(train_metrics.get("loss", 0.0)):
            raise CnnbenchError(f"the training loss became {train_metrics['loss']} in epoch "
                                f"{epoch}: lower --lr or add --set grad_clip=1.0")
        self.epoch = epoch
        score = val_metrics.get(monitor, train_metrics.get(monitor, -math.inf))
        improved = score > self.best or self.best_epoch == 0
        if improved:
            self.best, self.best_epoch = score, epoch
        state = self.state_dict()
        save_checkpoint(state, self.run_dir / "checkpoints" / "last.pt")
        if improved:
            save_checkpoint(state, self.run_dir / "checkpoints" / "best.pt")
        self.reporter.epoch_end(row)

    def _test(self, writer) -> dict:
        t0 = time.perf_counter()
        test_metrics, outputs = self.evaluate(self.test_split, collect=True)
        report = self.task.final_report(outputs, self.class_names) if outputs else {}
        for k, v in test_metrics.items():
            writer.add_scalar(f"test/{k}", v, self.epoch)
        rows = read_metrics(self.run_dir)
        train_seconds = sum(r["epoch_seconds"] for r in rows)
        monitor = self.task.monitor
        results = {
            "model": self.config["model"], "task": self.task.name, "run_dir": str(self.run_dir),
            "monitor": monitor,
            "device": str(self.device), "params": self.params, "epochs": self.epoch,
            "started": self.started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "best_epoch": self.best_epoch, f"best_val_{monitor}": self.best,
            **{f"test_{k}": v for k, v in test_metrics.items()},
            "train_seconds": train_seconds, "minutes": train_seconds / 60,
            "test_seconds": time.perf_counter() - t0,
            "images_per_second": (sum(r["images_per_second"] for r in rows) / len(rows)
                                  if rows else 0.0),
            "report": report,
        }
        (self.run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        self._log_hparams(writer, results)
        return results

    # -- TensorBoard extras --

    def _log_graph(self, writer) -> None:
        """The model graph, where it traces (some models do not; that is not an error)."""
        from cnnbench.building import eval_mode

        split = self.test_split if len(self.test_split) else self.train_split
        images, targets = split.take(slice(0, 2))
        try:
            x, _ = self._input(images, targets, train=False)
            with warnings.catch_warnings(), eval_mode(self.model), torch.no_grad():
                warnings.simplefilter("ignore")
                writer.add_graph(self.model, x)
        except Exception:  # tracing fails on data-dependent control flow; the run goes on
            pass

    @torch.no_grad()
    def _log_images(self, writer, epoch: int) -> None:
        images, targets = self.test_split.take(slice(0, 256))
        if images.shape[0] == 0:
            return
        from cnnbench.building import eval_mode

        with eval_mode(self.model), self._autocast():
            x, y = self._input(images, targets, train=False)
            output = self.forward(x)
        self.task.log_images(writer, epoch, images, output, y, self.class_names)

    def _log_hparams(self, writer, results: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
              for k, v in self.config.items()}
        metrics = {f"hparam/{k}": v for k, v in results.items()
                   if k.startswith(("test_", "best_val_")) and isinstance(v, (int, float))}
        for part in hparams(hp, metrics):
            writer.file_writer.add_summary(part)
        for k, v in metrics.items():
            writer.add_scalar(k, v, self.epoch)


# --- entry points ---

def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train(model: str | None = None, config_file: str | os.PathLike | None = None,
          overrides: dict | None = None, run_dir: str | os.PathLike | None = None,
          runs_root: str | os.PathLike = "runs", reporter: Reporter | None = None) -> dict:
    """Resolve the configuration, make a new run folder and train; returns the results."""
    config = cfg.resolve(model, config_file, overrides)
    if run_dir:
        check_run_dir(run_dir)
    trainer = Trainer(config, None, reporter)  # data and model first: errors leave no folder
    trainer.run_dir = claim_run_dir(run_dir) if run_dir else new_run_dir(config["model"], runs_root)
    return trainer.fit()


def resume(run_dir: str | os.PathLike, overrides: dict | None = None,
           reporter: Reporter | None = None) -> dict:
    """Continue ``run_dir`` from ``checkpoints/last.pt`` up to ``epochs`` (the total)."""
    trainer = resume_trainer(run_dir, overrides, reporter)
    if trainer.epoch >= trainer.config["epochs"]:
        raise CnnbenchError(f"{run_dir} already trained {trainer.epoch} of "
                            f"{trainer.config['epochs']} epochs: give a larger --epochs")
    return trainer.fit()


def resume_trainer(run_dir: str | os.PathLike, overrides: dict | None = None,
                   reporter: Reporter | None = None) -> Trainer:
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise CnnbenchError(f"{run} is not a cnnbench run (no config.yaml)")
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    config = dict(state["config"])
    changed = {k: v for k, v in (overrides or {}).items()
               if v is not None and config.get(k) != v}
    fixed = sorted(set(changed) - RESUMABLE_KEYS)
    if fixed:
        raise CnnbenchError(f"{fixed[0]} cannot change when resuming (only "
                            f"{', '.join(sorted(RESUMABLE_KEYS))} can)")
    schema = {**cfg.TRAINER_KEYS}
    for key, value in changed.items():
        config[key] = cfg.check(key, value, schema, "command line")
    return Trainer(config, run, reporter, checkpoint=state)


def list_runs(root: str | os.PathLike = "runs") -> list[dict]:
    """One row per run folder under ``root``, newest first, finished or not."""
    rows = []
    for run in sorted(Path(root).glob("*/config.yaml")):
        folder = run.parent
        try:
            config = cfg.read_yaml(run)
            metrics = read_metrics(folder)
            results_path = folder / "results.json"
            results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        except (CnnbenchError, ValueError, OSError):
            continue
        monitor = results.get("monitor") or _monitor(config.get("task"))
        vals = [r[f"val_{monitor}"] for r in metrics if r.get(f"val_{monitor}") is not None]
        rows.append({
            "run": folder.name, "model": config.get("model"), "task": config.get("task"),
            "started": results.get("started") or time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.localtime(run.stat().st_mtime)),
            "epochs": len(metrics), "of_epochs": config.get("epochs"),
            "monitor": monitor,  # the task's validation metric: acc for classification
            "best_val": max(vals) if vals else None,
            "test": results.get(f"test_{monitor}"),
            "minutes": sum(r.get("epoch_seconds", 0.0) for r in metrics) / 60,
            "finished": bool(results),
            "path": str(folder),
        })
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def _monitor(task: str | None) -> str:
    try:
        return type(get_task(task or "classification", {})).monitor
    except CnnbenchError:
        return "acc"
