"""Where a sweep's jobs run (`cnnbench sweep --launcher local|slurm`), apart from what they are.

Hydra's split: the sweeper (``cnnbench.sweep``'s grid, ``cnnbench.search``'s Optuna study)
decides what to run and makes :class:`Job`s; a launcher, chosen by name from ``LAUNCHERS``,
runs them and says which failed. A job is a picklable callable (``call``) that does its work
in whatever process runs it, plus the command line that does the same work as a process here.

* ``local``: in this process one after another, or ``--parallel N`` processes at once (one GPU
  each on CUDA: ``envs``), output in ``DIR/logs/NAME.log``.
* ``slurm``: a Slurm job array through ``submitit`` (``launchers/slurm.py``); a job may span
  nodes (``across``): one training over them, ``cnnbench train --launcher slurm --nnodes N``.
"""

from __future__ import annotations

from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.keys import parse_assignments
from cnnbench.launchers.base import Job, Launcher, Stop, last_line
from cnnbench.launchers.local import LocalLauncher

__all__ = ["Job", "Launcher", "LocalLauncher", "LAUNCHERS", "Stop", "get_launcher", "last_line"]


def _slurm(parallel: int, options: dict) -> Launcher:
    try:
        from cnnbench.launchers.slurm import SlurmLauncher  # submitit: an optional extra, only for Slurm
    except ModuleNotFoundError as exc:
        raise CnnbenchError(f"--launcher slurm needs {exc.name}: pip install "
                            f"'cnnbench[sweep]'") from None
    return SlurmLauncher(parallel, options)


LAUNCHERS = {"local": LocalLauncher, "slurm": _slurm}


def parse_slurm_options(text: str | None) -> dict:
    """``partition=gpu,gpus_per_node=1,time=60`` -> submitit's SlurmExecutor parameters."""
    items = [part for part in (text or "").split(",") if part.strip()]
    return parse_assignments(items, "--slurm", "partition=gpu,time=60")


def get_launcher(name: str, parallel: int = 1, options: str | None = None,
                 nnodes: int | None = None) -> Launcher:
    """The launcher called ``name``, checked (Slurm reachable) before any folder is made;
    ``nnodes``: each of its jobs one training across that many nodes."""
    if name not in LAUNCHERS:
        raise CnnbenchError(f"unknown launcher {name!r}: use {' or '.join(LAUNCHERS)}"
                            f"{did_you_mean(name, LAUNCHERS)}")
    if parallel < 1:
        raise CnnbenchError("--parallel must be >= 1")
    launcher = LAUNCHERS[name](parallel, parse_slurm_options(options))
    if nnodes is not None:
        launcher.across(nnodes)
    launcher.check()
    return launcher
