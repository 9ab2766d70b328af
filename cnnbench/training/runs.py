"""Run folders: naming and claiming them, reading their metrics, listing them (`cnnbench runs`).

A run folder holds::

    .lock                  the pid of the process training in it (one at a time)
    config.yaml            the resolved configuration
    environment.json       where it came from: versions, git commit, host, command, times
                           (``provenance``)
    metrics.jsonl          one JSON object per epoch, appended after that epoch's checkpoint
    tensorboard/           event files (scalars, hyper-parameters, graph, images)
    checkpoints/last.pt    written atomically every epoch (and mid-epoch when interrupted);
                           best.pt when the monitor improves
    results.json           test metrics and timing, written at the end

A sweep's folder (``cnnbench.sweep``) holds run folders and its ``sweep.yaml``.

The order of writes keeps a folder consistent whatever stops the process: the checkpoint is
renamed into place before the epoch's row is appended, so the log never runs ahead of
``last.pt``; a resume drops rows after the checkpoint's epoch and a torn last line.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

from cnnbench import config as cfg
from cnnbench.checkpoints import pid_alive, remove_stale_temporaries
from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.strict_json import dumps
from cnnbench.tasks.base import get_task


LOCK = ".lock"
ENVIRONMENT = "environment.json"
# The fields of environment.json that say what made a run, set side by side by ``--compare``
# (not the times, which always differ).
PROVENANCE = ("cnnbench", "git_commit", "git_dirty", "python", "torch", "torchvision", "cuda",
              "cudnn", "device", "device_name", "host", "command")


def new_run_dir(model: str, root: str | os.PathLike = "runs") -> Path:
    """``root/<model>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that name is taken;
    made (``mkdir`` is atomic: the name is ours) and locked."""
    base = f"{model.replace(':', '-').replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(root).mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = Path(root) / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        lock_run(path)
        return path
    raise CnnbenchError(f"cannot find a free run folder name for {base} in {root}")


def check_writable(path: str | os.PathLike) -> None:
    """A folder can be made at ``path``: its nearest existing ancestor is a writable folder."""
    parent = Path(os.path.abspath(path))
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CnnbenchError(f"cannot make {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CnnbenchError(f"cannot write in {parent} (permission denied): choose another "
                            f"--run-dir or runs folder")


def check_run_dir(path: str | os.PathLike) -> Path:
    """``--run-dir`` must be new or empty, in a place we may write: an existing run is never
    overwritten. Nothing is made (``claim_run_dir`` makes it)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not failed_start(path):
        raise CnnbenchError(f"{path} already exists and is not empty: a run is never overwritten "
                            f"(use --resume {path} to continue it, or another --run-dir)")
    check_writable(path)
    return path


def failed_start(path: Path) -> bool:
    """A folder left by a run killed before its first checkpoint (its lock's process is gone):
    nothing in it can be resumed, so a new run may take it."""
    holder = lock_holder(path)
    return (holder is not None and not pid_alive(holder)
            and not (path / "checkpoints" / "last.pt").exists())


def claim_run_dir(path: str | os.PathLike) -> Path:
    """Make ``path`` (or take it if empty) and lock it; of two processes claiming one folder,
    exactly one wins, the other gets a one-line error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            check_run_dir(path)
    leftover = failed_start(path)
    lock_run(path)
    for p in path.iterdir() if leftover else ():
        if not p.name.startswith(LOCK):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    if any(not p.name.startswith(LOCK) for p in path.iterdir()):  # ours, or others' claims
        release_run(path)
        check_run_dir(path)
    return path


def lock_run(path: Path) -> None:
    """Create ``path/.lock`` holding our pid (atomically); a lock left by a process
    that no longer runs is taken over, a live one is a one-line error."""
    lock = Path(path) / LOCK
    # Written aside, then hard-linked into place (atomic, fails if it exists): a lock is never
    # seen without its pid.
    mine = lock.with_name(f"{LOCK}.tmp-{os.getpid()}-{threading.get_ident()}")
    mine.write_text(f"{os.getpid()}\n")
    try:
        for _ in range(2):
            try:
                os.link(mine, lock)
                return
            except FileExistsError:
                holder = lock_holder(path)
                if holder is None or pid_alive(holder):
                    raise CnnbenchError(f"{path} is in use by another run (process {holder}); "
                                        f"wait for it or choose another --run-dir") from None
                lock.unlink(missing_ok=True)  # stale: its process is gone
        raise CnnbenchError(f"cannot lock {path}: another process keeps taking it")
    finally:
        mine.unlink(missing_ok=True)


def lock_holder(path: Path) -> int | None:
    try:
        text = (Path(path) / LOCK).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def release_run(path: Path, abandon: bool = False) -> None:
    """Unlock ``path``; with ``abandon`` (the run failed before its first checkpoint, so it
    cannot be resumed) remove the folder, so that the same ``--run-dir`` works next time."""
    path = Path(path)
    if lock_holder(path) != os.getpid():
        return
    if abandon and not (path / "checkpoints" / "last.pt").is_file():
        shutil.rmtree(path, ignore_errors=True)
        return
    remove_stale_temporaries(path / "checkpoints")
    (path / LOCK).unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """``path`` holds ``text`` whole or not at all (written aside, then renamed into place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def reconcile_metrics(run_dir: str | os.PathLike, epoch: int) -> str | None:
    """Make ``metrics.jsonl`` agree with a checkpoint of ``epoch`` completed epochs: rows after
    it (a kill between checkpoint and log in an older version) and unreadable lines (a torn
    last line) go. Returns what was done, or None when the log was already consistent."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    kept, torn, ahead = [], 0, 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            torn += 1
            continue
        if row.get("epoch", 0) > epoch:
            ahead += 1
            continue
        kept.append(row)
    if not torn and not ahead:
        return None
    write_atomic(path, "".join(dumps(r) + "\n" for r in kept))
    done = ([f"dropped {ahead} row(s) after epoch {epoch} (the checkpoint's)"] if ahead else [])
    done += [f"removed {torn} unreadable (torn) line(s)"] if torn else []
    return f"{path}: {' and '.join(done)}"


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``metrics.jsonl``; an unreadable line is a one-line error naming it."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise CnnbenchError(f"{path} line {n} is not JSON (torn by a kill?); "
                                    f"--resume repairs it") from None
    return rows


def resolve_mode(mode: str | None, monitor: str) -> str:
    """``max`` or ``min``; ``auto`` minimises a loss or an error, as fastai's tracker does."""
    if mode in ("max", "min"):
        return mode
    return "min" if "loss" in monitor or "error" in monitor else "max"


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
    return sorted(str(p.parent) for p in Path(root).glob("*/sweep.yaml"))


def run_row(folder: Path, columns: list[str] = ()) -> dict:
    """A run folder's model, epochs, best validation and test value of its monitor, minutes,
    status and the ``columns`` of its configuration."""
    config, metrics, results, damage = {}, [], {}, None
    try:
        config = cfg.read_yaml(folder / "config.yaml")
        metrics = read_metrics(folder)
        results_path = folder / "results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    except CnnbenchError as exc:
        damage = str(exc).replace(str(folder) + "/", "")
    except (ValueError, OSError) as exc:
        damage = f"results.json unreadable ({type(exc).__name__})"
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
    from cnnbench.tasks import TASKS

    keys = list(cfg.trainer_keys())
    for name, path in TASKS.items():
        if path:
            keys += [k for k in cfg.schema(name) if k not in keys]
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
        if (path / "config.yaml").is_file():
            return path
    raise CnnbenchError(f"no run {str(name)!r} (a folder with config.yaml, as a path or under "
                        f"{root})")


def compare_runs(names: list[str], root: str | os.PathLike = "runs") -> dict:
    """Runs side by side: the configuration keys whose values differ between them, the fields
    of their ``environment.json`` that differ (``PROVENANCE``), each run's metrics, and its learning curves (training loss and the monitored validation metric per
    epoch, from ``metrics.jsonl``)."""
    if len(names) < 2:
        raise CnnbenchError("--compare takes two or more runs")
    folders = [find_run(n, root) for n in names]
    defaults = cfg.defaults()  # keys added since a run
    configs = [{**defaults, **cfg.read_yaml(f / "config.yaml")} for f in folders]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differ = [k for k in keys if any(c.get(k) != configs[0].get(k) for c in configs)]
    environments = [read_environment(f) for f in folders]
    env_differ = [k for k in PROVENANCE
                  if any(e.get(k) != environments[0].get(k) for e in environments)]
    runs = []
    for folder, config, env in zip(folders, configs, environments):
        row = run_row(folder)
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


def read_environment(run_dir: str | os.PathLike) -> dict:
    """A run's ``environment.json``: {} for a run made before it was written, or unreadable."""
    try:
        data = json.loads((Path(run_dir) / ENVIRONMENT).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _looks_like_run(folder: Path) -> bool:
    if (folder / "sweep.yaml").is_file():
        return False
    return any((folder / name).exists() for name in ("config.yaml", "checkpoints", LOCK))


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
    if not (folder / "config.yaml").is_file():
        return "damaged: no config.yaml"
    if not (folder / "checkpoints" / "last.pt").is_file():
        return "damaged: no checkpoint (stopped before its first epoch ended)"
    return "interrupted"


def _monitor(task: str | None) -> str:
    try:
        return get_task(task or "classification").monitor
    except CnnbenchError:
        return "acc"
