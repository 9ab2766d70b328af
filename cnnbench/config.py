"""Training configuration: defaults, YAML recipes, command-line overrides, validation.

Precedence, lowest first: the trainer's defaults and the task's ``options``, the YAML file
(``experiments/<model>.yaml`` when it exists, or ``--config FILE``) with its device block
merged in (``cuda:`` when the requested device is CUDA; ``training/profiles.py``), then the
command line.
Every key is declared once, beside the code that reads it (``cnnbench/keys.py``); the resolver
gathers them and checks every value: an unknown key is rejected with the nearest valid one.
``cnnbench train --keys [MODEL]`` lists them (:func:`key_rows`).
"""

from __future__ import annotations

import copy
import importlib
import math
from pathlib import Path

import yaml

from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.inputs import YamlLoader, parse_assignments, parse_input_size
from cnnbench.keys import Key, table
from cnnbench.registry import get_model_info
from cnnbench.tasks.base import get_task
from cnnbench.training.compiling import compile_mode
from cnnbench.training.profiles import apply_profile

# The modules that declare the trainer's keys (``keys.declare``), in the order a resolved
# configuration lists them; each task declares its own in its class (``Task.options``).
KEY_MODULES = ("cnnbench.training.build", "cnnbench.data.sources", "cnnbench.data.stream",
               "cnnbench.data.csv_labels", "cnnbench.training.loop",
               "cnnbench.training.optimizers", "cnnbench.training.schedules",
               "cnnbench.training.compiling", "cnnbench.training.weight_init",
               "cnnbench.training.profiles", "cnnbench.training.callbacks",
               "cnnbench.training.distributed", "cnnbench.training.transfer")
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


class UniqueKeyLoader(YamlLoader):
    """YAML's safe loader (``1e-3`` a float), but a key given twice in one mapping is an error
    (PyYAML keeps the last one silently, so a recipe could say ``lr`` twice and mean either)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=UniqueKeyLoader)
    except OSError as exc:
        raise CnnbenchError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or ""
        if problem.startswith("duplicate key"):
            raise CnnbenchError(f"{path} gives {problem[10:]} twice{where}") from None
        raise CnnbenchError(f"{path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CnnbenchError(f"{path} must hold a mapping of keys to values")
    return data


def key_groups(task: str | None = None) -> dict[str, tuple[Key, ...]]:
    """The declared keys by where they live: each module's, then the task's (``task``)."""
    groups = {name.rsplit(".", 1)[-1]: importlib.import_module(name).KEYS for name in KEY_MODULES}
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
    from_file = apply_profile(from_file, overrides.get("device"), overrides.get("profile"))
    if isinstance(from_file.get("model_args"), dict) and "model_args" in overrides:
        overrides["model_args"] = {**from_file["model_args"], **overrides["model_args"]}
    merged = {**from_file, **overrides}
    if not merged.get("model"):
        raise CnnbenchError("no model: give MODEL or a config file with a `model:` key")
    info = get_model_info(merged["model"])
    task = merged.get("task") or info.task
    keys = schema(task)
    config = defaults(task)
    for source, values in (("config file " + str(config_file), from_file),
                           ("command line", overrides)):
        for key, value in values.items():
            config[key] = check(key, value, keys, source)
    config["task"] = task
    if (config["mixup"] or config["cutmix"]) and task not in MIXING_TASKS:
        raise CnnbenchError(f"mixup and cutmix mix class labels: the {task} task does not take "
                            f"them (only {', '.join(MIXING_TASKS)})")
    config["input_size"] = list(_input_size(config["input_size"], info))
    compile_mode(config["compile"])  # a one-line error for a mode torch.compile lacks
    return config


def check(key: str, value, keys: dict[str, Key] | None = None, source: str = "config"):
    """``value`` for ``key`` (one of ``keys``, default: the trainer's) converted to the key's
    type; a one-line error otherwise."""
    keys = trainer_keys() if keys is None else keys
    if key not in keys:
        raise CnnbenchError(f"unknown key {key!r} in {source}{did_you_mean(key, keys)}")
    spec = keys[key]
    kind, choices = spec.type, spec.choices
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
    if spec.bounds:
        _check_bounds(key, value, spec.default, spec.bounds, source)
    elif isinstance(value, float) and not math.isfinite(value):
        raise CnnbenchError(f"{key} must be a finite number, not {value} (in {source})")
    return value


def parse_interval(text: str) -> tuple[float, float, bool, bool]:
    """``"[0, 1)"`` -> (0.0, 1.0, low included, high included)."""
    lo, hi = (float(v) for v in text[1:-1].split(","))
    return lo, hi, text[0] == "[", text[-1] == "]"


def _check_bounds(key: str, value, default, interval: str, source: str) -> None:
    items = value if isinstance(value, list) else [value]
    if isinstance(default, list) and len(value) != len(default):
        raise CnnbenchError(f"{key} must hold {len(default)} numbers, not {value!r} (in {source})")
    lo, hi, lo_in, hi_in = parse_interval(interval)
    for item in items:
        ok = (isinstance(item, (int, float)) and not isinstance(item, bool)
              and math.isfinite(item) and (lo <= item if lo_in else lo < item)
              and (item <= hi if hi_in else item < hi))
        if not ok:
            lo_text = f"{lo:g}"
            rule = (f"{'>=' if lo_in else '>'} {lo_text}" if math.isinf(hi)
                    else f"in {interval}")
            each = " (each)" if isinstance(value, list) else ""
            raise CnnbenchError(f"{key} must be {rule}{each}, not {value!r} (in {source})")


def _input_size(value, info) -> tuple[int, int, int]:
    if value is None:
        return info.input_size
    if isinstance(value, (list, tuple)):
        value = "x".join(str(v) for v in value)
    return parse_input_size(str(value), info)


def parse_set(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` strings -> a dict (values are YAML: 0.1, 1e-3, true, [0.9, 0.99])."""
    return parse_assignments(items, "--set", "label_smoothing=0.1")


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


def dump(config: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
