"""Run folders: naming and claiming them, reading their metrics, listing them (`cnnbench runs`).

A run folder holds::

    config.yaml            the resolved configuration
    metrics.jsonl          one JSON object per epoch
    tensorboard/           event files (scalars, hyper-parameters, graph, images)
    checkpoints/last.pt    written atomically every epoch; best.pt when the monitor improves
    results.json           test metrics and timing, written at the end
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cnnbench import config as cfg
from cnnbench.errors import CnnbenchError
from cnnbench.tasks.base import get_task


def new_run_dir(model: str, root: str | os.PathLike = "runs") -> Path:
    """``root/<model>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that name is taken."""
    base = f"{model.replace(':', '-').replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(root).mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = Path(root) / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CnnbenchError(f"cannot find a free run folder name for {base} in {root}")


def check_run_dir(path: str | os.PathLike) -> Path:
    """``--run-dir`` must be new or empty: an existing run is never overwritten."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CnnbenchError(f"{path} already exists and is not empty: a run is never overwritten "
                            f"(use --resume {path} to continue it, or another --run-dir)")
    return path


def claim_run_dir(path: str | os.PathLike) -> Path:
    path = check_run_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def resolve_mode(mode: str | None, monitor: str) -> str:
    """``max`` or ``min``; ``auto`` minimises a loss or an error, as fastai's tracker does."""
    if mode in ("max", "min"):
        return mode
    return "min" if "loss" in monitor or "error" in monitor else "max"


def list_runs(root: str | os.PathLike = "runs") -> list[dict]:
    """One row per run folder under ``root``, newest first, finished or not."""
    rows = []
    for run in sorted(Path(root).glob("*/config.yaml")):
        folder = run.parent
        try:
            config = cfg.read_yaml(run)
            metrics = read_metrics(folder)
            results_path = folder / "results.json"
            results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        except (CnnbenchError, ValueError, OSError):
            continue
        monitor = results.get("monitor") or config.get("monitor") or _monitor(config.get("task"))
        best = min if resolve_mode(config.get("mode"), monitor) == "min" else max
        vals = [r[f"val_{monitor}"] for r in metrics if r.get(f"val_{monitor}") is not None]
        rows.append({
            "run": folder.name, "model": config.get("model"), "task": config.get("task"),
            "started": results.get("started") or time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.localtime(run.stat().st_mtime)),
            "epochs": len(metrics), "of_epochs": config.get("epochs"),
            "monitor": monitor,  # the validation metric: acc for classification
            "best_val": best(vals) if vals else None,
            "test": results.get(f"test_{monitor}"),
            "minutes": sum(r.get("epoch_seconds", 0.0) for r in metrics) / 60,
            "finished": bool(results),
            "path": str(folder),
        })
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def _monitor(task: str | None) -> str:
    try:
        return get_task(task or "classification").monitor
    except CnnbenchError:
        return "acc"
