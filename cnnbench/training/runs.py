"""Run folders: naming and claiming them, locking them, reading and repairing their metrics.

A run folder holds (the names are ``files.RunLayout``'s)::

    .lock                  the pid of the process training in it (one at a time)
    config.yaml            the resolved configuration
    metrics.jsonl          one JSON object per epoch, appended after that epoch's checkpoint
    tensorboard/           event files (scalars, hyper-parameters, graph, images)
    checkpoints/last.pt    written atomically every epoch (and mid-epoch when interrupted);
                           best.pt when the monitor improves
    results.json           test metrics and timing, written at the end

A sweep's folder (``cnnbench.sweep``) holds run folders and its ``sweep.yaml``
(``files.SWEEP_PLAN``). Every file is written through :mod:`cnnbench.files`.

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

from cnnbench.checkpoints import pid_alive, remove_stale_temporaries
from cnnbench.errors import CnnbenchError
from cnnbench.files import RunLayout, check_folder, guarded, write_text
from cnnbench.strict_json import dumps


def new_run_dir(model: str, root: str | os.PathLike = "runs") -> Path:
    """``root/<model>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that name is taken;
    made (``mkdir`` is atomic: the name is ours) and locked."""
    base = f"{model.replace(':', '-').replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    with guarded(root):
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


def check_run_dir(path: str | os.PathLike) -> Path:
    """``--run-dir`` must be new or empty, in a place we may write: an existing run is never
    overwritten. Nothing is made (``claim_run_dir`` makes it)."""
    path = Path(path)
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


def reconcile_metrics(run_dir: str | os.PathLike, epoch: int) -> str | None:
    """Make ``metrics.jsonl`` agree with a checkpoint of ``epoch`` completed epochs: rows after
    it (a kill between checkpoint and log in an older version) and unreadable lines (a torn
    last line) go. Returns what was done, or None when the log was already consistent."""
    path = RunLayout(run_dir).metrics
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
    write_text(path, "".join(dumps(r) + "\n" for r in kept))
    done = ([f"dropped {ahead} row(s) after epoch {epoch} (the checkpoint's)"] if ahead else [])
    done += [f"removed {torn} unreadable (torn) line(s)"] if torn else []
    return f"{path}: {' and '.join(done)}"


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``metrics.jsonl``; an unreadable line is a one-line error naming it."""
    path = RunLayout(run_dir).metrics
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
