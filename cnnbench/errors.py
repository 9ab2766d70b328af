"""The one exception type for mistakes a user can make.

The CLI prints its message as a single line on stderr and exits with code 2.
"""

import difflib
import os
import sys
import tempfile
import traceback
from pathlib import Path

# Set by ``--nproc``'s launcher (distributed.launch) for its processes: a folder where a failing
# process leaves its one line, so that N processes give the user one line, whichever fails first.
LAUNCHER_ERRORS = "CNNBENCH_LAUNCHER_ERRORS"


class CnnbenchError(Exception):
    """A problem the user can fix: bad name, bad size, missing data, bad file."""


def nearest(word: str, choices, n: int = 3) -> list[str]:
    """The closest spellings of ``word`` among ``choices`` (for 'did you mean')."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.4)
    if not close:
        close = [c for c in choices if word.lower() in c.lower() or c.lower() in word.lower()][:n]
    return close


def did_you_mean(word: str, choices) -> str:
    close = nearest(word, choices)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def shown(value, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters: a message stays one short line."""
    text = repr(value)
    return text if len(text) <= width else f"{text[:width - 3]}..."


def say(message: str) -> None:
    """One line on stderr (the CLI's stdout may carry --json)."""
    sys.stderr.write(message + "\n")


def report(message: str) -> None:
    """The one line of an error: on stderr; under ``--nproc``, left for the launcher to print
    (one line for all processes, also when a process other than rank 0 fails alone); under a
    plain ``torchrun``, printed by rank 0 only."""
    folder, rank = os.environ.get(LAUNCHER_ERRORS), os.environ.get("RANK", "0")
    if folder and Path(folder).is_dir():
        path = Path(folder) / f"rank{rank}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(message)
        os.replace(tmp, path)  # the launcher never reads half a line
    elif rank == "0":
        sys.stderr.write(f"error: {message}\n")


def reported(folder: str | Path) -> dict[int, str]:
    """The lines ``report`` left in ``folder``, by rank."""
    return {int(p.name[4:]): p.read_text() for p in Path(folder).glob("rank*")
            if p.name[4:].isdigit()}


def unforeseen(exc: BaseException) -> str:
    """The one line for an error no check foresaw (a bug): its kind and first line, and where its
    traceback was saved for a bug report (a new file in the temporary folder)."""
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    text = "".join(traceback.format_exception(exc))
    try:
        fd, name = tempfile.mkstemp(prefix="cnnbench-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"cnnbench {' '.join(sys.argv[1:])}\n\n{text}")
        where = f"the traceback is in {name}"
    except OSError:
        where = "its traceback could not be saved (the temporary folder is not writable)"
    return f"unexpected error ({what}); {where}: please attach it to a bug report"
