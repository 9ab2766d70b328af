"""`cnnbench runs`: the run folders under a root listed, one run found by name, runs compared.

A folder's files and their order of writes are ``training/runs.py``'s; this module only reads
them, and fills the keys a run's ``config.yaml`` predates with their defaults (``recipe``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cnnbench import recipe
from cnnbench.checkpoints import pid_alive
from cnnbench.errors import CnnbenchError, did_you_mean, shown
from cnnbench.files import SWEEP_PLAN, RunLayout
from cnnbench.keys import read_yaml
from cnnbench.registry import TASKS
from cnnbench.tasks.base import get_task
from cnnbench.training.runs import (PROVENANCE, lock_holder, monitor_name, read_environment,
                                    read_metrics, resolve_mode)


def list_runs(root: str | os.PathLike = "runs", columns: list[str] | None = None) -> list[dict]:
    """One row per run folder under ``root``, newest first, with its ``status``: finished,
    stopped early, running, interrupted (resumable) or ``damaged: reason`` (shown, never hidden). ``columns``:
    configuration keys each row also holds (under ``config``). A sweep's folder is not a run
    (``cnnbench runs --sweep DIR`` shows it)."""
    columns = check_columns(columns)
    if os.path.lexists(root) and not Path(root).is_dir():
        raise CnnbenchError(f"--dir {root} is not a folder (a file, or a dangling or looping "
                            f"link): give the folder holding the runs")
    rows = [run_row(folder, columns) for folder in sorted(Path(root).glob("*"))
            if folder.is_dir() and _looks_like_run(folder)]
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def sweep_dirs(root: str | os.PathLike = "runs") -> list[str]:
    """The sweep folders under ``root`` (``cnnbench runs --sweep DIR`` shows each)."""
    return sorted(str(p.parent) for p in Path(root).glob(f"*/{SWEEP_PLAN}"))


def run_row(folder: Path, columns: list[str] = ()) -> dict:
    """A run folder's model, epochs, best validation and test value of its monitor, minutes,
    status and the ``columns`` of its configuration."""
    config, metrics, results, damage = {}, [], {}, None
    try:
        config = read_run_config(folder)
        metrics = read_metrics(folder)
        results = read_results(folder)
    except CnnbenchError as exc:
        damage = str(exc).replace(str(folder) + "/", "")
    status = _status(folder, metrics, results, damage)
    monitor = monitor_name(results.get("monitor") or config.get("monitor")
                           or _monitor(config.get("task")))
    best = min if resolve_mode(config.get("mode"), monitor) == "min" else max
    vals = [r[f"val_{monitor}"] for r in metrics if r.get(f"val_{monitor}") is not None]
    return {
        "run": folder.name, "model": config.get("model"), "task": config.get("task"),
        "started": results.get("started") or time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.localtime(folder.stat().st_mtime)),
        "epochs": len(metrics), "of_epochs": config.get("epochs"),
        "monitor": monitor,  # the validation metric: acc for classification
        "best_val": best(vals) if vals else None,
        "test": results.get(f"test_{monitor}"),
        "minutes": sum(r.get("epoch_seconds", 0.0) for r in metrics) / 60,
        "finished": bool(results),
        "status": status,
        "path": str(folder),
        **({"config": {k: config.get(k) for k in columns}} if columns else {}),
    }


# What the listing and --compare read from a run's files, and the types they must have.
TEXT_KEYS = ("model", "task", "monitor", "mode", "started")


def read_run_config(folder: Path) -> dict:
    """A run's ``config.yaml``, its names text and ``epochs`` a whole number."""
    config = read_yaml(RunLayout(folder).config)
    _check_types(config, RunLayout.CONFIG, folder)
    return config


def read_results(folder: Path) -> dict:
    """A run's ``results.json`` ({} before it ends): a JSON object whose names are text and
    whose ``test_*`` and ``best_*`` figures are numbers; anything else is a one-line error."""
    path = RunLayout(folder).results
    if not os.path.lexists(path):
        return {}
    try:
        results = json.loads(path.read_text(errors="replace"))
    except OSError as exc:
        raise CnnbenchError(f"{path} cannot be read ({exc.strerror})") from None
    except (ValueError, RecursionError):
        raise CnnbenchError(f"{path} is not JSON") from None
    if not isinstance(results, dict):
        raise CnnbenchError(f"{path} is not a JSON object")
    _check_types(results, RunLayout.RESULTS, folder)
    return results


def _check_types(values: dict, name: str, folder: Path) -> None:
    for key, value in values.items():
        number = key.startswith(("test_", "best_")) or key in ("epochs", "best_epoch")
        if key == "test_checkpoint" or key == "test_epoch" and value is None:
            continue
        if key in TEXT_KEYS and value is not None and not isinstance(value, str):
            raise CnnbenchError(f"{folder / name}: {key} is {shown(value)}, not text")
        if number and value is not None and (isinstance(value, bool) or not isinstance(
                value, (int, float))):
            raise CnnbenchError(f"{folder / name}: {key} is {shown(value)}, not a number")


def config_keys() -> list[str]:
    """Every configuration key: the trainer's and every task's options."""
    keys = list(recipe.trainer_keys())
    for name, path in TASKS.items():
        if path:
            keys += [k for k in recipe.schema(name) if k not in keys]
    return keys


def check_columns(columns: list[str] | None) -> list[str]:
    """``--columns`` names: configuration keys; an unknown one is a one-line error."""
    known = config_keys() if columns else []
    for key in columns or []:
        if key not in known:
            raise CnnbenchError(f"unknown column {key!r}: give configuration keys (those "
                                f"--set takes){did_you_mean(key, known)}")
    return list(columns or [])


def find_run(name: str | os.PathLike, root: str | os.PathLike = "runs") -> Path:
    """A run folder given by its path, or by its name under ``root``."""
    for path in (Path(name), Path(root) / name):
        if RunLayout(path).config.is_file():
            return path
    raise CnnbenchError(f"no run {str(name)!r} (a folder with config.yaml, as a path or under "
                        f"{root})")


def compare_runs(names: list[str], root: str | os.PathLike = "runs") -> dict:
    """Runs side by side: the configuration keys whose values differ between them, the fields
    of their ``environment.json`` that differ (``PROVENANCE``), each run's metrics, and its
    learning curves (training loss and the monitored validation metric per
    epoch, from ``metrics.jsonl``)."""
    if len(names) < 2:
        raise CnnbenchError("--compare takes two or more runs")
    folders = [find_run(n, root) for n in names]
    configs = [recipe.stored(read_run_config(f)) for f in folders]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differ = [k for k in keys if any(c.get(k) != configs[0].get(k) for c in configs)]
    environments = [read_environment(f) for f in folders]
    env_differ = [k for k in PROVENANCE
                  if any(e.get(k) != environments[0].get(k) for e in environments)]
    runs = []
    for folder, config, env in zip(folders, configs, environments):
        row = run_row(folder)
        if row["status"].startswith("damaged: results.json"):
            raise CnnbenchError(f"{folder}: {row['status']}")
        metrics = read_metrics(folder)
        val = f"val_{row['monitor']}"
        row.update({
            "settings": {k: config.get(k) for k in differ},
            "environment": {k: env.get(k) for k in env_differ},
            "curves": {"epoch": [r.get("epoch") for r in metrics],
                       "train_loss": [r.get("train_loss") for r in metrics],
                       val: [r.get(val) for r in metrics]}})
        runs.append(row)
    return {"differ": differ, "environment_differ": env_differ, "runs": runs}


def _looks_like_run(folder: Path) -> bool:
    if (folder / SWEEP_PLAN).is_file():
        return False
    return any((folder / name).exists()
               for name in (RunLayout.CONFIG, RunLayout.CHECKPOINTS, RunLayout.LOCK))


def _status(folder: Path, metrics: list[dict], results: dict, damage: str | None) -> str:
    holder = lock_holder(folder)
    if holder is not None and pid_alive(holder) and holder != os.getpid():
        return "running"
    epochs = [r.get("epoch") for r in metrics]
    if damage is None and len(set(epochs)) != len(epochs):
        damage = "metrics.jsonl repeats an epoch"
    if damage:
        return f"damaged: {damage}"
    if results:  # early stopping (``patience``) is a normal end too
        return "stopped early" if results.get("stopped_early") else "finished"
    if not RunLayout(folder).config.is_file():
        return f"damaged: no {RunLayout.CONFIG}"
    if not RunLayout(folder).last.is_file():
        return "damaged: no checkpoint (stopped before its first epoch ended)"
    return "interrupted"


def _monitor(task: str | None) -> str:
    try:
        return get_task(task or "classification").monitor
    except CnnbenchError:
        return "acc"
