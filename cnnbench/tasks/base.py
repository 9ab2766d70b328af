"""The interface between the shared trainer and a kind of problem.

The trainer (``cnnbench/training/``) knows nothing of any model or task. A task class says which
data sources it trains on (``cnnbench/data/sources.py``); once the data are loaded, its
:meth:`Task.setup` decides what the model and the input batch need (``num_classes``, channels,
normalisation) and returns them as a frozen :class:`Context`. The task is then built from the
configuration and that context, so nothing is set later: ``prepare`` turns a uint8 batch into the
model's input on the device, ``loss`` scores the output, ``metrics`` names what to measure.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from cnnbench.checkpoints import weights_statistics
from cnnbench.data.splits import DataBundle, Targets
from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.keys import Key, table
from cnnbench.registry import TASKS
from cnnbench.tasks.metrics import Metric


@dataclass(frozen=True)
class Context:
    """What the data decided before the model was built; fixed for the whole run."""

    class_names: tuple[str, ...]
    channels: int  # the model's input channels (grey data are repeated for a colour model)
    mean: tuple[float, ...]  # per-channel normalisation on the [0, 1] scale
    std: tuple[float, ...]
    model_args: dict = field(default_factory=dict)  # builder options the data decide
    stats: str = ""  # where mean and std come from (said when a run starts from weights)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def channel_stats(images: torch.Tensor, sample: int = 2000,
                  chunk: int = 64) -> tuple[tuple, tuple]:
    """Per-channel mean and (sample) std on the [0, 1] scale of the first ``sample`` uint8
    images, summed in float64 ``chunk`` images at a time: 2,000 colour images at 224 px would
    take 1.2 GB as one float tensor, and a streamed split (``stream.LazyImages``) decodes only
    the chunk it is asked for."""
    n = min(sample, len(images))
    total = squares = 0.0
    for s in range(0, n, chunk):
        x = images[s:min(n, s + chunk)].double() / 255
        total = total + x.sum((0, 2, 3))
        squares = squares + (x * x).sum((0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean = total / count
    std = ((squares - count * mean * mean) / max(1, count - 1)).clamp(min=0).sqrt()
    return tuple(mean.float().tolist()), tuple(std.float().clamp(min=1e-3).tolist())


def normalisation(config: dict, channels: int, own: Callable[[], tuple[tuple, tuple, str]]
                  ) -> tuple[tuple, tuple, str]:
    """``(mean, std, where)`` for a model of ``channels`` inputs: the starting weights' own
    statistics when they have them (``checkpoints.weights_statistics``: torchvision's
    weights), else ``own()`` (the data's, or published ones); grey statistics repeated for a
    colour model."""
    pretrained = weights_statistics(config["model"], config.get("model_args") or {},
                                    config.get("init_from"))
    mean, std, where = own()
    if pretrained is not None and len(pretrained[0]) == channels:
        mean, std, where = pretrained
    elif pretrained is not None:
        where += f" ({pretrained[2]} are for {len(pretrained[0])} channels, not {channels})"
    if len(mean) != channels:  # grey data repeated for a colour model
        mean, std = mean[:1] * channels, std[:1] * channels
    return tuple(mean), tuple(std), where


def context_state(context: Context) -> dict:
    """The context without its class names, for a checkpoint (which holds them beside it)."""
    return {"channels": context.channels, "mean": list(context.mean), "std": list(context.std),
            "model_args": dict(context.model_args), "stats": context.stats}


def stored_context(state: dict | None) -> Context | None:
    """The context a checkpoint holds (None for one written before checkpoints held it)."""
    if not state or "context" not in state or "class_names" not in state:
        return None
    c = state["context"]
    return Context(tuple(state["class_names"]), int(c["channels"]), tuple(c["mean"]),
                   tuple(c["std"]), dict(c["model_args"]), str(c.get("stats", "")))


class Task(ABC):
    """One kind of problem; the trainer calls these and nothing model-specific."""

    name: ClassVar[str]
    monitor: ClassVar[str] = "acc"  # the validation metric that picks best.pt by default
    sources: ClassVar[tuple[str, ...]] = ("fashion-mnist",)  # data it trains on; first: default
    # Task-specific configuration keys; the trainer accepts these in YAML and on the command
    # line besides its own keys (e.g. Key("dice_weight", 0.0, float, bounds="[0, inf)")).
    options: ClassVar[tuple[Key, ...]] = ()
    # The data stream from their files (data_mode stream): per-image transforms ran in the
    # DataLoader workers, so ``prepare`` skips them (build.py sets it).
    streamed: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        table(cls.options)  # a key declared twice is an error when the task's module loads

    def __init__(self, config: dict, context: Context):
        self.config, self.context = config, context

    @classmethod
    @abstractmethod
    def setup(cls, config: dict, data: DataBundle, info) -> Context:
        """The context for a model (``info``: its registry entry) trained on ``data``."""

    @abstractmethod
    def prepare(self, images: torch.Tensor, targets: Targets,
                train: bool) -> tuple[torch.Tensor, Targets]:
        """A uint8 batch already on the device -> (float model input, targets for the loss)."""

    @abstractmethod
    def loss(self, output, targets: Targets) -> torch.Tensor: ...

    @abstractmethod
    def metrics(self) -> dict[str, Metric]:
        """Fresh metrics for one pass, by name, e.g. ``{"acc": Accuracy(), "top5": TopK(5)}``."""

    def log_images(self, writer, step: int, images: torch.Tensor, output,
                   targets: Targets) -> None:
        """Draw a few predictions into TensorBoard (optional)."""

    def final_report(self, output_targets: list[tuple[Any, Targets]]) -> dict:
        """Extra results on the test set for results.json (e.g. a confusion matrix)."""
        return {}


def get_task(name: str) -> type[Task]:
    """The task class for ``name``, importing only its module."""
    path = TASKS.get(name)
    if path is None:
        raise CnnbenchError(f"no trainer task {name!r}"
                            f"{did_you_mean(name, [k for k, v in TASKS.items() if v])}")
    module, _, cls = path.partition(":")
    return getattr(importlib.import_module(module), cls)
