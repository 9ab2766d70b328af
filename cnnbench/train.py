"""What ``cnnbench train`` and ``cnnbench lr-find`` do, for Python callers too: resolve the
recipe (``recipe.resolve``), claim a run folder and fit a trainer (``training/build.py``), or
continue a run from its folder, or launch ``--nproc`` processes.

A new run that fails before its first checkpoint leaves no folder; a resumed run is locked and
its ``metrics.jsonl`` reconciled with ``last.pt`` before it goes on.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from cnnbench import recipe
from cnnbench.checkpoints import load_checkpoint
from cnnbench.errors import CnnbenchError, say
from cnnbench.files import RunLayout, check_folder
from cnnbench.keys import read_yaml
from cnnbench.training import distributed
from cnnbench.training import lr_find as finder
from cnnbench.training.build import build_trainer
from cnnbench.training.interrupt import resource_errors
from cnnbench.training.loop import Callback, Trainer
from cnnbench.training.runs import (check_run_dir, claim_run_dir, lock_run, new_run_dir,
                                    new_run_name, reconcile_metrics, release_run)

# Keys that may change when a run is resumed; the rest would not fit the checkpoint.
RESUMABLE_KEYS = {"epochs", "device", "amp", "compile", "log_graph", "log_images", "data",
                  "eval_batch_size", "log_every_steps", "log_histograms",
                  "sync_batchnorm", "patience", "min_delta",
                  "data_mode", "data_budget_gb", "workers", "prefetch"}

def check_request(model: str | None = None, config_file: str | os.PathLike | None = None,
                  run_dir: str | os.PathLike | None = None,
                  resume_dir: str | os.PathLike | None = None, dry_run: bool = False) -> None:
    """The combinations ``cnnbench train`` refuses (one line, before any work): a dry run
    shows a new run's recipe; a resume takes its model, config and folder from the run."""
    if dry_run and resume_dir:
        raise CnnbenchError("--dry-run shows a new run's recipe; it does not take --resume")
    if resume_dir and (model or config_file):
        raise CnnbenchError("--resume takes the model and config from the run folder; "
                            "give only options such as --epochs")
    if resume_dir and run_dir:
        raise CnnbenchError("--resume continues the run in its own folder; it does not take "
                            "--run-dir")


def run(model: str | None = None, config_file: str | os.PathLike | None = None,
        overrides: dict | None = None, *, run_dir: str | os.PathLike | None = None,
        resume_dir: str | os.PathLike | None = None, dry_run: bool = False,
        runs_root: str | os.PathLike = "runs", reporter=None,
        callbacks: list[Callback] = ()) -> dict | None:
    """What ``cnnbench train`` does, for Python callers too: check the request, then return
    the resolved configuration (``dry_run``), or continue ``resume_dir``, or train a new run;
    the results otherwise."""
    check_request(model, config_file, run_dir, resume_dir, dry_run)
    if dry_run:
        return recipe.resolve(model, config_file, overrides)
    if resume_dir:
        return resume(resume_dir, overrides, reporter, callbacks)
    return train(model, config_file, overrides, run_dir, runs_root, reporter, callbacks)


def train(model: str | None = None, config_file: str | os.PathLike | None = None,
          overrides: dict | None = None, run_dir: str | os.PathLike | None = None,
          runs_root: str | os.PathLike = "runs", reporter=None,
          callbacks: list[Callback] = ()) -> dict | None:
    """Resolve the configuration, make a new run folder and train; returns the results."""
    config = recipe.resolve(model, config_file, overrides)
    if distributed.is_main() and run_dir:  # a usable place, before the data load
        check_run_dir(run_dir)
    elif distributed.is_main():
        check_folder(runs_root, "runs folder")
    trainer = build_trainer(config, reporter=reporter)  # data and model first: errors leave no
    trainer.add_callbacks(*callbacks)  # folder
    trainer.run_dir = distributed.on_main(  # rank 0 claims it; every process learns its path
        lambda: claim_run_dir(run_dir) if run_dir else new_run_dir(config["model"], runs_root))
    return fit_in_folder(trainer, new=True)


def fit_in_folder(trainer: Trainer, new: bool) -> dict | None:
    """``trainer.fit()`` in its claimed (locked) folder, unlocked at the end; a new run that
    fails before its first checkpoint leaves no folder behind (it could not be resumed)."""
    failed = True
    try:
        with resource_errors(trainer):
            results = trainer.fit()
        failed = False
        return results
    finally:
        release_run(trainer.run_dir, abandon=new and failed)  # only by the lock's holder
        if not failed:
            distributed.finished()  # at exit, wait for the other processes (teardown)


def resume(run_dir: str | os.PathLike, overrides: dict | None = None,
           reporter=None, callbacks: list[Callback] = ()) -> dict | None:
    """Continue ``run_dir`` from ``checkpoints/last.pt`` up to ``epochs`` (the total); a run
    stopped after its last epoch but before its results (during the test) is tested."""
    if distributed.is_main():  # a folder it can write in, before the data load
        check_folder(run_dir, "--resume")
    trainer = resume_trainer(run_dir, overrides, reporter)
    trainer.add_callbacks(*callbacks)
    epochs, tested = trainer.config["epochs"], RunLayout(run_dir).results.is_file()
    if trainer.epoch > epochs or (trainer.epoch == epochs and tested):
        raise CnnbenchError(f"{run_dir} already trained {trainer.epoch} of "
                            f"{trainer.config['epochs']} epochs: give a larger --epochs")
    # Rank 0 locks and reconciles; its one-line error stops every process.
    repaired = distributed.on_main(_lock_and_reconcile, trainer.run_dir, trainer.epoch,
                                   trainer.row)
    if repaired and distributed.is_main():
        say(f"note: {repaired}")
    return fit_in_folder(trainer, new=False)


def _lock_and_reconcile(run_dir: Path, epoch: int, row: dict | None) -> str | None:
    lock_run(run_dir)
    try:
        return reconcile_metrics(run_dir, epoch, row)
    except BaseException:
        release_run(run_dir)
        raise


def resume_trainer(run_dir: str | os.PathLike, overrides: dict | None = None,
                   reporter=None) -> Trainer:
    run = Path(run_dir)
    if not RunLayout(run).config.is_file():
        raise CnnbenchError(f"{run} is not a cnnbench run (no {RunLayout.CONFIG})")
    state = load_checkpoint(RunLayout(run).last)
    saved = state.get("config", {})
    known = recipe.trainer_keys()
    for key, value in saved.items():  # as a recipe's values are (a crafted file is refused)
        if key in known and value is not None:
            recipe.check(key, value, source=f"{run}'s checkpoint")
    # Keys added since the run started take the value the run had (recipe.stored).
    config = recipe.stored(saved)
    changed = {k: v for k, v in (overrides or {}).items()
               if v is not None and config.get(k) != v}
    fixed = sorted(set(changed) - RESUMABLE_KEYS)
    if fixed:
        raise CnnbenchError(f"{fixed[0]} cannot change when resuming (only "
                            f"{', '.join(sorted(RESUMABLE_KEYS))} can)")
    for key, value in changed.items():
        config[key] = recipe.check(key, value, source="command line")
    if not config["threads"] and state.get("threads"):
        torch.set_num_threads(state["threads"])  # as many as before: the same sums, bitwise
    return build_trainer(config, run, checkpoint=state, reporter=reporter)


def launch_train(nproc: int, argv: list[str], model: str | None, config_file: str | None,
                 overrides: dict, run_dir: str | None = None, resume: str | None = None,
                 nodes: distributed.Nodes | None = None) -> int:
    """``cnnbench train ... --nproc N [--nnodes M --node-rank R --rdzv HOST:PORT]``: check
    the options here (one line, no folder, no process), then run the command without them in
    N processes on this node (``nodes``: one of M meeting at a rendezvous)."""
    if resume:
        saved = RunLayout(resume).config
        config = {**(read_yaml(saved) if saved.is_file() else {}), **overrides}
    else:
        config = recipe.resolve(model, config_file, overrides)
        if run_dir:
            check_run_dir(run_dir)
    distributed.check_launch(nproc, config)
    if nodes is not None:
        nodes.wait_for_host()
    return distributed.launch(nproc, distributed.without_nproc(argv), nodes=nodes)


# The options of the command that submits a job, not of the training it runs.
SUBMIT_OPTIONS = (*distributed.LAUNCH_OPTIONS, "--launcher", "--slurm", "--run-dir")
SUBMIT_FLAGS = ("--json", "--quiet", "-q")


def submit_train(launcher, nproc: int, argv: list[str], model: str | None,
                 config_file: str | None, overrides: dict, run_dir: str | None = None,
                 resume: str | None = None, runs_root: str | os.PathLike = "runs",
                 say=None) -> dict:
    """``cnnbench train ... --launcher slurm [--nnodes N] [--nproc P]``: one job of the
    launcher (made ``across`` N nodes) whose tasks each run their node's share of the training
    (:class:`NodeShare`); checked here first (one line, no folder), followed until it ends.
    The run folder is chosen here (``--run-dir``, ``--resume``'s, or a new name under
    ``runs_root``) and claimed by the job; the results, or a one-line error (the job's log's
    last line, or how to continue a stopped run)."""
    from cnnbench.launchers import Job, Stop
    from cnnbench.training.interrupt import Interrupted

    say = say or (lambda line: None)
    if resume:
        check_folder(resume, "--resume")
        if not RunLayout(resume).last.is_file():
            raise CnnbenchError(f"{resume} has no checkpoint to resume "
                                f"({RunLayout.CHECKPOINTS}/last.pt)")
        config, run = {**read_yaml(RunLayout(resume).config), **overrides}, Path(resume)
    else:
        config = recipe.resolve(model, config_file, overrides)
        run = check_run_dir(run_dir) if run_dir else free_run_dir(config["model"], runs_root)
    distributed.check_launch(nproc, config, here=False)
    argv = [a for a in distributed.without_nproc(argv, SUBMIT_OPTIONS) if a not in SUBMIT_FLAGS]
    share = NodeShare(nproc, [*argv, "--quiet", *([] if resume else ["--run-dir", str(run)])],
                      run, resumed=bool(resume))
    with Stop() as stop:
        failures = launcher.launch([Job(run.name, share)], run.parent, say, stop)
    again = ""
    if RunLayout(run).last.is_file() and not RunLayout(run).results.is_file():
        again = (f"; continue with: cnnbench train --resume {run} (and the same --launcher, "
                 f"--nnodes, --nproc and --slurm)")
    if stop.signum is not None:
        raise Interrupted(f"{signal.Signals(stop.signum).name}: the job was cancelled{again}",
                          stop.signum)
    if failures:
        raise CnnbenchError(f"{failures[0][1]}{again}")
    return json.loads(RunLayout(run).results.read_text())


def free_run_dir(model: str, root: str | os.PathLike) -> Path:
    """A new run's folder name under ``root`` (``MODEL-TIME``), not made: the job claims it."""
    for n in range(1, 1000):
        path = new_run_name(model, root, n)
        if not os.path.lexists(path):
            return check_run_dir(path)
    raise CnnbenchError(f"cannot find a free run folder name for {model} in {root}")


class NodeShare:
    """One node's share of a training over a Slurm job's nodes, as a launcher's job: in each
    task it starts ``nproc`` processes that meet the other nodes' at the job's rendezvous
    (``launchers.slurm.this_node``). Picklable; a requeued job (time limit, preemption) or the
    next command resumes the run from its checkpoint."""

    def __init__(self, nproc: int, argv: list[str], run_dir: Path, resumed: bool = False,
                 timeout: float = 300):
        self.nproc, self.argv, self.run_dir = nproc, list(argv), Path(run_dir).resolve()
        self.resumed, self.timeout = resumed, timeout

    def __call__(self) -> None:
        from cnnbench.launchers import last_line
        from cnnbench.launchers.slurm import this_node
        from cnnbench.training.interrupt import Interrupted

        node = this_node()
        argv = self.argv
        if not self.resumed and RunLayout(self.run_dir).last.is_file():  # requeued
            if RunLayout(self.run_dir).results.is_file():
                return
            argv = ["train", "--resume", str(self.run_dir), "--quiet"]
        nodes = distributed.Nodes(node.count, node.rank, node.rdzv, self.timeout)
        nodes.wait_for_host()
        code = distributed.launch(self.nproc, argv, nodes=nodes)
        if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            raise Interrupted(f"{signal.Signals(code - 128).name}: stopped, checkpoint written",
                              code - 128)
        if code:
            sys.stderr.flush()
            raise CnnbenchError(last_line(node.log).removeprefix("error: ")
                                or f"node {node.rank} of {node.count}: exit code {code}")



def lr_find(model: str | None = None, config_file: str | os.PathLike | None = None,
            overrides: dict | None = None, start: float = 1e-7, end: float = 10.0,
            steps: int = 100) -> dict:
    """``cnnbench lr-find``: the learning-rate range test (``training/lr_find.py``) on the
    recipe's real training steps."""
    finder.check_range(start, end, steps)
    config = recipe.resolve(model, config_file, {**(overrides or {}), **finder.UNDERNEATH})
    return finder.lr_find(config, start, end, steps)
