"""What a launcher runs (:class:`Job`), what every launcher does (:class:`Launcher`), and a
stop asked of the process that launched them (:class:`Stop`)."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cnnbench.errors import CnnbenchError


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
    nnodes: int | None = None  # each job one training over this many nodes (``across``)

    def check(self) -> None:
        """Can jobs run here at all? A one-line error otherwise."""

    def across(self, nnodes: int) -> None:
        """Make each job one training over ``nnodes`` nodes (its tasks, one per node)."""
        raise CnnbenchError(f"--launcher {self.name} runs a training on this machine: "
                            f"--nnodes {nnodes} goes with --launcher slurm (or --node-rank "
                            f"and --rdzv, the same command on each node)")

    def launch(self, jobs: list[Job], folder: Path, say, stop=None,
               envs: list[dict] | None = None) -> list[tuple[str, str]]:
        """Run ``jobs``; returns (name, last line) of each that failed."""
        raise NotImplementedError


class Stop:
    """Ctrl-C/SIGTERM in the process that launched the jobs (the trainer handles them during a
    run): the first stops the launch at the next point where it can stop cleanly, a second at
    once."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}
        self.forward = lambda signum: None  # --parallel: pass the signal to the runs

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.request)
                             for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def request(self, signum: int, frame=None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.forward(signum)
