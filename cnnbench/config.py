"""Training configuration: defaults, YAML recipes, command-line overrides, validation.

Precedence, lowest first: the trainer's defaults and the task's ``options``, the YAML file
(``experiments/<model>.yaml`` when it exists, or ``--config FILE``), then the command line.
Every key is checked: an unknown one is rejected with the nearest valid key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.inputs import parse_input_size
from cnnbench.registry import get_model_info
from cnnbench.tasks.base import get_task
from cnnbench.training.optimizers import OPTIMIZERS
from cnnbench.training.schedules import SCHEDULES

# key: (default, type, allowed values). The type None accepts anything YAML can hold.
TRAINER_KEYS: dict[str, tuple[Any, type | tuple | None, tuple | None]] = {
    "model": (None, str, None),
    "model_args": ({}, dict, None),         # the builder's keyword options, e.g. {ratio: 4}
    "task": (None, str, None),              # default: the model's task in the registry
    "data": (None, str, None),              # data folder (default: $CNNBENCH_DATA, Debian's, cache)
    "limit": (None, int, None),             # at most this many images per split
    "val_size": (5000, int, None),          # hold-out from the training set (fixed seed)
    "input_size": (None, None, None),       # 96, "96x96" or "1x96x96"; default: the model's
    "device": ("auto", str, ("auto", "cpu", "cuda", "mps")),
    "epochs": (10, int, None),
    "batch_size": (256, int, None),
    "eval_batch_size": (None, int, None),   # default: 2 x batch_size
    "optimizer": ("sgd", str, tuple(OPTIMIZERS)),
    "lr": (0.1, float, None),
    "momentum": (0.0, float, None),         # SGD momentum; Adam's beta1 is betas[0]
    "nesterov": (False, bool, None),
    "betas": ([0.9, 0.999], list, None),
    "weight_decay": (0.0, float, None),
    "schedule": ("constant", str, tuple(SCHEDULES)),
    "warmup_epochs": (0.0, float, None),    # linear warm-up (constant, step, cosine)
    "step_epochs": (3, int, None),          # step: multiply by gamma every step_epochs
    "gamma": (0.1, float, None),
    "pct_start": (0.25, float, None),       # onecycle: fraction of steps going up (fast.ai: 0.25)
    "div_factor": (25.0, float, None),      # onecycle: start at lr / div_factor
    "final_div_factor": (1e4, float, None), # onecycle: end at lr / div_factor / final_div_factor
    "cycle_momentum": (True, bool, None),   # onecycle: momentum (or beta1) 0.95 -> 0.85 -> 0.95
    "grad_clip": (None, float, None),       # max global gradient norm
    "amp": ("none", str, ("none", "bf16", "fp16")),  # CUDA only
    "channels_last": (True, bool, None),    # CUDA only
    "compile": (False, bool, None),
    "monitor": (None, str, None),           # the metric that picks best.pt (default: the task's)
    "mode": ("auto", str, ("auto", "max", "min")),  # auto: minimise a loss or error, else max
    "seed": (0, int, None),
    "threads": (None, int, None),           # CPU threads for torch (default: torch's own choice)
    "log_graph": (True, bool, None),
    "log_images": (True, bool, None),
}


def experiments_dirs() -> list[Path]:
    here = Path.cwd() / "experiments"
    package = Path(__file__).resolve().parents[1] / "experiments"
    return [here] if here == package else [here, package]


def default_recipe(model: str) -> Path | None:
    """``experiments/<model>.yaml`` (in the current folder or beside the package), if any."""
    for folder in experiments_dirs():
        path = folder / f"{model.replace(':', '-')}.yaml"
        if path.is_file():
            return path
    return None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CnnbenchError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CnnbenchError(f"{path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CnnbenchError(f"{path} must hold a mapping of keys to values")
    return data


def task_options(task_name: str) -> dict:
    return dict(get_task(task_name).options)


def resolve(model: str | None = None, config_file: str | Path | None = None,
            overrides: dict | None = None) -> dict:
    """Defaults < YAML < overrides, validated; ``model`` may come from the YAML file."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if model:
        overrides["model"] = model
    model = overrides.get("model")
    if config_file is None and model:
        config_file = default_recipe(model)
    from_file = read_yaml(config_file) if config_file else {}
    if isinstance(from_file.get("model_args"), dict) and "model_args" in overrides:
        overrides["model_args"] = {**from_file["model_args"], **overrides["model_args"]}
    merged = {**from_file, **overrides}
    if not merged.get("model"):
        raise CnnbenchError("no model: give MODEL or a config file with a `model:` key")
    info = get_model_info(merged["model"])
    task = merged.get("task") or info.task
    options = task_options(task)
    schema = {**TRAINER_KEYS, **{k: (v, type(v) if v is not None else None, None)
                                 for k, v in options.items()}}
    config = {k: spec[0] for k, spec in schema.items()}
    for source, values in (("config file " + str(config_file), from_file),
                           ("command line", overrides)):
        for key, value in values.items():
            config[key] = check(key, value, schema, source)
    config["task"] = task
    config["input_size"] = list(_input_size(config["input_size"], info))
    return config


def check(key: str, value, schema: dict, source: str = "config"):
    """``value`` for ``key`` converted to the key's type; a one-line error otherwise."""
    if key not in schema:
        raise CnnbenchError(f"unknown key {key!r} in {source}{did_you_mean(key, schema)}")
    default, kind, choices = schema[key]
    if value is None or kind is None:
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
    elif kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    elif kind is list and isinstance(value, tuple):
        value = list(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CnnbenchError(f"{key} must be {kind.__name__}, not {value!r} (in {source})")
    if choices and value not in choices:
        raise CnnbenchError(f"{key} must be one of {', '.join(choices)}, not {value!r}"
                            f"{did_you_mean(str(value), choices)}")
    return value


def _input_size(value, info) -> tuple[int, int, int]:
    if value is None:
        return info.input_size
    if isinstance(value, (list, tuple)):
        value = "x".join(str(v) for v in value)
    return parse_input_size(str(value), info)


def parse_set(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` strings -> a dict (values are YAML scalars: 0.1, true, [0.9, 0.99])."""
    result = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CnnbenchError(f"bad --set {item!r}: use KEY=VALUE, e.g. label_smoothing=0.1")
        try:
            result[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            result[key] = value
    return result


def dump(config: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
