"""Reading weight files safely: ``weights_only=True`` and one clear error for a bad file."""

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
