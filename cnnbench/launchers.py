"""Where a sweep's jobs run (`cnnbench sweep --launcher local|slurm`), apart from what they are.

Hydra's split: the sweeper (``cnnbench.sweep``'s grid, ``cnnbench.search``'s Optuna study)
decides what to run and makes :class:`Job`s; a launcher, chosen by name from ``LAUNCHERS``,
runs them and says which failed. A job is a picklable callable (``call``) that does its work
in whatever process runs it, plus the command line that does the same work as a process here.

* ``local``: in this process one after another, or ``--parallel N`` processes at once (one GPU
  each on CUDA: ``envs``), output in ``DIR/logs/NAME.log``.
* ``slurm``: a Slurm job array through ``submitit`` (``cnnbench.slurm``).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.inputs import parse_assignments


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


class LocalLauncher(Launcher):
    """This machine: in this process (``parallel`` 1) or ``parallel`` processes at once."""

    name = "local"

    def __init__(self, parallel: int = 1, options: dict | None = None):
        if options:
            raise CnnbenchError("--slurm options go with --launcher slurm")
        self.parallel = parallel

    def launch(self, jobs, folder, say, stop=None, envs=None):
        if self.parallel == 1:
            failures = []
            for job in jobs:
                if stop is not None and stop.signum is not None:
                    break
                try:
                    job.call()
                except CnnbenchError as exc:
                    failures.append((job.name, str(exc)))
            return failures
        return self._processes(jobs, Path(folder), say, stop, envs)

    def _processes(self, jobs, folder, say, stop, envs):
        (folder / "logs").mkdir(exist_ok=True)
        queue, running, free, failures = list(jobs), {}, list(range(self.parallel)), []
        if stop is not None:
            stop.forward = lambda signum: [p.send_signal(signum) for p, *_ in running.values()
                                           if p.poll() is None]
        while queue or running:
            while queue and free and (stop is None or stop.signum is None):
                job, slot = queue.pop(0), free.pop(0)
                log = folder / "logs" / f"{job.name}.log"
                with open(log, "ab") as out:
                    proc = subprocess.Popen(job.command, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(envs[slot] if envs else {})},
                                            start_new_session=True)
                running[proc.pid] = (proc, slot, job, log)
                say(f"{job.name}: process {proc.pid} ({slot + 1} of {self.parallel}), log {log}")
            if stop is not None and stop.signum is not None:
                queue.clear()
            time.sleep(0.1)
            for pid, (proc, slot, job, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[pid]
                free.append(slot)
                if proc.returncode and not (stop is not None and stop.signum is not None
                                            and proc.returncode in (130, 143)):
                    failures.append((job.name, last_line(log) or f"exit {proc.returncode}"))
        return failures


def _slurm(parallel: int, options: dict) -> Launcher:
    try:
        from cnnbench.slurm import SlurmLauncher  # submitit: an optional extra, only for Slurm
    except ModuleNotFoundError as exc:
        raise CnnbenchError(f"--launcher slurm needs {exc.name}: pip install "
                            f"'cnnbench[sweep]'") from None
    return SlurmLauncher(parallel, options)


LAUNCHERS = {"local": LocalLauncher, "slurm": _slurm}


def parse_slurm_options(text: str | None) -> dict:
    """``partition=gpu,gpus_per_node=1,time=60`` -> submitit's SlurmExecutor parameters."""
    items = [part for part in (text or "").split(",") if part.strip()]
    return parse_assignments(items, "--slurm", "partition=gpu,time=60")


def get_launcher(name: str, parallel: int = 1, options: str | None = None) -> Launcher:
    """The launcher called ``name``, checked (Slurm reachable) before any folder is made."""
    if name not in LAUNCHERS:
        raise CnnbenchError(f"unknown launcher {name!r}: use {' or '.join(LAUNCHERS)}"
                            f"{did_you_mean(name, LAUNCHERS)}")
    if parallel < 1:
        raise CnnbenchError("--parallel must be >= 1")
    launcher = LAUNCHERS[name](parallel, parse_slurm_options(options))
    launcher.check()
    return launcher
