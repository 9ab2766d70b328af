"""A run's recipe: every module's keys gathered, defaults, YAML recipes, command-line overrides.

Precedence, lowest first: the trainer's defaults and the task's ``options``, the YAML file
(``experiments/<model>.yaml`` when it exists, or ``--config FILE``) with its device block
merged in (``cuda:`` when the requested device is CUDA; ``training/profiles.py``), then the
command line.
Every key is declared once, beside the code that reads it (``cnnbench/keys.py``); this module
sits above the modules that declare them and gathers them: an unknown key is rejected with the
nearest valid one. ``cnnbench train --keys [MODEL]`` lists them (:func:`key_rows`).
"""

from __future__ import annotations

import copy
from pathlib import Path

from cnnbench import keys as keys_module
from cnnbench.data import coco, csv_labels, sources, stream
from cnnbench.errors import CnnbenchError, shown
from cnnbench.inputs import parse_input_size
from cnnbench.keys import Key, read_yaml, table
from cnnbench.models import get_model_info
from cnnbench.tasks.base import get_task
from cnnbench.training import (build, callbacks, compiling, distributed, loop, optimizers,
                               profiles, schedules, transfer, weight_init)

# The modules that declare the trainer's keys (``keys.declare``), in the order a resolved
# configuration lists them; each task declares its own in its class (``Task.options``).
KEY_MODULES = (build, sources, stream, csv_labels, coco, loop, optimizers, schedules, compiling,
               weight_init, profiles, callbacks, distributed, transfer)
MIXING_TASKS = ("classification",)  # mixup and cutmix mix one label per image


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


def key_groups(task: str | None = None) -> dict[str, tuple[Key, ...]]:
    """The declared keys by where they live: each module's, then the task's (``task``)."""
    groups = {module.__name__.rsplit(".", 1)[-1]: module.KEYS for module in KEY_MODULES}
    if task:
        groups[f"task {task}"] = get_task(task).options
    return groups


def trainer_keys() -> dict[str, Key]:
    """Every trainer key by name (those of every task besides)."""
    return table(k for keys in key_groups().values() for k in keys)


def schema(task: str | None = None) -> dict[str, Key]:
    """The keys a run of ``task`` accepts; a task key named like a trainer key is an error."""
    return table(k for keys in key_groups(task).values() for k in keys)


def defaults(task: str | None = None) -> dict:
    """Every key's default (the task's too): the base of a configuration built by hand."""
    return {name: copy.deepcopy(key.default) for name, key in schema(task).items()}


def stored(config: dict) -> dict:
    """A run's stored configuration (``config.yaml``, a checkpoint's) with the keys added since
    it was made: each at the value that run had in effect (``Key.legacy``), else the default."""
    filled = defaults(config.get("task"))
    for name, key in schema(config.get("task")).items():
        if key.legacy is not keys_module.NO_LEGACY:
            filled[name] = copy.deepcopy(key.legacy)
    return {**filled, **config}


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
    for source, values in (("config file " + str(config_file), from_file),
                           ("command line", overrides)):
        for key in ("device", "profile"):  # read to pick the device block, before the rest
            if key in values:
                check(key, values[key], source)
    from_file = profiles.apply_profile(from_file, overrides.get("device"),
                                       overrides.get("profile"))
    if isinstance(from_file.get("model_args"), dict) and "model_args" in overrides:
        overrides["model_args"] = {**from_file["model_args"], **overrides["model_args"]}
    merged = {**from_file, **overrides}
    for name in ("model", "task"):  # names, before they are looked up
        if merged.get(name) is not None and not isinstance(merged[name], str):
            raise CnnbenchError(f"{name} must be a name, not {shown(merged[name])}")
    if not merged.get("model"):
        raise CnnbenchError("no model: give MODEL or a config file with a `model:` key")
    info = get_model_info(merged["model"])
    task = merged.get("task") or info.task
    keys = schema(task)
    config = defaults(task)
    for source, values in (("config file " + str(config_file), from_file),
                           ("command line", overrides)):
        for key, value in values.items():
            config[key] = keys_module.check(key, value, keys, source)
    config["task"] = task
    if (config["mixup"] or config["cutmix"]) and task not in MIXING_TASKS:
        raise CnnbenchError(f"mixup and cutmix mix class labels: the {task} task does not take "
                            f"them (only {', '.join(MIXING_TASKS)})")
    config["input_size"] = list(_input_size(config["input_size"], info))
    compiling.compile_mode(config["compile"])  # a one-line error for a mode torch.compile lacks
    return config


def check(key: str, value, source: str = "config"):
    """``value`` for the trainer key ``key`` (any task's too), checked (``keys.check``)."""
    return keys_module.check(key, value, trainer_keys(), source)


def _input_size(value, info) -> tuple[int, int, int]:
    if value is None:
        return info.input_size
    if isinstance(value, (list, tuple)):
        value = "x".join(str(v) for v in value)
    return parse_input_size(str(value), info)


def key_rows(model: str | None = None, config_file: str | Path | None = None) -> list[dict]:
    """Every key a run accepts: where it is declared, its default, type, choices, bounds and help;
    for ``model``, its task's keys too and the value its recipe resolves to."""
    resolved = resolve(model, config_file) if model or config_file else None
    rows = []
    for group, keys in key_groups(resolved and resolved["task"]).items():
        for key in keys:
            row = {"key": key.name, "group": group, "default": key.default,
                   "type": key.type.__name__ if key.type else "any",
                   "choices": list(key.choices) if key.choices else None,
                   "bounds": key.bounds, "help": key.help}
            if resolved is not None:
                row["value"] = resolved[key.name]
            rows.append(row)
    return rows
