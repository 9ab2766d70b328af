"""Model registry: every name knows its builder and the metadata tools need.

In the style of torchvision's ``register_model``/``get_model`` with timm-like defaults that travel
with the name, so ``summary``, ``bench``, ``train`` and ``receptive-field`` need no per-model code.
A builder's own keyword defaults are the single source of its ``in_channels`` and ``num_classes``.
``torchvision:<name>`` builds a torchvision model with random weights, or with ``weights=NAME``
(``DEFAULT``, ``IMAGENET1K_V1``...) loaded from the torch hub cache (``checkpoints.py``).
Any other ``module:callable`` is the user's own builder (:func:`_user_info`).

The families register themselves when ``cnnbench.models`` is imported; that package is where
callers look models up (``from cnnbench.models import get_model_info``), so that this table
stays below every model, task and command.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from cnnbench.checkpoints import load_torchvision_weights, torchvision_weights
from cnnbench.errors import CnnbenchError, did_you_mean

# The one task list: a task name (the ``task`` each model carries) -> the class that trains it,
# as ``module:Class``, imported only when a run needs it (``tasks.base.get_task``: a
# classification run does not pay for the detection code). ``feature-extraction`` models have no
# trainer task. To add a task: a module in ``cnnbench/tasks/`` and one line here.
TASKS: dict[str, str | None] = {
    "classification": "cnnbench.tasks.classification:Classification",
    "segmentation": "cnnbench.tasks.segmentation:Segmentation",
    "detection": "cnnbench.tasks.detection:Detection",
    "single-object": "cnnbench.tasks.single_object:SingleObject",
    "multi-label": "cnnbench.tasks.multi_label:MultiLabel",
    "feature-extraction": None,
}

# Options that would fetch weights from the internet (torchvision's, and its older spelling).
WEIGHTS_OPTIONS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")


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


def register_model(name: str, *, task: str, image_size: tuple[int, int], source: str,
                   description: str = ""):
    """Decorator: register ``builder`` under ``name``; a duplicate name is an error.

    The input's channels and the class count are the builder's ``in_channels`` and
    ``num_classes`` defaults (a feature extractor has no classes); ``image_size`` is (H, W).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")

    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        options = {
            p.name: p.default for p in inspect.signature(builder).parameters.values()
            if p.default is not inspect.Parameter.empty
        }
        if not isinstance(options.get("in_channels"), int):
            raise ValueError(f"the builder of {name!r} needs an in_channels=<int> default")
        num_classes = None if task == "feature-extraction" else options.get("num_classes")
        _REGISTRY[name] = ModelInfo(name, builder, task, (options["in_channels"], *image_size),
                                    num_classes, source,
                                    description or (builder.__doc__ or "").strip().split("\n")[0],
                                    options)
        return builder

    return wrap


def _loaded() -> None:
    if not _REGISTRY:
        raise RuntimeError("no model is registered: import cnnbench.models, whose families "
                           "register themselves, and look models up there")


def list_models(task: str | None = None) -> list[str]:
    _loaded()
    return [n for n, info in _REGISTRY.items() if task is None or info.task == task]


TORCHVISION_PREFIX = "torchvision:"


def get_model_info(name: str) -> ModelInfo:
    """Metadata for a registered name, ``torchvision:<name>`` or the user's ``module:callable``."""
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_info(name[len(TORCHVISION_PREFIX):])
    _loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        if ":" in name:
            return _user_info(name)
        raise CnnbenchError(
            f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; `cnnbench models` lists "
            "them, or use torchvision:<name> or your own module:callable") from None


USER_SOURCE = "your own"  # ModelInfo.source of a module:callable
USER_INPUT_SIZE = (224, 224)  # (H, W) of a user's model unless it says (an image_size default)


def _user_info(name: str) -> ModelInfo:
    """``mypkg.nets:build_net``: any importable callable that returns an ``nn.Module``, built
    with its keyword options (``-m KEY=VALUE``); the folder the command runs in is importable,
    as with ``python -m``. Its ``in_channels`` and ``num_classes`` defaults, if it has them,
    say what it takes (else 3 channels); the task is ``classification`` unless the callable
    has a ``task`` attribute or the run says ``task=...``."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise CnnbenchError(f"model {name!r}: a model of your own is module:callable, "
                            "e.g. mypkg.nets:build_net")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CnnbenchError(f"unknown model {name!r}: not registered (`cnnbench models`) and "
                            f"{exc.name!r} cannot be imported") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise CnnbenchError(f"model {name!r}: importing {module_name} raised "
                            f"{_one_line(exc)}") from None
    target = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise CnnbenchError(f"model {name!r}: {module_name} has no {attribute!r}"
                                f"{did_you_mean(attribute, dir(module))}")
    if not callable(target):
        raise CnnbenchError(f"model {name!r}: {attribute} is a {type(target).__name__}, not a "
                            "callable that returns an nn.Module")
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        parameters = {}
    options = {p.name: p.default for p in parameters.values()
               if p.default is not inspect.Parameter.empty}
    task = getattr(target, "task", "classification")
    if task not in TASKS:
        raise CnnbenchError(f"model {name!r}: its task attribute {task!r} is not a task "
                            f"({', '.join(TASKS)})")
    channels = options.get("in_channels", 3)
    size = options.get("image_size", USER_INPUT_SIZE)
    size = (size, size) if isinstance(size, int) else tuple(size)

    def builder(**kwargs):
        try:
            model = target(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's code: any error is one line
            raise CnnbenchError(f"cannot build {name}: it raised {_one_line(exc)}") from None
        if not isinstance(model, torch.nn.Module):
            raise CnnbenchError(f"{name} returned {type(model).__name__}, not an nn.Module")
        return model

    keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return ModelInfo(name, builder, task, (int(channels), *size),
                     options.get("num_classes") if task != "feature-extraction" else None,
                     USER_SOURCE, (target.__doc__ or "").strip().split("\n")[0],
                     options if not keywords else {**options, USER_KWARGS: None})


USER_KWARGS = "**kwargs"  # in a user's model's options: it takes any keyword


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def format_options(options: dict) -> str:
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                    for k, v in options.items())


def check_options(info: ModelInfo, options: dict) -> None:
    """Refuse, in one line, an option ``info``'s builder lacks or a value of the wrong kind.

    The kind comes from the builder's default: integers are counts or sizes (at least 1),
    floats finite numbers, tuples lists of counts. Weights are never downloaded.
    """
    torchvision = info.name.startswith(TORCHVISION_PREFIX)
    if torchvision and options.get("weights") not in (None, False) \
            and not isinstance(options["weights"], str):
        raise CnnbenchError(f"weights={options['weights']} refused: give the name of a torchvision "
                            "Weights entry, e.g. weights=DEFAULT or weights=IMAGENET1K_V1")
    for key in WEIGHTS_OPTIONS:
        if torchvision and key == "weights":
            continue  # a file in the torch hub cache (transfer.py), never a download
        if options.get(key) not in (None, False):
            raise CnnbenchError(
                f"{key}={options[key]} refused: cnnbench downloads no weights, models start "
                "from random ones (init_from: PATH, receptive-field --checkpoint FILE and "
                "ssd's backbone_weights=FILE load local state dicts; a torchvision: model "
                "takes weights=DEFAULT from the torch hub cache)")
    if torchvision or USER_KWARGS in info.options:
        return  # torchvision's builders take **kwargs; they check their own
    unknown = set(options) - set(info.options)
    if unknown:
        key = sorted(unknown)[0]
        raise CnnbenchError(
            f"model {info.name!r} has no option {key!r}{did_you_mean(key, info.options)}; "
            f"its options: {', '.join(sorted(info.options)) or 'none'}")
    for key, value in options.items():
        problem = _kind_problem(info.options[key], value)
        if problem:
            raise CnnbenchError(f"bad option {key}={value!r} for {info.name}: "
                                f"{key} must be {problem}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _kind_problem(default, value) -> str | None:
    """What ``value`` should be, given the builder's ``default``; None when it is fine."""
    if default is None:
        return None  # no kind to go by: the builder checks
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "True or False"
    if isinstance(default, int):
        return None if _is_count(value) else "a whole number >= 1"
    if isinstance(default, float):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if number and math.isfinite(value) else "a finite number"
    if isinstance(default, tuple) and all(isinstance(d, int) for d in default):
        ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(map(_is_count, value))
        return None if ok else "a list of whole numbers >= 1, e.g. [2, 2]"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


def get_model(name: str, **options):
    """Build ``name`` with its defaults, overridden by ``options`` (the family's keywords)."""
    info = get_model_info(name)
    check_options(info, options)
    shown = format_options(options) or "its defaults"
    try:
        with warnings.catch_warnings():
            # Empty layers are reported below, with the options that made them.
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            model = info.builder(**options)
    except (TypeError, ValueError, ZeroDivisionError, IndexError, RuntimeError) as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CnnbenchError(f"cannot build {name} with {shown}: {message}") from None
    empty = next((n for n, p in model.named_parameters() if p.numel() == 0), None)
    if empty is not None:
        raise CnnbenchError(f"{name} with {shown} has an empty layer ({empty} has shape "
                            f"{list(model.get_parameter(empty).shape)}): pick values that "
                            "leave every layer at least one channel")
    return model


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
        # Nothing may be downloaded, not even a backbone's: weights=NAME comes from the cache.
        weights = options.pop("weights", None)
        if weights:
            torchvision_weights(tv_name, weights)  # a wrong name: one line, before building
        options["weights"] = None
        if "weights_backbone" in accepts:
            options.setdefault("weights_backbone", None)
        model = tvm.get_model(tv_name, **options)
        if weights:
            load_torchvision_weights(model, tv_name, weights)
        return model

    return ModelInfo(f"{TORCHVISION_PREFIX}{tv_name}", builder, task, (3, size, size),
                     1000 if task == "classification" else None, "torchvision",
                     f"torchvision's {tv_name} (random weights)")


def model_rows(task: str | None = None) -> list[dict]:
    """One row per registered model for `cnnbench models`; parameters counted on ``meta``."""
    if task is not None and task not in TASKS:
        raise CnnbenchError(f"unknown task {task!r}{did_you_mean(task, TASKS)}")
    rows = []
    for name in sorted(list_models(task), key=lambda n: (list(TASKS).index(_REGISTRY[n].task), n)):
        info = _REGISTRY[name]
        with torch.device("meta"):
            params = sum(p.numel() for p in info.builder().parameters())
        rows.append({"name": name, "task": info.task, "input_size": list(info.input_size),
                     "num_classes": info.num_classes, "params": params, "source": info.source,
                     "description": info.description})
    return rows
