"""The training loop: step, epoch, evaluation and the trainer's state, with fastai-style events.

The loop knows nothing of any model or task: it asks the task for the model's input batch, the
loss and the metrics. Everything else a run does (``metrics.jsonl``, TensorBoard, checkpoints,
the NaN guard, the console) is a :class:`Callback` (``callbacks.py``); ``build.py`` assembles a
trainer from a configuration.

Events, in order: ``before_fit``, then per epoch ``before_epoch``, ``after_step`` after every
optimizer step (with the step's tensors: reading one waits for the device, so a callback does it
rarely) and ``after_epoch`` (with the epoch's row of plain numbers, read from the device once),
then ``before_test`` (a callback may put the weights to test in place: ``Checkpoint`` loads
``best.pt``), ``after_test`` (the results, which callbacks complete) and ``after_fit`` (always,
also after an error). A callback stops the run cleanly with :class:`CancelFitException`, or
ends an epoch's training early with :class:`CancelEpochException`; setting
``trainer.should_stop`` (early stopping) ends the run after this epoch as a normal end: the test
and the results follow.

With ``accumulate_steps: K`` an optimizer step takes K batches (``accumulation_plan``): each
batch's loss is scaled by its share of the step's images, so the summed gradients are those of
one batch of all of them. ``after_step`` comes once per optimizer step.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils._pytree import tree_map_only

from cnnbench.building import eval_mode
from cnnbench.data.splits import Split
from cnnbench.devices import device_name
from cnnbench.errors import CnnbenchError
from cnnbench.keys import Key, declare
from cnnbench.tasks.base import Task, context_state
from cnnbench.tasks.metrics import Meter
from cnnbench.training.compiling import CompiledForward, build_forward, drop_last
from cnnbench.training.rng import rng_states, set_rng_states
from cnnbench.training.schedules import jump_to

KEYS = declare(
    Key("epochs", 10, int, bounds="[1, inf)", help="epochs in all (also when resuming)"),
    Key("batch_size", 256, int, bounds="[1, inf)", help="training images per batch"),
    Key("eval_batch_size", None, int, bounds="[1, inf)", help="default: 2 x batch_size"),
    Key("accumulate_steps", 1, int, bounds="[1, inf)", help="batches per optimizer step"),
    Key("grad_clip", None, float, bounds="(0, inf)", help="max global gradient norm"),
    Key("amp", "none", str, ("none", "bf16", "fp16"),
        help="autocast: bf16 (CUDA, CPU), fp16 (CUDA)"),
    Key("channels_last", True, bool, help="channels-last memory format (CUDA only)"),
    Key("seed", 0, int, bounds="[0, inf)", help="seeds the weights, the order and augmentation"),
    Key("mixup", 0.0, float, bounds="[0, inf)", help="MixUp's Beta(a, a); 0: off (classification)"),
    Key("cutmix", 0.0, float, bounds="[0, inf)", help="CutMix's Beta(a, a); with mixup: each half"),
)


class CancelEpochException(Exception):
    """Raised by a callback: end this epoch's training now (validation and checkpoints follow)."""


class CancelFitException(Exception):
    """Raised by a callback: stop the run where it is; ``fit`` returns None."""


class Step(NamedTuple):
    """What ``after_step`` gets: tensors still on the device."""

    epoch: int
    batch: int  # the optimizer step's index within the epoch
    images: int  # the step's images (all its accumulated batches)
    output: Any  # of its last batch
    targets: Any
    loss: torch.Tensor  # the step's mean loss over its images


class Micro(NamedTuple):
    """A batch's place in its optimizer step (``accumulate_steps``)."""

    first: bool  # zero the gradients before its backward
    last: bool  # step the optimizer after it
    weight: float  # its share of the step's images: its loss is scaled by this


WHOLE = Micro(True, True, 1.0)  # a batch that is a whole optimizer step


def accumulation_plan(sizes: list[int], k: int) -> list[Micro]:
    """Each batch's :class:`Micro` for an epoch of batches of ``sizes``, ``k`` per optimizer
    step; the last step takes what is left. Host-side numbers only: no device read."""
    plan = []
    for g in range(0, len(sizes), k):
        group = sizes[g:g + k]
        total = sum(group)
        plan += [Micro(i == 0, i == len(group) - 1, 1.0 if len(group) == 1 else n / total)
                 for i, n in enumerate(group)]
    return plan


class Callback:
    """Base: every event does nothing. ``order`` sorts callbacks (lower first)."""

    order = 50

    def before_fit(self, trainer: "Trainer") -> None: ...

    def before_epoch(self, trainer: "Trainer", epoch: int) -> None: ...

    def after_step(self, trainer: "Trainer", step: Step) -> None: ...

    def after_epoch(self, trainer: "Trainer", row: dict) -> None: ...

    def before_test(self, trainer: "Trainer") -> None: ...

    def after_test(self, trainer: "Trainer", results: dict) -> None: ...

    def after_fit(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> dict:
        """Entries for the trainer's checkpoint (top-level keys)."""
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def batch_starts(n: int, batch_size: int, drop_last: bool = False) -> range:
    if drop_last and n >= batch_size:  # static shapes for CUDA graphs: skip a partial batch
        return range(0, n - n % batch_size, batch_size)
    starts = range(0, n, batch_size)
    if n > 1 and n % batch_size == 1:  # a last batch of one image breaks batch normalisation
        starts = starts[:-1]
    return starts


def to_cpu(tree):
    """Detached float32 (or integer) CPU copies of every tensor in a pytree."""
    return tree_map_only(torch.Tensor, lambda t: (
        t.detach().float() if t.is_floating_point() else t.detach()).cpu(), tree)


class EpochStats(NamedTuple):
    metrics: dict
    seconds: float
    images: int
    lr: float  # of the epoch's last step


class Trainer:
    """One run's task, data (on the device), model, optimizer, schedule and callbacks.

    ``fit()`` trains up to ``config["epochs"]`` (the total, also when resuming), tests and
    returns the results; ``train_step``, ``train_epoch`` and ``evaluate`` are public so that
    tests and ``benchmarks/`` can time exactly the loop.
    """

    rank, world = 0, 1  # this process among ``world`` (distributed.py)

    def __init__(self, config: dict, task: Task, splits: tuple[Split, Split, Split], model,
                 optimizer, schedule, *, device: torch.device, amp_dtype=None,
                 scaler=None, shuffle: torch.Generator | None = None, callbacks=(),
                 run_dir: str | Path | None = None, monitor: str | None = None):
        self.config, self.task, self.device = config, task, device
        self.train_split, self.val_split, self.test_split = splits
        self.model = self.net = model  # net: what a step calls (distributed.py wraps it)
        self.optimizer, self.schedule = optimizer, schedule
        # Each group's peak lr (the schedule multiplies it): OneCycleLR's max_lr, LambdaLR's base.
        self.base_lrs = [g.get("max_lr", g.get("initial_lr")) for g in optimizer.param_groups]
        self.amp_dtype = amp_dtype
        self.scaler = scaler or torch.amp.GradScaler("cuda", enabled=False)
        # prepare + model + loss, compiled as one function when the recipe asks (compiling.py)
        self.forward = build_forward(self._forward_loss, config)
        self.channels_last = device.type == "cuda" and config["channels_last"]
        self.drop_last = drop_last(config, device)
        self.shuffle = shuffle or torch.Generator().manual_seed(config["seed"])
        self.batch_size = config["batch_size"]
        self.accumulate = config["accumulate_steps"]
        self.should_stop = False  # a callback's request: no more epochs after this one
        self.eval_batch_size = config["eval_batch_size"] or 2 * config["batch_size"]
        self.monitor = monitor or config["monitor"] or task.monitor
        self.params = sum(p.numel() for p in model.parameters())
        self.run_dir = Path(run_dir) if run_dir else None
        self.callbacks: list[Callback] = []
        self.add_callbacks(*callbacks)
        self.epoch = 0  # epochs completed
        self.row: dict | None = None  # the last completed epoch's metrics (metrics.jsonl's row)
        self.batch = 0  # steps done in the running epoch
        self.epoch_shuffle: torch.Tensor | None = None  # the shuffle's state when it began
        self.resume_position: dict | None = None  # from a mid-epoch checkpoint (position())
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.meter: Meter | None = None  # the running training pass (a progress bar reads it)
        self.test_metrics: dict | None = None
        self.results: dict | None = None

    def add_callbacks(self, *callbacks: Callback) -> None:
        self.callbacks = sorted([*self.callbacks, *callbacks], key=lambda cb: cb.order)

    def _event(self, name: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, name)(self, *args)

    # -- one step, one epoch, one evaluation --

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def batch_starts(self) -> range:
        return batch_starts(len(self.train_split), self.batch_size, self.drop_last)

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: the batches, ``accumulate_steps`` at a time."""
        return math.ceil(len(self.batch_starts()) / self.accumulate)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare(self, images, targets, train: bool):
        """The task's model input for a uint8 batch (channels-last on CUDA if asked)."""
        x, y = self.task.prepare(images, targets, train=train)
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def forward_loss(self, images: torch.Tensor, targets, train: bool, eager: bool = False):
        """(output, the task's targets, loss) for a uint8 batch on the device."""
        return (self._forward_loss if eager else self.forward)(images, targets, train)

    def _forward_loss(self, images: torch.Tensor, targets, train: bool):
        """The eager function that ``self.forward`` may be a compiled version of."""
        x, y = self.prepare(images, targets, train=train)
        with self.autocast():
            output = self.net(x)
            return output, y, self.task.loss(output, y)

    def train_step(self, images: torch.Tensor, targets, micro: Micro = WHOLE):
        """One optimizer step on a uint8 batch on the device (or, with ``micro``, its part of
        one); returns (output, targets, loss)."""
        if isinstance(self.forward, CompiledForward) and not self.forward.proven:
            try:  # torch.compile works at the first forward and backward: fall back once
                step = self._train_step(images, targets, micro)
            except Exception as exc:  # noqa: BLE001 - any compiler error means: run eagerly
                self.forward = self.forward.fall_back(exc)
                return self._train_step(images, targets, micro)
            self.forward.proven = True
            return step
        return self._train_step(images, targets, micro)

    def _train_step(self, images: torch.Tensor, targets, micro: Micro = WHOLE):
        # DistributedDataParallel averages the gradients once per optimizer step, not per batch
        no_sync = getattr(self.net, "no_sync", None)
        with no_sync() if no_sync and not micro.last else contextlib.nullcontext():
            output, y, loss = self.forward_loss(images, targets, train=True)
            if micro.first:
                self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss if micro.weight == 1.0 else loss * micro.weight).backward()
        if micro.last:
            self.optimizer_step()
        return output, y, loss

    def optimizer_step(self) -> None:
        """Clip, step (through the fp16 scaler) and move the schedule on."""
        if self.config["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()

    def epoch_order(self) -> torch.Tensor:
        """This epoch's order of the training images (one process's share: distributed.py)."""
        return torch.randperm(len(self.train_split), generator=self.shuffle).to(self.device)

    def agree(self, flag: int) -> int:
        """The largest ``flag`` over the processes (distributed.py: a collective)."""
        return flag

    def finish_pass(self, meter: Meter) -> dict:
        """A pass's metrics (distributed.py adds up every process's sums first)."""
        return meter.compute()

    def train_epoch(self, epoch: int | None = None) -> EpochStats:
        """One pass over the shuffled training split."""
        epoch = self.epoch + 1 if epoch is None else epoch
        self.model.train()
        split, bs = self.train_split, self.batch_size
        self.meter = Meter(self.task.metrics(), train=True)
        position, self.resume_position, start = self.resume_position, None, 0
        if position is not None:  # a mid-epoch checkpoint: the same order, from its batch on
            self.shuffle.set_state(position["shuffle"])
            self.meter.load_state_dict(position["meter"], self.device)
            start = position["batch"]
        self.epoch_shuffle, self.batch = self.shuffle.get_state(), start
        perm = self.epoch_order()
        starts = self.batch_starts()
        plan = accumulation_plan([min(bs, len(perm) - s) for s in starts], self.accumulate)
        seen, lr = 0, self.lr
        step_loss, step_images = None, 0  # over the running optimizer step's batches
        t0 = time.perf_counter()
        # A mid-epoch resume starts at an optimizer step's first batch.
        batches = split.batches(perm, starts[start:], bs, seed=(self.config["seed"], epoch))
        try:
            for i, (images, targets) in zip(range(start, len(starts)), batches):
                lr = self.lr
                micro = plan[i]
                output, y, loss = self.train_step(images, targets, micro)
                self.meter.update(output, y, loss, images.shape[0])
                seen += images.shape[0]
                self.batch = i + 1
                part = loss.detach() if micro.weight == 1.0 else loss.detach() * micro.weight
                step_loss = part if micro.first else step_loss + part
                step_images = images.shape[0] + (0 if micro.first else step_images)
                if micro.last:
                    self._event("after_step", Step(epoch, i // self.accumulate, step_images,
                                                   output, y, step_loss))
        except CancelEpochException:
            pass
        metrics = self.finish_pass(self.meter)  # reads the device: the epoch's one sync
        return EpochStats(metrics, time.perf_counter() - t0, seen, lr)

    @torch.inference_mode()
    def evaluate(self, split: Split, collect: bool = False) -> tuple[dict, list]:
        """Metrics of the model in eval mode on ``split``; with ``collect``, the outputs too."""
        meter, collected = Meter(self.task.metrics(), train=False), []
        with eval_mode(self.model):
            starts = range(0, len(split), self.eval_batch_size)
            for images, targets in split.batches(None, starts, self.eval_batch_size):
                # A CUDA graph is captured for one shape: the last, smaller batch runs eagerly.
                eager = self.drop_last and images.shape[0] < self.eval_batch_size
                output, y, loss = self.forward_loss(images, targets, train=False, eager=eager)
                meter.update(output, y, loss, images.shape[0])
                if collect:
                    collected.append((to_cpu(output), to_cpu(y)))
        return self.finish_pass(meter), collected

    @torch.no_grad()
    def predict(self, images: torch.Tensor, targets):
        """(output, targets) of the model in eval mode for a uint8 batch (for pictures)."""
        with eval_mode(self.model), self.autocast():
            x, y = self.prepare(images, targets, train=False)
            return self.model(x), y

    # -- the whole run --

    def fit(self) -> dict | None:
        """Train the remaining epochs, then test; the results, or None if a callback cancelled."""
        try:
            self._event("before_fit")
            for epoch in range(self.epoch + 1, self.config["epochs"] + 1):
                self.fit_epoch(epoch)
                if self.should_stop:  # early stopping: a normal end, tested
                    break
            self._event("before_test")
            self.results = self.test()
        except CancelFitException:
            pass
        finally:
            self.train_split.close()  # a stream's persistent workers
            self._event("after_fit")
        return self.results

    def fit_epoch(self, epoch: int) -> dict:
        self._event("before_epoch", epoch)
        t0 = time.perf_counter()
        stats = self.train_epoch(epoch)
        val_metrics = self.evaluate(self.val_split)[0] if len(self.val_split) else {}
        row = {"epoch": epoch, "lr": stats.lr}
        row.update({f"train_{k}": v for k, v in stats.metrics.items()})
        row.update({f"val_{k}": v for k, v in val_metrics.items()})
        row["epoch_seconds"] = time.perf_counter() - t0
        row["images_per_second"] = stats.images / stats.seconds if stats.seconds > 0 else 0.0
        self.epoch, self.row = epoch, row  # callbacks add to the row before it is checkpointed
        self._event("after_epoch", row)
        return row

    def test(self) -> dict:
        """Metrics and the task's report on the test split; callbacks fill the ``None``s."""
        t0 = time.perf_counter()
        self.test_metrics, outputs = self.evaluate(self.test_split, collect=True)
        report = self.task.final_report(outputs) if outputs else {}
        results = {
            "model": self.config["model"], "task": self.task.name, "run_dir": str(self.run_dir),
            "monitor": self.monitor, "device": str(self.device), "params": self.params,
            "device_name": device_name(self.device),
            "epochs": self.epoch, "started": self.started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "best_epoch": None, f"best_val_{self.monitor}": None,  # the checkpoint's tracker
            # The weights tested: the last epoch's, unless a callback put others in place.
            "test_checkpoint": "last", "test_epoch": self.epoch,
            **{f"test_{k}": v for k, v in self.test_metrics.items()},
            "train_seconds": None, "minutes": None,  # from metrics.jsonl, all epochs
            "test_seconds": time.perf_counter() - t0,
            "images_per_second": None,
            "report": report,
        }
        self._event("after_test", results)
        return results

    def describe(self) -> dict:
        """What a reporter prints when the run starts."""
        return {"model": self.config["model"], "task": self.task.name, "device": str(self.device),
                "run_dir": str(self.run_dir), "params": self.params,
                "train": len(self.train_split), "val": len(self.val_split),
                "test": len(self.test_split), "epochs": self.config["epochs"],
                "start_epoch": self.epoch + 1, "resumed": self.epoch > 0,
                "input_size": self.config["input_size"], "amp": str(self.amp_dtype or "none"),
                "compile": (self.forward.mode if isinstance(self.forward, CompiledForward)
                            else None),
                "profile": self.config["profile"]}

    # -- checkpoints --

    def position(self) -> dict:
        """Where the running epoch is, for a mid-epoch checkpoint: its shuffle state at the
        start (so the same order), the steps done and the metric sums so far."""
        return {"epoch": self.epoch + 1, "batch": self.batch, "shuffle": self.epoch_shuffle,
                "meter": self.meter.state_dict()}

    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {"step_count": self.schedule.last_epoch, "base_lrs": self.base_lrs},
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "row": self.row,  # a resume writes it back if the log lost it (runs.reconcile_metrics)
            "started": self.started,
            "rng": rng_states(self.device, self.shuffle),
            "threads": torch.get_num_threads(),  # a resume uses as many: bitwise the same sums
            "config": self.config,
            "class_names": list(self.task.context.class_names),
            "context": context_state(self.task.context),  # what predict needs, without data
        }
        for callback in self.callbacks:
            state.update(callback.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        # The schedule's own entries in the groups (OneCycleLR's initial_lr, max_lr, ...) follow
        # from the configuration; an older checkpoint may not hold them.
        derived = [{k: v for k, v in g.items() if k != "params"}
                   for g in self.optimizer.param_groups]
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0][:120]
            raise CnnbenchError(f"the checkpoint does not fit this model/optimizer ({reason})") \
                from None
        for group, entries in zip(self.optimizer.param_groups, derived):
            for key, value in entries.items():
                group.setdefault(key, value)
        jump_to(self.schedule, int(state["schedule"]["step_count"]))
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.row = int(state["epoch"]), state.get("row")
        self.started = state.get("started", self.started)
        set_rng_states(state["rng"], self.device, self.shuffle)
        self.resume_position = state.get("position")
        for callback in self.callbacks:
            callback.load_state_dict(state)
