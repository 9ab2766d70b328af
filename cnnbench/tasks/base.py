"""The interface between the shared trainer and a kind of problem.

The trainer (``cnnbench/train.py``) knows nothing of any model or task: it asks the task for its
data, for the model's input batch, for the loss and for metrics, and lets it draw pictures.
Each task module in ``cnnbench/tasks/`` subclasses :class:`Task` and registers itself with
:func:`register_task` under the ``task`` name that ``cnnbench.registry`` gives each model
(classification, segmentation, detection, single-object, multi-label).

Data stay in memory as tensors (images as uint8 ``[N, C, H, W]``) and are batched by indexing;
``Task.prepare`` turns a uint8 batch into the model's float input on the training device
(resize, normalise, augment, moving boxes and masks with the pixels where there are any).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

Targets = Any  # a tensor, or a dict of tensors indexed along dim 0 like the images


@dataclass
class Split:
    """One split held in memory: ``images[i]`` goes with ``index(targets, i)``."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    targets: Targets

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, Targets]:
        return self.images[idx], index_targets(self.targets, idx)


def index_targets(targets: Targets, idx: torch.Tensor) -> Targets:
    if isinstance(targets, dict):
        return {k: v[idx] for k, v in targets.items()}
    return targets[idx]


def targets_to(targets: Targets, device) -> Targets:
    if isinstance(targets, dict):
        return {k: v.to(device, non_blocking=True) for k, v in targets.items()}
    return targets.to(device, non_blocking=True)


@dataclass
class DataBundle:
    """What a task's data loader returns: three splits and what describes them."""

    train: Split
    val: Split
    test: Split
    class_names: list[str]
    info: dict = field(default_factory=dict)  # free-form: source path, generator params, ...


class Metric(ABC):
    """Accumulates over the batches of one pass; ``compute`` gives named floats."""

    @abstractmethod
    def update(self, output, targets: Targets, loss: torch.Tensor) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Named values, e.g. ``{"loss": 0.41, "acc": 0.87}``; the trainer prefixes the split."""


class Task(ABC):
    """One kind of problem; the trainer calls these and nothing model-specific."""

    name: ClassVar[str]
    monitor: ClassVar[str] = "acc"  # the validation metric that picks best.pt (higher is better)
    # Task-specific configuration keys and their defaults; the trainer accepts these in YAML
    # and on the command line besides its own keys (e.g. {"dice_weight": 0.0}).
    options: ClassVar[dict] = {}

    def __init__(self, config: dict):
        self.config = config

    @abstractmethod
    def load_data(self) -> DataBundle:
        """The three splits, read from local files only (``self.config`` says where)."""

    @abstractmethod
    def prepare(self, images: torch.Tensor, targets: Targets,
                train: bool) -> tuple[torch.Tensor, Targets]:
        """A uint8 batch already on the device -> (float model input, targets for the loss)."""

    @abstractmethod
    def loss(self, output, targets: Targets) -> torch.Tensor: ...

    @abstractmethod
    def new_metric(self) -> Metric: ...

    def model_args(self, info, data: DataBundle) -> dict:
        """Builder options the data decide (e.g. ``num_classes``); the config's win (optional)."""
        return {}

    def log_images(self, writer, step: int, images: torch.Tensor, output,
                   targets: Targets, class_names: list[str]) -> None:
        """Draw a few predictions into TensorBoard (optional)."""

    def final_report(self, output_targets: list[tuple[Any, Targets]],
                     class_names: list[str]) -> dict:
        """Extra results on the test set for results.json (e.g. a confusion matrix)."""
        return {}


_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} registered twice")
    _TASKS[cls.name] = cls
    return cls


def get_task(name: str, config: dict) -> Task:
    import importlib
    import importlib.util
    import pkgutil

    import cnnbench.tasks as package

    # The module named after the task first (``single-object`` -> ``single_object.py``), so that
    # a classification run does not pay for importing the dense tasks; all of them otherwise.
    own = name.replace("-", "_")
    if name not in _TASKS and importlib.util.find_spec(f"{package.__name__}.{own}") is not None:
        importlib.import_module(f"{package.__name__}.{own}")
    if name not in _TASKS:
        for module in pkgutil.iter_modules(package.__path__):
            if module.name != "base":
                importlib.import_module(f"{package.__name__}.{module.name}")
    from cnnbench.errors import CnnbenchError, did_you_mean

    if name not in _TASKS:
        raise CnnbenchError(f"no trainer task {name!r}{did_you_mean(name, _TASKS)}")
    return _TASKS[name](config)
