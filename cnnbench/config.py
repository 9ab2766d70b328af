"""Training configuration: defaults, YAML recipes, command-line overrides, validation.

Precedence, lowest first: the trainer's defaults and the task's ``options``, the YAML file
(``experiments/<model>.yaml`` when it exists, or ``--config FILE``) with its device block
merged in (``cuda:`` when the requested device is CUDA; ``training/accel.py``), then the
command line.
Every key is checked: an unknown one is rejected with the nearest valid key.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.inputs import YamlLoader, parse_assignments, parse_input_size
from cnnbench.registry import get_model_info
from cnnbench.tasks.base import get_task
from cnnbench.training.accel import INITS, PROFILES, apply_profile, compile_mode
from cnnbench.training.optimizers import OPTIMIZERS
from cnnbench.training.schedules import SCHEDULES

# key: (default, type, allowed values[, bounds]). The type None accepts anything YAML can hold.
# Bounds are an interval, "[1, inf)" or "(0, 1)", for a number or each item of a list; every
# float must also be finite. ``check`` applies all of it, so each key states its rules once.
TRAINER_KEYS: dict[str, tuple] = {
    "model": (None, str, None),
    "model_args": ({}, dict, None),         # the builder's keyword options, e.g. {ratio: 4}
    "task": (None, str, None),              # default: the model's task in the registry
    "data": (None, str, None),              # data folder (default: $CNNBENCH_DATA, Debian's, cache)
    "limit": (None, int, None, "[1, inf)"),  # at most this many images per split
    "val_size": (5000, int, None, "[0, inf)"),  # hold-out from the training set (fixed seed)
    "input_size": (None, None, None),       # 96, "96x96" or "1x96x96"; default: the model's
    "skip_bad_images": (False, bool, None),  # imagefolder: warn and skip undecodable files
    "device": ("auto", str, ("auto", "cpu", "cuda", "mps")),
    "epochs": (10, int, None, "[1, inf)"),
    "batch_size": (256, int, None, "[1, inf)"),
    "eval_batch_size": (None, int, None, "[1, inf)"),  # default: 2 x batch_size
    "optimizer": ("sgd", str, tuple(OPTIMIZERS)),
    "lr": (0.1, float, None, "(0, inf)"),
    "momentum": (0.0, float, None, "[0, 1)"),  # SGD momentum; Adam's beta1 is betas[0]
    "nesterov": (False, bool, None),
    "betas": ([0.9, 0.999], list, None, "[0, 1)"),  # each
    "weight_decay": (0.0, float, None, "[0, inf)"),
    "schedule": ("constant", str, tuple(SCHEDULES)),
    "warmup_epochs": (0.0, float, None, "[0, inf)"),  # linear warm-up (constant, step, cosine)
    "step_epochs": (3, int, None, "[1, inf)"),  # step: multiply by gamma every step_epochs
    "gamma": (0.1, float, None, "(0, inf)"),
    "pct_start": (0.25, float, None, "(0, 1)"),  # onecycle: fraction of steps going up (fastai 0.25)
    "div_factor": (25.0, float, None, "(0, inf)"),  # onecycle: start at lr / div_factor
    "final_div_factor": (1e4, float, None, "(0, inf)"),  # onecycle: end at lr / div_factor / this
    "cycle_momentum": (True, bool, None),   # onecycle: momentum (or beta1) 0.95 -> 0.85 -> 0.95
    "grad_clip": (None, float, None, "(0, inf)"),  # max global gradient norm
    "amp": ("none", str, ("none", "bf16", "fp16")),  # autocast: bf16 (CUDA, CPU), fp16 (CUDA)
    "channels_last": (True, bool, None),    # CUDA only
    "compile": (False, None, None),         # false, true or a torch.compile mode (accel.py)
    "init": ("default", str, tuple(INITS)),  # weights of every Conv2d/Linear before training
    "profile": ("auto", str, ("auto", "none", *PROFILES)),  # device block applied (accel.py)
    "monitor": (None, str, None),           # the metric that picks best.pt (default: the task's)
    "mode": ("auto", str, ("auto", "max", "min")),  # auto: minimise a loss or error, else max
    "seed": (0, int, None, "[0, inf)"),
    "threads": (None, int, None, "[1, inf)"),  # CPU threads for torch (default: torch's choice)
    "sync_batchnorm": (False, bool, None),  # SyncBatchNorm over the processes (CUDA only)
    "log_graph": (True, bool, None),
    "log_images": (True, bool, None),
    "log_every_steps": (50, int, None, "[0, inf)"),  # TensorBoard step-level loss and lr; 0: off
    "log_histograms": (False, bool, None),  # TensorBoard weights and gradients every epoch
    # -- early stopping, gradient accumulation, model EMA, MixUp/CutMix (callbacks.py, loop.py)
    "patience": (None, int, None, "[1, inf)"),  # stop after N epochs without a better monitor
    "min_delta": (0.0, float, None, "[0, inf)"),  # patience: the least gain that counts
    "accumulate_steps": (1, int, None, "[1, inf)"),  # batches per optimizer step
    "ema": (None, float, None, "(0, 1)"),  # model EMA decay, e.g. 0.999 (val_ema_* metrics)
    "mixup": (0.0, float, None, "[0, inf)"),  # MixUp's Beta(a, a); 0: off (classification)
    "cutmix": (0.0, float, None, "[0, inf)"),  # CutMix's Beta(a, a); with mixup: each half
    # Transfer learning (training/transfer.py)
    "init_from": (None, str, None),         # run folder, checkpoint or state dict: matching tensors
    "freeze_epochs": (0, int, None, "[0, inf)"),  # train only the head (last layer group) first
    "train_bn": (False, bool, None),        # frozen groups' norms train too (fastai 2), not eval
    "lr_mult": (None, list, None, "(0, inf)"),  # lr multiple per layer group, e.g. [0.01, 0.1, 1]
}
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


# Bounds (or allowed values) of the tasks' own keys, which the tasks declare in ``options``
# with their defaults (their type is the default's).
TASK_OPTION_RULES: dict[str, str | tuple] = {
    "label_smoothing": "[0, 1]", "crop_padding": "[0, inf)", "random_erasing": "[0, 1]",
    "scenes": "[1, inf)", "test_scenes": "[1, inf)", "scene_size": "[8, inf)", "flip": "[0, 1]",
    "scale_min": "(0, inf)", "scale_max": "(0, inf)", "translate": "[0, 1]", "degrees": "[0, 180]",
    "match_iou": "(0, 1]", "neg_ratio": "[0, inf)", "box_loss": ("smooth_l1", "l1"),
    "box_weight": "[0, inf)", "score_threshold": "[0, 1]", "nms_iou": "(0, 1]",
    "max_detections": "[1, inf)", "draw_threshold": "[0, 1]", "threshold": "[0, 1]",
    "dice_weight": "[0, inf)", "ce_weight": "[0, inf)",
}


def task_options(task_name: str) -> dict:
    return dict(get_task(task_name).options)


def task_schema(task_name: str) -> dict:
    """The task's keys in ``TRAINER_KEYS``' form."""
    schema = {}
    for key, default in task_options(task_name).items():
        rule = TASK_OPTION_RULES.get(key)
        kind = float if isinstance(default, float) else type(default) if default is not None \
            else None
        schema[key] = (default, kind, rule if isinstance(rule, tuple) else None,
                       rule if isinstance(rule, str) else None)
    return schema


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
    schema = {**TRAINER_KEYS, **task_schema(task)}
    config = {k: spec[0] for k, spec in schema.items()}
    for source, values in (("config file " + str(config_file), from_file),
                           ("command line", overrides)):
        for key, value in values.items():
            config[key] = check(key, value, schema, source)
    config["task"] = task
    if (config["mixup"] or config["cutmix"]) and task not in MIXING_TASKS:
        raise CnnbenchError(f"mixup and cutmix mix class labels: the {task} task does not take "
                            f"them (only {', '.join(MIXING_TASKS)})")
    config["input_size"] = list(_input_size(config["input_size"], info))
    compile_mode(config["compile"])  # a one-line error for a mode torch.compile lacks
    return config


def check(key: str, value, schema: dict, source: str = "config"):
    """``value`` for ``key`` converted to the key's type; a one-line error otherwise."""
    if key not in schema:
        raise CnnbenchError(f"unknown key {key!r} in {source}{did_you_mean(key, schema)}")
    kind, choices = schema[key][1:3]
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
    if len(schema[key]) > 3 and schema[key][3]:
        _check_bounds(key, value, schema[key][0], schema[key][3], source)
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


def dump(config: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
