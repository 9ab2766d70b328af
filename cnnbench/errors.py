"""The one exception type for mistakes a user can make.

The CLI prints its message as a single line on stderr and exits with code 2.
"""

import difflib
import sys


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


def say(message: str) -> None:
    """One line on stderr (the CLI's stdout may carry --json)."""
    sys.stderr.write(message + "\n")
