"""What a run does besides training, one callback each: the run folder, ``metrics.jsonl``,
TensorBoard, the NaN guard, checkpoints (with ``monitor`` and ``mode``) and the console.

A callback overrides the events it needs (``loop.Callback``); ``order`` runs them in turn at each
event: the log is written before the NaN guard stops a run, the checkpoint after it. To add a
callback: a class here (or in your own code) and ``build_trainer(..., callbacks=[...])``.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings

import torch

from cnnbench import config as cfg
from cnnbench.building import eval_mode
from cnnbench.checkpoints import save_checkpoint
from cnnbench.errors import CnnbenchError
from cnnbench.training.loop import Callback, Step, Trainer
from cnnbench.training.runs import read_metrics, resolve_mode

PROGRESS_EVERY = 0.5  # seconds between progress-bar updates; each reads the metrics (one sync)


def run_dir(trainer: Trainer):
    if trainer.run_dir is None:
        raise CnnbenchError("this trainer has no run folder")
    return trainer.run_dir


class RunFolder(Callback):
    """``config.yaml`` when the run starts, ``results.json`` when it ends."""

    order = 0

    def before_fit(self, trainer: Trainer) -> None:
        run_dir(trainer).mkdir(parents=True, exist_ok=True)
        cfg.dump(trainer.config, trainer.run_dir / "config.yaml")

    def after_fit(self, trainer: Trainer) -> None:
        if trainer.results is not None:
            (trainer.run_dir / "results.json").write_text(
                json.dumps(trainer.results, indent=2) + "\n")


class JSONLog(Callback):
    """One JSON object per epoch in ``metrics.jsonl``; the timings of all epochs in the results."""

    order = 10

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        with open(run_dir(trainer) / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def after_test(self, trainer: Trainer, results: dict) -> None:
        rows = read_metrics(run_dir(trainer))  # also the epochs before a resume
        results["train_seconds"] = sum(r["epoch_seconds"] for r in rows)
        results["minutes"] = results["train_seconds"] / 60
        results["images_per_second"] = (sum(r["images_per_second"] for r in rows) / len(rows)
                                        if rows else 0.0)


class TensorBoard(Callback):
    """Scalars per epoch, the model graph, predictions drawn by the task, hyper-parameters."""

    order = 20

    def __init__(self, log_graph: bool = True, log_images: bool = True):
        self.log_graph, self.log_images = log_graph, log_images
        self.writer = None

    def before_fit(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        resumed = trainer.epoch > 0
        self.writer = SummaryWriter(str(run_dir(trainer) / "tensorboard"),
                                    purge_step=trainer.epoch + 1 if resumed else None)
        if self.log_graph and not resumed:
            self._graph(trainer)

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        epoch = row["epoch"]
        for key, value in row.items():
            split, _, name = key.partition("_")
            if split in ("train", "val"):
                self.writer.add_scalar(f"{split}/{name}", value, epoch)
        self.writer.add_scalar("lr", row["lr"], epoch)
        self.writer.add_scalar("time/epoch_seconds", row["epoch_seconds"], epoch)
        self.writer.add_scalar("time/images_per_second", row["images_per_second"], epoch)
        if self.log_images:
            images, targets = trainer.test_split.take(slice(0, 256))
            if images.shape[0]:
                output, y = trainer.predict(images, targets)
                trainer.task.log_images(self.writer, epoch, images, output, y)
        self.writer.flush()

    def after_fit(self, trainer: Trainer) -> None:
        if self.writer is None:
            return
        if trainer.results is not None:
            for key, value in trainer.test_metrics.items():
                self.writer.add_scalar(f"test/{key}", value, trainer.epoch)
            self._hparams(trainer)
        self.writer.close()

    def _graph(self, trainer: Trainer) -> None:
        """The model graph, where it traces (some models do not; that is not an error)."""
        split = trainer.test_split if len(trainer.test_split) else trainer.train_split
        images, targets = split.take(slice(0, 2))
        try:
            x, _ = trainer.prepare(images, targets, train=False)
            # The tracer prints its failures on stdout, which may carry --json.
            with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), \
                    torch.no_grad(), eval_mode(trainer.model):
                warnings.simplefilter("ignore")
                self.writer.add_graph(trainer.model, x)
        except Exception:  # tracing fails on data-dependent control flow; the run goes on
            pass

    def _hparams(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard.summary import hparams

        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
              for k, v in trainer.config.items()}
        metrics = {f"hparam/{k}": v for k, v in trainer.results.items()
                   if k.startswith(("test_", "best_val_")) and isinstance(v, (int, float))}
        for part in hparams(hp, metrics):
            self.writer.file_writer.add_summary(part)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, trainer.epoch)


class NaNGuard(Callback):
    """Stops a run whose training loss is no longer finite, before it is checkpointed."""

    order = 30

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        loss = row.get("train_loss", 0.0)
        if not math.isfinite(loss):
            raise CnnbenchError(f"the training loss became {loss} in epoch {row['epoch']}: "
                                f"lower --lr or add --set grad_clip=1.0")


class Checkpoint(Callback):
    """``checkpoints/last.pt`` every epoch; ``best.pt`` when ``monitor`` improves (validation,
    else training). ``mode`` ``auto`` minimises a loss or an error and maximises the rest
    (fastai's ``TrackerCallback``); ``max`` or ``min`` say it outright."""

    order = 40

    def __init__(self, monitor: str, mode: str = "auto"):
        self.monitor, self.mode = monitor, resolve_mode(mode, monitor)
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_epoch = 0

    def improves(self, score: float) -> bool:
        if self.best_epoch == 0:
            return True
        return score > self.best if self.mode == "max" else score < self.best

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        worst = -math.inf if self.mode == "max" else math.inf
        score = row.get(f"val_{self.monitor}", row.get(f"train_{self.monitor}", worst))
        improved = self.improves(score)
        if improved:
            self.best, self.best_epoch = score, row["epoch"]
        state = trainer.state_dict()
        save_checkpoint(state, run_dir(trainer) / "checkpoints" / "last.pt")
        if improved:
            save_checkpoint(state, trainer.run_dir / "checkpoints" / "best.pt")

    def after_test(self, trainer: Trainer, results: dict) -> None:
        results["best_epoch"] = self.best_epoch
        results[f"best_val_{self.monitor}"] = self.best

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        if "best_epoch" in state:
            self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])


class Report(Callback):
    """Tells a reporter (``render.TrainReporter``) how the run goes: ``start(info)``,
    ``epoch_start(epoch, epochs, batches)``, ``progress(batch, metrics, images_per_second)``
    (only if ``reporter.live``, at most every ``PROGRESS_EVERY`` seconds: it reads the device),
    ``epoch_end(row)`` and ``finish(results)``."""

    order = 90

    def __init__(self, reporter):
        self.reporter = reporter
        self.t0 = self.last = 0.0
        self.seen = 0

    def before_fit(self, trainer: Trainer) -> None:
        self.reporter.start(trainer.describe())

    def before_epoch(self, trainer: Trainer, epoch: int) -> None:
        self.reporter.epoch_start(epoch, trainer.config["epochs"], len(trainer.batch_starts()))
        self.t0 = self.last = time.perf_counter()
        self.seen = 0

    def after_step(self, trainer: Trainer, step: Step) -> None:
        if not self.reporter.live:
            return
        self.seen += step.images
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY:
            self.reporter.progress(step.batch + 1, trainer.meter.compute(),
                                   self.seen / (now - self.t0))
            self.last = now

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        self.reporter.epoch_end(row)

    def after_fit(self, trainer: Trainer) -> None:
        if trainer.results is not None:
            self.reporter.finish(trainer.results)


def standard_callbacks(config: dict, monitor: str) -> list[Callback]:
    """What ``cnnbench train`` writes into a run folder."""
    return [RunFolder(), JSONLog(), TensorBoard(config["log_graph"], config["log_images"]),
            NaNGuard(), Checkpoint(monitor, config.get("mode", "auto"))]
