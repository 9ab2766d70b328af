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
from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.files import SWEEP_PLAN, RunLayout
from cnnbench.keys import read_yaml
from cnnbench.registry import TASKS
from cnnbench.tasks.base import get_task
from cnnbench.training.runs import lock_holder, read_metrics, resolve_mode


def list_runs(root: str | os.PathLike = "runs", columns: list[str] | None = None) -> list[dict]:
    """One row per run folder under ``root``, newest first, with its ``status``: finished,
    stopped early, running, interrupted (resumable) or ``damaged: reason`` (shown, never hidden). ``columns``:
    configuration keys each row also holds (under ``config``). A sweep's folder is not a run
    (``cnnbench runs --sweep DIR`` shows it)."""
    columns = check_columns(columns)
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
        config = read_yaml(RunLayout(folder).config)
        metrics = read_metrics(folder)
        results_path = RunLayout(folder).results
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    except CnnbenchError as exc:
        damage = str(exc).replace(str(folder) + "/", "")
    except (ValueError, OSError) as exc:
        damage = f"{RunLayout.RESULTS} unreadable ({type(exc).__name__})"
    status = _status(folder, metrics, results, damage)
    monitor = results.get("monitor") or config.get("monitor") or _monitor(config.get("task"))
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
    """Runs side by side: the configuration keys whose values differ between them, each run's
    metrics, and its learning curves (training loss and the monitored validation metric per
    epoch, from ``metrics.jsonl``)."""
    if len(names) < 2:
        raise CnnbenchError("--compare takes two or more runs")
    folders = [find_run(n, root) for n in names]
    configs = [recipe.stored(read_yaml(RunLayout(f).config)) for f in folders]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differ = [k for k in keys if any(c.get(k) != configs[0].get(k) for c in configs)]
    runs = []
    for folder, config in zip(folders, configs):
        row = run_row(folder)
        metrics = read_metrics(folder)
        val = f"val_{row['monitor']}"
        row.update({
            "settings": {k: config.get(k) for k in differ},
            "curves": {"epoch": [r.get("epoch") for r in metrics],
                       "train_loss": [r.get("train_loss") for r in metrics],
                       val: [r.get(val) for r in metrics]}})
        runs.append(row)
    return {"differ": differ, "runs": runs}


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
