"""The one exception type for mistakes a user can make.

The CLI prints its message as a single line on stderr and exits with code 2.
"""

import difflib
import os
import sys
import tempfile
import traceback


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
