"""What a launcher runs (:class:`Job`) and what every launcher does (:class:`Launcher`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Job:
    name: str
    call: Callable[[], None]  # raises CnnbenchError (or another exception) when it fails
    command: list[str] = field(default_factory=list)


def last_line(path: Path) -> str:
    """The last non-blank line of a log (what a failed job said last)."""
    try:
        lines = [line for line in Path(path).read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


class Launcher:
    """Runs a sweep's jobs; ``check`` refuses (one line) before any folder is made."""

    name = ""

    def check(self) -> None:
        """Can jobs run here at all? A one-line error otherwise."""

    def launch(self, jobs: list[Job], folder: Path, say, stop=None,
               envs: list[dict] | None = None) -> list[tuple[str, str]]:
        """Run ``jobs``; returns (name, last line) of each that failed."""
        raise NotImplementedError
