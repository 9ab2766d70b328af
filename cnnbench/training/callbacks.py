"""What a run does besides training, one callback each: the run folder, ``metrics.jsonl``,
TensorBoard, the NaN guard, checkpoints (with ``monitor`` and ``mode``), early stopping
(``patience``), the model EMA (``ema``) and the console.

A callback overrides the events it needs (``loop.Callback``); ``order`` runs them in turn at each
event: the NaN guard stops a run before its checkpoint is written, and the epoch's row goes into
``metrics.jsonl`` only after the checkpoint, so the log never runs ahead of ``last.pt``. To add a
callback: a class here (or in your own code) and ``build_trainer(..., callbacks=[...])``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
import warnings

import torch

from cnnbench.building import eval_mode
from cnnbench.checkpoints import load_checkpoint, read_checkpoint
from cnnbench.errors import CnnbenchError
from cnnbench.files import RunLayout, append_line, save_torch, write_json, write_yaml
from cnnbench.keys import Key, declare
from cnnbench.strict_json import dumps
from cnnbench.training import provenance
from cnnbench.training.interrupt import Interrupt
from cnnbench.training.loop import Callback, Step, Trainer
from cnnbench.training.runs import read_metrics, resolve_mode

KEYS = declare(
    Key("monitor", None, str, help="the metric that picks best.pt (default: the task's)"),
    Key("mode", "auto", str, ("auto", "max", "min"), help="auto: minimise a loss or error, else max"),
    Key("log_graph", False, bool, help="TensorBoard: the model's graph (traced: one forward)"),
    Key("log_images", True, bool, help="TensorBoard: a few test predictions, once, at the end"),
    Key("log_every_steps", 50, int, bounds="[0, inf)",
        help="TensorBoard step-level loss and lr; 0: off"),
    Key("log_histograms", False, bool, help="TensorBoard weights and gradients every epoch"),
    Key("patience", None, int, bounds="[1, inf)",
        help="stop after N epochs without a better monitor"),
    Key("min_delta", 0.0, float, bounds="[0, inf)", help="patience: the least gain that counts"),
    Key("ema", None, float, bounds="(0, 1)", help="model EMA decay, e.g. 0.999 (val_ema_* metrics)"),
)

PROGRESS_EVERY = 0.5  # seconds between progress-bar updates; each reads the metrics (one sync)


def run_dir(trainer: Trainer):
    if trainer.run_dir is None:
        raise CnnbenchError("this trainer has no run folder")
    return trainer.run_dir


class RunFolder(Callback):
    """``config.yaml`` and ``environment.json`` (``provenance``) when the run starts,
    ``results.json`` and the end time when it ends."""

    order = 0

    def __init__(self):
        self.environment: dict | None = None

    def before_fit(self, trainer: Trainer) -> None:
        run_dir(trainer).mkdir(parents=True, exist_ok=True)
        write_yaml(RunLayout(trainer.run_dir).config, trainer.config)
        self.environment = provenance.start(trainer.run_dir, trainer.device)

    def after_fit(self, trainer: Trainer) -> None:
        if self.environment is not None and trainer.run_dir.is_dir():
            provenance.finish(trainer.run_dir, self.environment)
        if trainer.results is not None:
            write_json(RunLayout(trainer.run_dir).results, trainer.results)  # null for NaN


class JSONLog(Callback):
    """One JSON object per epoch in ``metrics.jsonl``, appended after the epoch's checkpoint;
    the timings of all epochs in the results."""

    order = 45  # after Checkpoint: a kill between the two leaves the log behind, never ahead

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        append_line(RunLayout(run_dir(trainer)).metrics, dumps(row))

    def after_test(self, trainer: Trainer, results: dict) -> None:
        rows = read_metrics(run_dir(trainer))  # also the epochs before a resume
        results["train_seconds"] = sum(r["epoch_seconds"] for r in rows)
        results["minutes"] = results["train_seconds"] / 60
        results["images_per_second"] = (sum(r["images_per_second"] for r in rows) / len(rows)
                                        if rows else 0.0)


class TensorBoard(Callback):
    """What a run shows in TensorBoard: per epoch the scalars of ``metrics.jsonl`` and, with
    ``log_histograms``, each parameter's weights and gradients; every ``log_every_steps``
    optimizer steps the mean training loss of those steps and the lr (run ``steps``, x: the
    global step); the hyper-parameters when the run starts (a crashed run has them), their
    metrics when it ends; after the test pass the task's pictures (``Task.log_images``) of the
    first ``IMAGES`` test images, drawn by the weights the test figures belong to; with
    ``log_graph``, the model graph.

    Graph and pictures cost what a run need not pay (CPU seconds, one core): the graph traces
    the model (LeNet 0.14 s, ResNet-18 0.6 s); a picture every epoch cost a forward pass of 256
    test images (ResNet-18 1.1 s) and the drawing of 32 captioned tiles (about 0.2 s) each
    epoch. So the graph is off unless asked, and the pictures are drawn once.

    The step losses are summed on the device and read once per ``log_every_steps`` steps
    (``reads`` counts it), so no step waits for the device."""

    IMAGES = 256  # test images the task draws from (classification: up to 32 it gets wrong)

    order = 20

    def __init__(self, log_graph: bool = False, log_images: bool = True,
                 log_every_steps: int = 50, log_histograms: bool = False):
        self.log_graph, self.log_images = log_graph, log_images
        self.log_every_steps, self.log_histograms = log_every_steps, log_histograms
        self.writer = self.steps_writer = None
        self.loss_sum: torch.Tensor | None = None  # on the device
        self.summed = 0  # steps in loss_sum
        self.batches = 0  # optimizer steps per epoch
        self.lr = 0.0  # of the coming step
        self.reads = 0
        self.hparam_metrics: list[str] = []  # their tags

    def before_fit(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        resumed = trainer.epoch > 0
        folder = RunLayout(run_dir(trainer)).tensorboard
        self.writer = SummaryWriter(str(folder), purge_step=trainer.epoch + 1 if resumed else None)
        self.batches = trainer.steps_per_epoch()
        first_step = trainer.epoch * self.batches + 1
        # Its own run: a resumed run's purge step counts optimizer steps there, epochs here.
        self.steps_writer = SummaryWriter(str(folder / "steps"),
                                          purge_step=first_step if resumed else None)
        self.loss_sum, self.summed, self.lr = None, 0, trainer.lr
        self._hparams_start(trainer)
        if self.log_graph and not resumed:
            self._graph(trainer)

    def after_step(self, trainer: Trainer, step: Step) -> None:
        lr, self.lr = self.lr, trainer.lr  # the schedule has already moved on to the next step
        if self.log_every_steps <= 0:
            return
        loss = step.loss.detach().float()
        self.loss_sum = loss.clone() if self.loss_sum is None else self.loss_sum.add_(loss)
        self.summed += 1
        global_step = (step.epoch - 1) * self.batches + step.batch + 1
        if global_step % self.log_every_steps == 0:
            self.reads += 1
            self.steps_writer.add_scalar("step/train_loss", self.loss_sum.item() / self.summed,
                                         global_step)
            self.steps_writer.add_scalar("step/lr", float(lr), global_step)
            self.loss_sum, self.summed = None, 0

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        epoch = row["epoch"]
        for key, value in row.items():
            split, _, name = key.partition("_")
            if split in ("train", "val"):
                self.writer.add_scalar(f"{split}/{name}", value, epoch)
        self.writer.add_scalar("lr", row["lr"], epoch)
        self.writer.add_scalar("time/epoch_seconds", row["epoch_seconds"], epoch)
        self.writer.add_scalar("time/images_per_second", row["images_per_second"], epoch)
        if self.log_histograms:
            self._histograms(trainer, epoch)
        self.writer.flush()
        self.steps_writer.flush()

    def after_test(self, trainer: Trainer, results: dict) -> None:
        if self.log_images and self.writer is not None:
            images, targets = trainer.test_split.take(slice(0, self.IMAGES))
            if images.shape[0]:
                output, y = trainer.predict(images, targets)
                trainer.task.log_images(self.writer, trainer.epoch, images, output, y)

    def after_fit(self, trainer: Trainer) -> None:
        if self.writer is None:
            return
        if trainer.results is not None:
            for key, value in trainer.test_metrics.items():
                self.writer.add_scalar(f"test/{key}", value, trainer.epoch)
            self._hparams_end(trainer)
        self.writer.close()
        self.steps_writer.close()

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

    def _histograms(self, trainer: Trainer, epoch: int) -> None:
        """Each parameter and its gradient from the epoch's last step (``zero_grad`` clears it
        only at the next step; evaluation does not touch it)."""
        scaler = trainer.scaler
        # fp16 without grad_clip leaves the gradients multiplied by the loss scale (the step's
        # update may have just changed it, once in 2,000 steps).
        scale = scaler.get_scale() if scaler.is_enabled() and not trainer.config[
            "grad_clip"] else 1.0
        for name, p in trainer.model.named_parameters():
            for kind, values in (("weights", p.detach()), ("grads", p.grad)):
                if values is None:
                    continue
                values = values.float().cpu() / (scale if kind == "grads" else 1.0)
                if values.isfinite().all():  # numpy cannot bin a NaN; the NaN guard stops the run
                    self.writer.add_histogram(f"{kind}/{name}", values, epoch)

    def _hparams_start(self, trainer: Trainer) -> None:
        """The configuration, and the metrics the hparams table shows: the last epoch's
        validation figures (there from epoch 1), the test figures and the best validation."""
        from torch.utils.tensorboard.summary import hparams

        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
              for k, v in trainer.config.items()}
        names = ["loss", *(n for key, m in trainer.task.metrics().items()
                           for n in (m.names or (key,)))]
        metrics = [f"val/{n}" for n in names] + [f"hparam/test_{n}" for n in names]
        metrics.append(f"hparam/best_val_{trainer.monitor}")
        self.hparam_metrics = metrics
        experiment, session_start, _ = hparams(hp, dict.fromkeys(metrics, 0.0))
        for part in (experiment, session_start):
            self.writer.file_writer.add_summary(part)
        self.writer.flush()  # on disk before the first step, in case the run dies

    def _hparams_end(self, trainer: Trainer) -> None:
        """The test metrics and the session's end, once the run has finished (TensorBoard keeps
        the first end it reads, and a stopped run may still be resumed)."""
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        for key, value in trainer.results.items():
            if f"hparam/{key}" in self.hparam_metrics and isinstance(value, (int, float)):
                self.writer.add_scalar(f"hparam/{key}", value, trainer.epoch)
        content = plugin_data_pb2.HParamsPluginData(
            version=metadata.PLUGIN_DATA_VERSION,
            session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS))
        smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()))
        self.writer.file_writer.add_summary(
            Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=smd)]))


class NaNGuard(Callback):
    """Stops a run whose training loss is no longer finite, before it is checkpointed: the
    last good ``last.pt`` stays. The first bad step is noted on the device (no sync) and read
    every ``every`` steps and at the end of each epoch."""

    order = 30

    def __init__(self, every: int = 50):
        self.every = every
        self.first_bad: torch.Tensor | None = None  # optimizer step number, -1: none yet
        self.reads = 0

    def before_fit(self, trainer: Trainer) -> None:
        self.first_bad = None

    def after_step(self, trainer: Trainer, step: Step) -> None:
        number = trainer.schedule.last_epoch  # optimizer steps so far, resumes included
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=step.loss.device)
        bad = torch.isfinite(step.loss.detach()).logical_not() & (self.first_bad < 0)
        self.first_bad = torch.where(bad, number, self.first_bad)
        if number % self.every == 0:
            self.check(trainer, step.epoch, number - step.batch - 1)

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        steps = trainer.steps_per_epoch()
        self.check(trainer, row["epoch"], trainer.schedule.last_epoch - steps)
        loss = row.get("train_loss", 0.0)
        if not math.isfinite(loss):  # e.g. a callback that measures without steps
            raise CnnbenchError(f"the training loss became {loss} in epoch {row['epoch']}: "
                                f"lower --lr or add --set grad_clip=1.0")

    def check(self, trainer: Trainer, epoch: int, before_epoch: int) -> None:
        """``before_epoch``: optimizer steps done before this epoch (to name the batch)."""
        if self.first_bad is None:
            return
        self.reads += 1
        step = int(self.first_bad)  # the one read of the device
        if step >= 0:
            kept = f"last.pt of epoch {epoch - 1} is kept" if epoch > 1 else \
                "no checkpoint was written"
            raise CnnbenchError(f"the training loss became non-finite at step {step} (epoch "
                                f"{epoch}, batch {step - before_epoch}): lower --lr or add --set "
                                f"grad_clip=1.0; {kept}")


class Checkpoint(Callback):
    """``checkpoints/last.pt`` every epoch; ``best.pt`` when ``monitor`` improves (validation,
    else training). ``mode`` ``auto`` minimises a loss or an error and maximises the rest
    (fastai's ``TrackerCallback``); ``max`` or ``min`` say it outright. The test pass at the
    end runs on ``best.pt``'s weights, so the test figures belong with the best validation."""

    order = 40

    def __init__(self, monitor: str, mode: str = "auto"):
        self.monitor, self.mode = monitor, resolve_mode(mode, monitor)
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_epoch = 0

    def improves(self, score: float) -> bool:
        if self.best_epoch == 0:
            return True
        return score > self.best if self.mode == "max" else score < self.best

    def before_fit(self, trainer: Trainer) -> None:
        """A resumed run whose ``last.pt`` says its own epoch is the best one: ``best.pt``
        holds that epoch too (a kill between the two writes left the previous best there)."""
        if not trainer.epoch or self.best_epoch != trainer.epoch or trainer.resume_position:
            return
        layout = RunLayout(run_dir(trainer))
        try:
            held = read_checkpoint(layout.best)
        except CnnbenchError:  # missing or damaged: rewritten below
            held = None
        if not isinstance(held, dict) or held.get("epoch") != trainer.epoch:
            save_torch(read_checkpoint(layout.last), layout.best)

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        worst = -math.inf if self.mode == "max" else math.inf
        score = row.get(f"val_{self.monitor}", row.get(f"train_{self.monitor}", worst))
        improved = self.improves(score)
        if improved:
            self.best, self.best_epoch = score, row["epoch"]
        state = trainer.state_dict()
        save_torch(state, RunLayout(run_dir(trainer)).last)
        if improved:
            save_torch(state, RunLayout(trainer.run_dir).best)

    def before_test(self, trainer: Trainer) -> None:
        if self.best_epoch and self.best_epoch != trainer.epoch:  # else: they are in place
            trainer.load_weights(load_checkpoint(RunLayout(run_dir(trainer)).best))

    def after_test(self, trainer: Trainer, results: dict) -> None:
        results["best_epoch"] = self.best_epoch
        results[f"best_val_{self.monitor}"] = self.best
        if self.best_epoch:
            results["test_checkpoint"], results["test_epoch"] = "best", self.best_epoch

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        if "best_epoch" in state:
            self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])


class EarlyStopping(Callback):
    """Ends the run once ``monitor`` (validation, else training; ``mode`` as the checkpoint's)
    has not improved by more than ``min_delta`` for ``patience`` epochs, as Keras' and
    Lightning's ``EarlyStopping`` do. It sets ``trainer.should_stop``: the run ends after this
    epoch as after its last one, with the test pass and ``results.json``, where
    ``stopped_early`` is the epoch it stopped after (false when it ran every epoch)."""

    order = 35  # before the checkpoint, which keeps its count for a resume

    def __init__(self, monitor: str, patience: int, mode: str = "auto", min_delta: float = 0.0):
        self.monitor, self.mode = monitor, resolve_mode(mode, monitor)
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.wait = 0  # epochs since the last improvement
        self.stopped = 0  # the epoch it stopped after

    def before_fit(self, trainer: Trainer) -> None:
        self.stopped = 0  # a resumed run that had stopped early may now run to its end

    def improves(self, score: float) -> bool:
        if not math.isfinite(score):
            return False
        if self.best is None:
            return True
        gain = score - self.best if self.mode == "max" else self.best - score
        return gain > self.min_delta

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        score = row.get(f"val_{self.monitor}", row.get(f"train_{self.monitor}", math.nan))
        if self.improves(score):
            self.best, self.wait = score, 0
            return
        self.wait += 1
        if self.wait >= self.patience and row["epoch"] < trainer.config["epochs"]:
            self.stopped = row["epoch"]
            trainer.should_stop = True

    def after_test(self, trainer: Trainer, results: dict) -> None:
        results["stopped_early"] = self.stopped or False

    def state_dict(self) -> dict:
        return {"early_stopping": {"best": self.best, "wait": self.wait,
                                   "stopped": self.stopped}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("early_stopping")
        if saved:
            self.best, self.wait = saved["best"], int(saved["wait"])
            self.stopped = int(saved["stopped"])


class ModelEMA:
    """An exponential moving average of a model: after each optimizer step every parameter and
    floating-point buffer (batch-norm running statistics) ``ema = decay * ema + (1 - decay) *
    value``, in one fused ``lerp`` on the device; integer buffers (batch counts) are copied.
    timm's ``ModelEmaV3`` treats buffers the same way. Copying the running statistics instead
    pairs the EMA weights with the live model's statistics: on LeNet-BN (10,000 images, decay
    0.99, 6 epochs) that scored 0.763 on validation against 0.850 averaged (model: 0.836).

    Our own rather than ``torch.optim.swa_utils.AveragedModel``: that one reads its step count
    on the host at every update (a device sync per step on CUDA) and leaves the buffers alone
    unless told to average them too."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        pairs = list(zip(self.module.parameters(), model.parameters()))
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            if mine.is_floating_point():
                pairs.append((mine, theirs))
            else:
                mine.copy_(theirs)
        torch._foreach_lerp_([mine for mine, _ in pairs],
                             [theirs.detach() for _, theirs in pairs], 1.0 - self.decay)


class EMA(Callback):
    """The model EMA (``ema: DECAY``, :class:`ModelEMA`), updated after each optimizer step,
    evaluated on the validation split every epoch beside the model (timm's way): the row gains
    ``val_ema_*`` (which ``monitor: ema_acc`` may follow) and the results ``test_ema_*``, the
    EMA of the checkpoint tested (``best.pt``'s when it is put in place); kept in the
    checkpoints (``ema``) and restored on resume. The model itself trains and is checkpointed
    as ever."""

    order = 10  # before TensorBoard, the checkpoint and the log read the row

    def __init__(self, decay: float):
        self.decay = decay
        self.ema: ModelEMA | None = None
        self.loaded: dict | None = None  # from a checkpoint, until the copy is made

    def before_fit(self, trainer: Trainer) -> None:
        self.ema = ModelEMA(trainer.model, self.decay)
        if self.loaded is not None:
            self.ema.module.load_state_dict(self.loaded)
            self.loaded = None

    def after_step(self, trainer: Trainer, step: Step) -> None:
        self.ema.update(trainer.model)

    def load_weights(self, trainer: Trainer, state: dict) -> None:
        if state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])

    def evaluate(self, trainer: Trainer, split) -> dict:
        """The EMA's metrics on ``split``, through the trainer's own evaluation."""
        saved = trainer.model, trainer.net
        trainer.model = trainer.net = self.ema.module
        try:
            return trainer.evaluate(split)[0]
        finally:
            trainer.model, trainer.net = saved

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        if trainer.world > 1:  # each process averaged its own running statistics: rank 0's
            for buffer in self.ema.module.buffers():
                torch.distributed.broadcast(buffer, src=0)
        if len(trainer.val_split):
            row.update({f"val_ema_{k}": v
                        for k, v in self.evaluate(trainer, trainer.val_split).items()})

    def after_test(self, trainer: Trainer, results: dict) -> None:
        results.update({f"test_ema_{k}": v
                        for k, v in self.evaluate(trainer, trainer.test_split).items()})

    def state_dict(self) -> dict:
        return {"ema": self.ema.module.state_dict() if self.ema else self.loaded}

    def load_state_dict(self, state: dict) -> None:
        if state.get("ema") is not None:
            self.loaded = state["ema"]


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
        self.reporter.epoch_start(epoch, trainer.config["epochs"], trainer.steps_per_epoch())
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
    """What ``cnnbench train`` writes into a run folder, and the keys' own callbacks."""
    extras = []
    if config["patience"]:
        extras.append(EarlyStopping(monitor, config["patience"], config["mode"],
                                    config["min_delta"]))
    if config["ema"]:
        extras.append(EMA(config["ema"]))
    return [RunFolder(), JSONLog(),
            TensorBoard(config["log_graph"], config["log_images"],
                        config["log_every_steps"], config["log_histograms"]),
            NaNGuard(), Checkpoint(monitor, config["mode"]), Interrupt(), *extras]
