"""Run folders: naming and claiming them, locking them, reading and repairing their metrics.

A run folder holds (the names are ``files.RunLayout``'s)::

    .lock                  the pid of the process training in it (one at a time)
    config.yaml            the resolved configuration
    environment.json       where it came from: versions, git commit, host, command, times
                           (``provenance``)
    metrics.jsonl          one JSON object per epoch, appended after that epoch's checkpoint
    tensorboard/           event files (scalars, hyper-parameters, graph, images)
    checkpoints/last.pt    written atomically every epoch (and mid-epoch when interrupted);
                           best.pt when the monitor improves
    results.json           test metrics and timing, written at the end

A sweep's folder (``cnnbench.sweep``) holds run folders and its ``sweep.yaml``
(``files.SWEEP_PLAN``). Every file is written through :mod:`cnnbench.files`.

The order of writes keeps a folder consistent whatever stops the process: the checkpoint is
renamed into place before the epoch's row is appended, so the log never runs ahead of
``last.pt``; ``last.pt`` carries that row, so a resume writes it back if a kill kept it out of
the log, and drops rows after the checkpoint's epoch and a torn last line. ``best.pt`` is
written after ``last.pt``; a resume rewrites it if ``last.pt`` says it should hold that epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

from cnnbench.checkpoints import pid_alive, remove_stale_temporaries
from cnnbench.errors import CnnbenchError
from cnnbench.files import RunLayout, check_folder, guarded, write_text
from cnnbench.strict_json import dumps


# The fields of environment.json that say what made a run, set side by side by ``--compare``
# (not the times, which always differ).
PROVENANCE = ("cnnbench", "git_commit", "git_dirty", "python", "torch", "torchvision", "cuda",
              "cudnn", "device", "device_name", "host", "command")


def new_run_dir(model: str, root: str | os.PathLike = "runs") -> Path:
    """``root/<model>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that name is taken;
    made (``mkdir`` is atomic: the name is ours) and locked."""
    with guarded(root):
        Path(root).mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = new_run_name(model, root, n)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        lock_run(path)
        return path
    raise CnnbenchError(f"cannot find a free run folder name for {model} in {root}")


def new_run_name(model: str, root: str | os.PathLike = "runs", n: int = 1) -> Path:
    """``root/<model>-<YYYYmmdd-HHMMSS>``, the ``n``-th try ``-n`` after it."""
    base = f"{model.replace(':', '-').replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(root) / (base if n == 1 else f"{base}-{n}")


def check_run_dir(path: str | os.PathLike) -> Path:
    """``--run-dir`` must be new or empty, in a place we may write: an existing run is never
    overwritten. Nothing is made (``claim_run_dir`` makes it)."""
    path = Path(path)
    if os.path.lexists(path) and not path.exists():
        raise CnnbenchError(f"{path} is a link to nothing (dangling, or looping): choose another "
                            f"--run-dir")
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not failed_start(path):
        raise CnnbenchError(f"{path} already exists and is not empty: a run is never overwritten "
                            f"(use --resume {path} to continue it, or another --run-dir)")
    check_folder(path, "--run-dir")
    return path


def failed_start(path: Path) -> bool:
    """A folder left by a run killed before its first checkpoint (its lock's process is gone):
    nothing in it can be resumed, so a new run may take it."""
    holder = lock_holder(path)
    return (holder is not None and not pid_alive(holder)
            and not RunLayout(path).last.exists())


def claim_run_dir(path: str | os.PathLike) -> Path:
    """Make ``path`` (or take it if empty) and lock it; of two processes claiming one folder,
    exactly one wins, the other gets a one-line error."""
    path = Path(path)
    with guarded(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            check_run_dir(path)
    leftover = failed_start(path)
    lock_run(path)
    for p in path.iterdir() if leftover else ():
        if not p.name.startswith(RunLayout.LOCK):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    if any(not p.name.startswith(RunLayout.LOCK) for p in path.iterdir()):  # ours, or others' claims
        release_run(path)
        check_run_dir(path)
    return path


def lock_run(path: Path) -> None:
    """Create ``path/.lock`` holding our pid (atomically); a lock left by a process
    that no longer runs is taken over, a live one is a one-line error."""
    lock = RunLayout(path).lock
    # Written aside, then hard-linked into place (atomic, fails if it exists): a lock is never
    # seen without its pid.
    mine = lock.with_name(f"{RunLayout.LOCK}.tmp-{os.getpid()}-{threading.get_ident()}")
    with guarded(lock):
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
        text = RunLayout(path).lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def release_run(path: Path, abandon: bool = False) -> None:
    """Unlock ``path``; with ``abandon`` (the run failed before its first checkpoint, so it
    cannot be resumed) remove the folder, so that the same ``--run-dir`` works next time."""
    path = Path(path)
    if lock_holder(path) != os.getpid():
        return
    if abandon and not RunLayout(path).last.is_file():
        shutil.rmtree(path, ignore_errors=True)
        return
    remove_stale_temporaries(RunLayout(path).checkpoints)
    RunLayout(path).lock.unlink(missing_ok=True)


def reconcile_metrics(run_dir: str | os.PathLike, epoch: int,
                      row: dict | None = None) -> str | None:
    """Make ``metrics.jsonl`` agree with a checkpoint of ``epoch`` completed epochs: rows after
    it (a kill between checkpoint and log in an older version) and unreadable lines (a torn
    last line) go, and the checkpoint's own ``row`` (that epoch's, which ``last.pt`` carries)
    is written back if a kill after the checkpoint kept it out of the log. Returns what was
    done, or None when the log was already consistent."""
    path = RunLayout(run_dir).metrics
    if path.exists() and not path.is_file():
        raise CnnbenchError(f"{path} is not a file: move it away to resume {run_dir}")
    kept, torn, ahead = [], 0, 0
    for line in (path.read_text(errors="replace").splitlines() if path.is_file() else []):
        if not line.strip():
            continue
        logged = _row(line)
        if logged is None:
            torn += 1
        elif logged["epoch"] > epoch:
            ahead += 1
        else:
            kept.append(logged)
    restore = (isinstance(row, dict) and row.get("epoch") == epoch and epoch > 0
               and all(r["epoch"] != epoch for r in kept))
    if not torn and not ahead and not restore:
        return None
    kept += [row] if restore else []
    write_text(path, "".join(dumps(r) + "\n" for r in kept))
    done = ([f"dropped {ahead} row(s) after epoch {epoch} (the checkpoint's)"] if ahead else [])
    done += [f"removed {torn} unreadable (torn) line(s)"] if torn else []
    done += [f"wrote back epoch {epoch}'s row from the checkpoint"] if restore else []
    return f"{path}: {' and '.join(done)}"


def _row(line: str) -> dict | None:
    """A log line as a row (a JSON object of numbers with an integer ``epoch``), or None."""
    row = _json(line)
    ok = (isinstance(row, dict) and type(row.get("epoch")) is int
          and all(v is None or type(v) in (int, float) for v in row.values()))
    return row if ok else None


def _json(line: str):
    try:
        return json.loads(line)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read
        return None


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``metrics.jsonl``; an unreadable line is a one-line error naming it."""
    path = RunLayout(run_dir).metrics
    if not path.is_file():
        return []
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise CnnbenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            row = _row(line)
            if row is None:
                what = "a metrics row" if _json(line) else "JSON (torn by a kill?)"
                raise CnnbenchError(f"{path} line {n} is not {what}; --resume repairs it")
            rows.append(row)
    return rows


def monitor_name(monitor: str) -> str:
    """The metric ``monitor`` names, without a ``val_`` prefix: best.pt follows the validation
    figure anyway (``val_ema_acc`` and ``ema_acc`` are one)."""
    return monitor.removeprefix("val_")


def resolve_mode(mode: str | None, monitor: str) -> str:
    """``max`` or ``min``; ``auto`` minimises a loss or an error, as fastai's tracker does."""
    if mode in ("max", "min"):
        return mode
    return "min" if "loss" in monitor or "error" in monitor else "max"


def read_environment(run_dir: str | os.PathLike) -> dict:
    """A run's ``environment.json``: {} for a run made before it was written, or unreadable."""
    try:
        data = json.loads(RunLayout(run_dir).environment.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
