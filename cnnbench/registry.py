"""Model registry: every name knows its builder and the metadata tools need.

In the style of torchvision's ``register_model``/``get_model`` with timm-like defaults that travel
with the name, so ``summary``, ``bench``, ``train`` and ``receptive-field`` need no per-model code.
``torchvision:<name>`` builds a torchvision model with ``weights=None``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

from cnnbench.errors import CnnbenchError, did_you_mean

TASKS = ("classification", "segmentation", "detection", "single-object", "multi-label",
         "feature-extraction")



@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable
    task: str
    input_size: tuple[int, int, int]  # (C, H, W) the notes use
    num_classes: int | None
    source: str  # seed file and section the architecture comes from
    description: str = ""
    options: dict = field(default_factory=dict)  # the builder's keyword options and defaults

    @property
    def in_channels(self) -> int:
        return self.input_size[0]


_REGISTRY: dict[str, ModelInfo] = {}
_loaded = False


def register_model(name: str, *, task: str, input_size: tuple[int, int, int],
                   num_classes: int | None, source: str, description: str = ""):
    """Decorator: register ``builder`` under ``name``; a duplicate name is an error."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")

    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        options = {
            p.name: p.default for p in inspect.signature(builder).parameters.values()
            if p.default is not inspect.Parameter.empty
        }
        _REGISTRY[name] = ModelInfo(name, builder, task, tuple(input_size), num_classes, source,
                                    description or (builder.__doc__ or "").strip().split("\n")[0],
                                    options)
        return builder

    return wrap


def _load_families() -> None:
    """Import every module of ``cnnbench.models``: each registers its family on import."""
    global _loaded
    if not _loaded:
        import cnnbench.models as package

        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{module.name}")
        _loaded = True


def list_models(task: str | None = None) -> list[str]:
    _load_families()
    return [n for n, info in _REGISTRY.items() if task is None or info.task == task]


TORCHVISION_PREFIX = "torchvision:"


def get_model_info(name: str) -> ModelInfo:
    """Metadata for a registered name or ``torchvision:<name>``."""
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_info(name[len(TORCHVISION_PREFIX):])
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CnnbenchError(
            f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; "
            "`cnnbench models` lists them, or use torchvision:<name>") from None


def get_model(name: str, **options):
    """Build ``name`` with its defaults, overridden by ``options`` (the family's keywords)."""
    info = get_model_info(name)
    unknown = set(options) - set(info.options)
    if unknown and not info.name.startswith(TORCHVISION_PREFIX):
        key = sorted(unknown)[0]
        raise CnnbenchError(
            f"model {name!r} has no option {key!r}{did_you_mean(key, info.options)}; "
            f"its options: {', '.join(sorted(info.options)) or 'none'}")
    try:
        return info.builder(**options)
    except (TypeError, ValueError) as exc:
        raise CnnbenchError(f"cannot build {name!r} with {options}: {exc}") from None


def _torchvision_info(tv_name: str) -> ModelInfo:
    import torchvision.models as tvm

    names = tvm.list_models()
    if tv_name not in names:
        raise CnnbenchError(f"unknown torchvision model {tv_name!r}"
                            f"{did_you_mean(tv_name, names)}")
    module = tvm.get_model_builder(tv_name).__module__
    task = ("segmentation" if ".segmentation." in module else
            "detection" if ".detection." in module else
            "classification" if module.count(".") == 2 else "feature-extraction")
    size = 299 if tv_name == "inception_v3" else 224

    accepts = inspect.signature(tvm.get_model_builder(tv_name)).parameters

    def builder(**options):
        # No weights: nothing may be downloaded, not even a backbone's.
        options.setdefault("weights", None)
        if "weights_backbone" in accepts:
            options.setdefault("weights_backbone", None)
        return tvm.get_model(tv_name, **options)

    return ModelInfo(f"{TORCHVISION_PREFIX}{tv_name}", builder, task, (3, size, size),
                     1000 if task == "classification" else None, "torchvision",
                     f"torchvision's {tv_name} (random weights)")


def model_rows(task: str | None = None) -> list[dict]:
    """One row per registered model for `cnnbench models`; parameters counted on ``meta``."""
    import torch

    if task is not None and task not in TASKS:
        raise CnnbenchError(f"unknown task {task!r}{did_you_mean(task, TASKS)}")
    rows = []
    for name in sorted(list_models(task), key=lambda n: (TASKS.index(_REGISTRY[n].task), n)):
        info = _REGISTRY[name]
        with torch.device("meta"):
            params = sum(p.numel() for p in info.builder().parameters())
        rows.append({"name": name, "task": info.task, "input_size": list(info.input_size),
                     "num_classes": info.num_classes, "params": params, "source": info.source,
                     "description": info.description})
    return rows
