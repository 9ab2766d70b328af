"""Every file cnnbench writes, and the names a run folder gives them.

Writes (:func:`write_text`, :func:`write_json`, :func:`write_yaml`, :func:`save_torch`,
:func:`write_with` for a library's own writer such as ``savefig``, :func:`append_line` for
``metrics.jsonl``) share one discipline:

* whole or not at all: written aside (``.NAME.tmp-PID`` in the same folder), then renamed into
  place, so a reader never sees half a file and a failure leaves the old one as it was;
* only onto a regular file or a new name: ``--plot /dev/null`` as root must not replace the
  device node with a PNG (a link is followed: its target is what gets replaced);
* a failure is one line naming the path and the cause (:class:`WriteFailed`, a
  ``CnnbenchError``: exit code 2): a full disk, a quota, the file size limit (``ulimit -f``:
  SIGXFSZ is ignored so that the write fails with EFBIG instead of killing the process), a
  read-only file system, a permission. ``torch.save``'s ``[enforce fail at
  inline_container.cc]`` carries no cause; the file object it writes through records it.

:func:`check_file` and :func:`check_folder` refuse an output that cannot be written before any
work is done; :func:`guarded` names the path for a write that is not a file's content (a folder,
a lock, a log a child process fills). :func:`report` leaves a failing process's one line for the
``--nproc`` launcher. TensorBoard's event files are the library's own.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import yaml

from cnnbench.errors import CnnbenchError
from cnnbench.strict_json import dumps

# Set by ``--nproc``'s launcher (distributed.launch) for its processes: a folder where a failing
# process leaves its one line, so that N processes give the user one line, whichever fails first.
LAUNCHER_ERRORS = "CNNBENCH_LAUNCHER_ERRORS"

CAUSES = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file size limit is reached (ulimit -f)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "no such folder",
    errno.ENOTDIR: "a file stands where a folder belongs",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "too many levels of links",
}
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class RunLayout:
    """Where a run folder keeps each file (see :mod:`cnnbench.training.runs`)."""

    CONFIG = "config.yaml"  # the resolved configuration
    METRICS = "metrics.jsonl"  # one JSON object per epoch
    RESULTS = "results.json"  # test metrics and timing, at the end
    CHECKPOINTS = "checkpoints"  # last.pt every epoch, best.pt when the monitor improves
    TENSORBOARD = "tensorboard"
    LOCK = ".lock"  # the pid of the process training in it
    EVAL = "eval"  # `cnnbench eval`'s pictures
    ENVIRONMENT = "environment.json"  # what made the run (training/provenance.py)
    CHECKPOINT_NAMES = ("best", "last")

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    @property
    def results(self) -> Path:
        return self.root / self.RESULTS

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/NAME.pt`` (``best`` or ``last``)."""
        return self.checkpoints / f"{name}.pt"

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def tensorboard(self) -> Path:
        return self.root / self.TENSORBOARD

    @property
    def lock(self) -> Path:
        return self.root / self.LOCK

    @property
    def eval(self) -> Path:
        return self.root / self.EVAL

    @property
    def environment(self) -> Path:
        return self.root / self.ENVIRONMENT


SWEEP_PLAN = "sweep.yaml"  # a sweep folder's plan, beside its run folders


class WriteFailed(CnnbenchError):
    """A file that could not be written: ``path``, and ``errno`` when the system said why."""

    def __init__(self, path, cause: str, code: int | None = None, option: str | None = None):
        super().__init__(f"cannot write {option + ' ' if option else ''}{path}: {cause}")
        self.path, self.cause, self.errno = Path(path), cause, code

    @property
    def out_of_space(self) -> bool:
        return self.errno in OUT_OF_SPACE


def cause(exc: OSError) -> str:
    return CAUSES.get(exc.errno) or (exc.strerror or type(exc).__name__).lower()


def failed(path, exc: OSError) -> WriteFailed:
    """``exc`` as the one line for writing ``path`` (or the missing folder it names)."""
    return WriteFailed(exc.filename if exc.filename and exc.errno in (errno.ENOTDIR, errno.ENOENT)
                       else path, cause(exc), exc.errno)


_size_signal_ignored = False


def _no_size_signal() -> None:
    """Past ``ulimit -f`` a write raises SIGXFSZ, which kills the process without a word;
    ignored, the write fails with EFBIG instead (inherited by worker processes)."""
    global _size_signal_ignored
    if not _size_signal_ignored and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _size_signal_ignored = True


def check_file(path: str | os.PathLike, option: str | None = None) -> Path:
    """Before any work: ``path`` can be written as a file (its folder exists and takes files;
    it is new or a regular file). Returns the path to write (a link's target)."""
    target = _target(path, option)
    what = f"{option} {path}" if option else str(path)
    folder = target.parent
    if not folder.is_dir():
        raise CnnbenchError(f"cannot write {what}: no folder {folder}")
    if not _writable(folder):
        raise CnnbenchError(f"cannot write {what}: {_why_not(folder)}")
    return target


def _target(path: str | os.PathLike, option: str | None = None) -> Path:
    """The file a write of ``path`` replaces (a link's target), refused unless it is new or a
    regular file."""
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    try:
        mode = os.stat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return target
    except OSError as exc:
        raise WriteFailed(path, cause(exc), exc.errno, option) from None
    if stat.S_ISDIR(mode):
        raise WriteFailed(path, "it is a folder", errno.EISDIR, option)
    if not stat.S_ISREG(mode):
        raise WriteFailed(path, f"it is a {_kind(mode)}, not a regular file (cnnbench writes "
                          f"files whole, by renaming: give a file name)", None, option)
    return target


def check_folder(path: str | os.PathLike, option: str | None = None) -> None:
    """Before any work: a folder can be made (or written in) at ``path``: its nearest existing
    ancestor is a folder we may write in."""
    what = f"{option} {path}" if option else str(path)
    parent = Path(os.path.abspath(path))
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise CnnbenchError(f"cannot write {what}: {parent} is a file, not a folder")
    if not _writable(parent):
        raise CnnbenchError(f"cannot write in {parent}: {_why_not(parent)}")


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK) and not _read_only(folder)


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)  # root's access() ignores it
    except OSError:
        return False


def _why_not(folder: Path) -> str:
    return CAUSES[errno.EROFS] if _read_only(folder) else CAUSES[errno.EACCES]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


class _Recording(io.FileIO):
    """A file whose ``write`` writes everything (a raw write may stop short when the disk
    fills) and keeps the first ``OSError``: ``torch.save`` turns that error into a
    ``RuntimeError`` without the cause."""

    error: OSError | None = None

    def write(self, data) -> int:
        view, done = memoryview(data).cast("B"), 0
        try:
            while done < len(view):
                wrote = super().write(view[done:])
                if not wrote:
                    raise OSError(errno.EIO, "the file took no more bytes", self.name)
                done += wrote
        except OSError as exc:
            self.error = self.error or exc
            raise
        return done


@contextlib.contextmanager
def guarded(path: str | os.PathLike):
    """An ``OSError`` in the block (making a folder, a lock file) as a :class:`WriteFailed`
    naming ``path``."""
    _no_size_signal()
    try:
        yield
    except OSError as exc:
        raise failed(path, exc) from None


def write_with(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """``write(f)`` into a binary file that becomes ``path`` once whole (see the module's
    notes); any failure is a :class:`WriteFailed` and leaves ``path`` as it was."""
    _no_size_signal()
    path = _target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise failed(path.parent, exc) from None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # checkpoints.remove_stale_temporaries
    file = None
    try:
        tmp.unlink(missing_ok=True)
        file = _Recording(tmp, "xb")
        write(file)
        file.close()
        _target(path)  # still a regular file or a new name, just before the rename
        os.replace(tmp, path)
    except OSError as exc:
        raise failed(path, exc) from None
    except RuntimeError:  # torch.save's "[enforce fail at inline_container.cc...]"
        if file is not None and file.error is not None:
            raise failed(path, file.error) from None
        raise
    finally:
        if file is not None and not file.closed:
            with contextlib.suppress(OSError):
                file.close()
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_with(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data, indent: int | None = 2) -> Path:
    """Strict JSON (``null`` for NaN and infinities), one trailing newline."""
    return write_text(path, dumps(data, indent=indent) + "\n")


def write_yaml(path: str | os.PathLike, data) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def save_torch(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` (checkpoints, the decode cache)."""
    import torch  # start-up: the CLI imports this module before it knows it needs torch

    return write_with(path, lambda f: torch.save(obj, f))


def append_line(path: str | os.PathLike, line: str) -> None:
    """One line appended (``metrics.jsonl``: a log grows, it is not replaced); a failure is a
    :class:`WriteFailed`."""
    _no_size_signal()
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as exc:
        raise failed(path, exc) from None


def report(message: str) -> None:
    """The one line of an error: on stderr; under ``--nproc``, left for the launcher to print
    (one line for all processes, also when a process other than rank 0 fails alone); under a
    plain ``torchrun``, printed by rank 0 only."""
    folder, rank = os.environ.get(LAUNCHER_ERRORS), os.environ.get("RANK", "0")
    if folder and Path(folder).is_dir():
        try:
            write_text(Path(folder) / f"rank{rank}", message)  # never half a line
            return
        except CnnbenchError:
            rank = "0"  # the launcher's folder cannot take it: say it here
    if rank == "0":
        sys.stderr.write(f"error: {message}\n")


def reported(folder: str | os.PathLike) -> dict[int, str]:
    """The lines ``report`` left in ``folder``, by rank."""
    return {int(p.name[4:]): p.read_text() for p in Path(folder).glob("rank*")
            if p.name[4:].isdigit()}
