"""One loader for inference: what ``eval``, ``predict`` and the effective receptive field need
from a run folder or a checkpoint file, and nothing of training.

:func:`load` returns the configuration (the run's, with the keys added since: ``recipe.stored``),
the task with the checkpoint's own context (class names, input channels, normalisation), and
the model with the checkpoint's weights (the model's, or its EMA's), in eval mode on the device.
No optimizer and no schedule are built or restored (Lightning's ``trainer.test(ckpt_path=...)``
and torchvision's ``--test-only`` do the same), so the data given to inference may be of any
size. ``eval`` then measures through :func:`evaluator`, the trainer's own evaluation code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from cnnbench import recipe
from cnnbench.checkpoints import load_checkpoint, weights_file
from cnnbench.devices import resolve_device
from cnnbench.errors import CnnbenchError
from cnnbench.files import RunLayout
from cnnbench.tasks.base import Task
from cnnbench.training.build import WEIGHTS, build_evaluator, restore_model
from cnnbench.training.loop import Trainer

# What inference may change in a run's configuration (the rest must fit the checkpoint).
OVERRIDES = ("data", "limit", "device")


@dataclass
class Loaded:
    """A checkpoint ready for inference."""

    source: Path  # the checkpoint file
    run: Path | None  # its run folder (None: a file outside one)
    config: dict
    epoch: int  # epochs trained when it was written
    weights: str  # model or ema
    task: Task
    model: nn.Module  # in eval mode, on ``device``
    device: torch.device

    @property
    def class_names(self) -> list[str]:
        return list(self.task.context.class_names)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.config["input_size"])


class Opened(NamedTuple):
    """A checkpoint read, nothing built yet."""

    run: Path | None  # its run folder (None: a file outside one)
    file: Path
    config: dict
    state: dict


def open_checkpoint(source: str | os.PathLike, checkpoint: str = "best") -> Opened:
    """A run folder's ``checkpoints/{checkpoint}.pt`` with the configuration of its
    ``config.yaml``, or a checkpoint file with its own configuration (``recipe.stored``: keys added since the
    run as that run had them); every problem is a one-line error."""
    source = Path(source).expanduser()
    if not source.exists():
        raise CnnbenchError(f"no run folder or checkpoint file {source}")
    run = source if source.is_dir() else None
    if run is not None and not RunLayout(run).config.is_file():
        raise CnnbenchError(f"{run} is not a cnnbench run (no {RunLayout.CONFIG})")
    file = weights_file(source, checkpoint)
    state = load_checkpoint(file)
    if run is None and file.parent.name == RunLayout.CHECKPOINTS \
            and RunLayout(file.parent.parent).config.is_file():
        run = file.parent.parent  # RUN/checkpoints/NAME.pt
    if run is not None:
        stored = recipe.read_yaml(RunLayout(run).config)
    elif isinstance(state.get("config"), dict):
        stored = state["config"]
    else:
        raise CnnbenchError(f"{file} holds no configuration: give its run folder")
    config = recipe.stored(stored)  # keys added since the run: the values it had in effect
    if not config["threads"] and state.get("threads"):
        torch.set_num_threads(state["threads"])  # as many as in training: the same sums, bitwise
    return Opened(run, file, config, state)


def check_overrides(overrides: dict | None) -> dict:
    """The values of ``overrides`` that are given, checked (``OVERRIDES`` only)."""
    checked = {}
    for key, value in (overrides or {}).items():
        if key not in OVERRIDES:
            raise CnnbenchError(f"inference cannot change {key} (only {', '.join(OVERRIDES)})")
        if value is not None:
            checked[key] = recipe.check(key, value, source="command line")
    return checked


def restore(opened: Opened, weights: str = "model", overrides: dict | None = None) -> Loaded:
    """The task and the model of an opened checkpoint with its ``weights`` (``model`` or
    ``ema``), on its device; ``overrides`` (``OVERRIDES``) replace the run's values."""
    if weights not in WEIGHTS:
        raise CnnbenchError(f"weights must be {' or '.join(WEIGHTS)}, not {weights!r}")
    config = {**opened.config, **check_overrides(overrides)}
    device = resolve_device(config["device"])
    task, model = restore_model(config, opened.state, device, weights)
    return Loaded(opened.file, opened.run, config, int(opened.state["epoch"]), weights, task,
                  model, device)


def load(source: str | os.PathLike, checkpoint: str = "best", *, weights: str = "model",
         overrides: dict | None = None) -> Loaded:
    """A run folder's (or a checkpoint file's) task and model, ready for inference:
    :func:`open_checkpoint`, then :func:`restore`."""
    check_overrides(overrides)  # a bad value before the checkpoint is read
    return restore(open_checkpoint(source, checkpoint), weights, overrides)


def evaluator(loaded: Loaded) -> Trainer:
    """A trainer without optimizer or schedule over the configuration's data: its
    ``evaluate`` is the test pass of training (same data, batches and code)."""
    return build_evaluator(loaded.config, loaded.task, loaded.model, loaded.device)
