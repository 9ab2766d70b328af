"""The disk cache for data made from local files (decoded image folders, resized CIFAR-10).

Entries live under ``$CNNBENCH_CACHE`` (default ``~/.cache/cnnbench``), one folder per kind.
An entry's name is a hash of everything that decides its content (the files' names, sizes and
modification times, the target size and channels), so a changed file is a miss, never a stale
hit. Entries are written atomically (``files.save_torch``: a temporary file, then a rename) and
read with ``weights_only=True``; a damaged entry is a miss. Deleting the folder is always safe.
An entry that cannot be written (a full or read-only disk) only costs speed: one warning, and
the run goes on with the data in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from cnnbench.errors import say
from cnnbench.files import WriteFailed, save_torch

DEFAULT_ROOT = "~/.cache/cnnbench"


def cache_dir(kind: str) -> Path:
    return Path(os.environ.get("CNNBENCH_CACHE") or DEFAULT_ROOT).expanduser() / kind


def digest(value) -> str:
    """A short stable hash of a JSON-able value."""
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def file_stamps(paths: list[Path], root: Path) -> str:
    """A hash of every file's name under ``root``, size and modification time (in ns): what a
    cache key needs to notice an added, removed or edited file."""
    stamps = []
    for path in paths:
        st = path.stat()
        stamps.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return stamps_digest(stamps)


def stamps_digest(stamps) -> str:
    """The hash of ``(name, size, mtime_ns)`` rows (a joined string: 10,000 rows in ms)."""
    text = "\n".join(f"{name}\t{size}\t{mtime}" for name, size, mtime in stamps)
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()


def entry_path(kind: str, source: Path, key) -> Path:
    """``<cache>/<kind>/<hash of the source path>-<hash of key>.pt``."""
    return cache_dir(kind) / f"{digest(str(source.resolve()))}-{digest(key)}.pt"


def load_entry(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        # mmap: the pages are read once, straight into the tensors that index them
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a damaged entry (a full disk, an old format) is made again
        return None


_warned = False


def store(entry: dict, path: Path) -> bool:
    """Write ``entry`` atomically; when it cannot be written, warn (once per process) and go on:
    False."""
    global _warned
    try:
        save_torch(entry, path)
        return True
    except WriteFailed as exc:
        if not _warned:
            _warned = True
            say(f"warning: {exc}; the data are not cached (this costs only speed: they are "
                f"decoded again next time; set CNNBENCH_CACHE to a folder with room)")
        return False


def save_entry(entry: dict, path: Path) -> None:
    """Write ``entry`` (:func:`store`) and drop older entries of the same source (stale keys)."""
    if not store(entry, path):
        return
    source = path.name.partition("-")[0]
    for old in path.parent.glob(f"{source}-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
