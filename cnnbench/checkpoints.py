"""Weight files: read safely (``weights_only=True``, one clear error for a bad file), written
atomically."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnbench.errors import CnnbenchError


def read_checkpoint(path: str | os.PathLike):
    """The object saved in ``path`` (tensors, dicts, numbers only); a missing or damaged file
    is a one-line ``CnnbenchError``."""
    path = Path(path)
    if not path.is_file():
        raise CnnbenchError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged zip/pickle
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CnnbenchError(f"cannot read checkpoint {path}: it is truncated or damaged, or not "
                            f"a PyTorch weights file ({reason})") from None


def save_checkpoint(state: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file.
    On any failure (a full disk, Ctrl-C) the temporary file goes and ``path`` stays as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``.NAME.tmp-PID`` files in ``folder`` whose writer (PID) is no longer running."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A trainer checkpoint (``last.pt``/``best.pt``): model, optimizer, epoch and the rest."""
    state = read_checkpoint(path)
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch"} <= set(state):
        raise CnnbenchError(f"{path} is not a cnnbench checkpoint")
    return state
