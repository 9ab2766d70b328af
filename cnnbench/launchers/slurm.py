"""The Slurm launcher (`cnnbench sweep --launcher slurm`): a job array through ``submitit``.

``--slurm KEY=VALUE,...`` sets ``submitit.SlurmExecutor.update_parameters`` by its names
(``partition``, ``time`` in minutes, ``gpus_per_node``, ``cpus_per_task``, ``mem``, ``nodes``,
``ntasks_per_node``, ...); ``--parallel N`` tasks run at once (``array_parallelism``). The
sweep follows the jobs until each ends; their logs are in ``DIR/slurm/JOBID/``. A job's time
limit or a preemption requeues it (``submitit.helpers.Checkpointable``): the training writes its
checkpoint on the SIGTERM that ends the job, and the requeued call resumes it. A job cancelled
(``scancel``) checkpoints the same way; the next run of the sweep resumes it.

A job may span several nodes (:meth:`SlurmLauncher.across`, ``cnnbench train --launcher slurm
--nnodes N``): its tasks, one per node, each run the job's callable, which asks
:func:`this_node` for its node rank, the node count and the rendezvous (the job's first node,
a port derived from the job id).

Before any folder is made, ``check`` asks the controller (``scontrol ping``): sbatch missing or
the controller down is one line. ``.ci/slurm-local.sh start`` starts a cluster of two nodes
(two slurmd) on this machine for the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from cnnbench.errors import CnnbenchError
from cnnbench.launchers.base import Launcher, last_line


class SlurmLauncher(Launcher):
    """A Slurm cluster, through submitit: one job array, followed until every task ends."""

    name = "slurm"
    poll_seconds = 2.0

    def __init__(self, parallel: int = 1, options: dict | None = None):
        self.parallel, self.options = parallel, dict(options or {})

    def across(self, nnodes: int) -> None:
        """Each job is one training over ``nnodes`` nodes: as many Slurm tasks, one per node
        (``nodes=N,ntasks_per_node=1``); ``--slurm nodes=A,ntasks_per_node=B`` may pack them
        otherwise (B tasks per node, e.g. to try it on one machine) when A x B is N."""
        if nnodes < 1:
            raise CnnbenchError(f"--nnodes must be >= 1, not {nnodes}")
        per_node = self.options.setdefault("ntasks_per_node", 1)
        nodes = self.options.setdefault("nodes", max(1, nnodes // per_node)
                                        if isinstance(per_node, int) and per_node > 0 else 1)
        if not (isinstance(nodes, int) and isinstance(per_node, int) and nodes * per_node
                == nnodes):
            raise CnnbenchError(f"--slurm nodes={nodes},ntasks_per_node={per_node} is not "
                                f"{nnodes} tasks, one per node of --nnodes {nnodes}: leave "
                                f"them out (one task on each of {nnodes} nodes)")
        self.nnodes = nnodes

    def check(self) -> None:
        if shutil.which("sbatch") is None:
            raise CnnbenchError("Slurm is not reachable: sbatch is not on PATH (install "
                                "Slurm's client tools, or use --launcher local)")
        try:
            ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                                  timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CnnbenchError(f"Slurm is not reachable: scontrol ping failed ({exc})") from None
        text = " ".join((ping.stdout + ping.stderr).split())
        if ping.returncode or "UP" not in text:
            raise CnnbenchError(f"Slurm's controller is down or unreachable (scontrol ping: "
                                f"{text or 'exit ' + str(ping.returncode)})")
        self.executor(Path("/nonexistent"))  # unknown --slurm options: one line, here

    def executor(self, folder: Path):
        executor = submitit.SlurmExecutor(folder=folder / "slurm" / "%j", max_num_timeout=3)
        try:
            executor.update_parameters(array_parallelism=self.parallel, **self.options)
        except (ValueError, TypeError) as exc:
            reason = " ".join(str(exc).split())
            raise CnnbenchError(f"bad --slurm options: {reason[:300]}") from None
        return executor

    def launch(self, jobs, folder, say, stop=None, envs=None):
        executor = self.executor(Path(folder).resolve())
        with executor.batch():
            handles = [executor.submit(Requeued(job.call)) for job in jobs]
        pending = {}
        for job, handle in zip(jobs, handles):
            say(f"{job.name}: Slurm job {handle.job_id}")
            pending[handle.job_id] = (job, handle)
        failures, cancelled = [], False
        while pending:
            if stop is not None and stop.signum is not None and not cancelled:
                subprocess.run(["scancel", *pending], capture_output=True, timeout=60)
                cancelled = True  # each run checkpoints on the SIGTERM: resumable
            queued = self.queued()
            for job_id in [j for j in pending if j not in queued]:
                job, handle = pending.pop(job_id)
                outcome = self.outcome(handle)
                say(f"{job.name}: {outcome} (Slurm job {job_id})")
                if outcome != "finished":
                    failures.append((job.name, outcome))
            if pending:
                time.sleep(self.poll_seconds)
        return failures

    @staticmethod
    def queued() -> set[str]:
        """The ids of this cluster's jobs still pending or running (array tasks one by one:
        ``12_0``); read with ``squeue``, which needs no accounting database (``sacct`` does)."""
        done = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True,
                              text=True, timeout=60)
        if done.returncode:
            raise CnnbenchError(f"squeue failed while following the jobs: "
                                f"{last_line_of(done.stderr) or done.returncode}")
        return {line.strip() for line in done.stdout.splitlines() if line.strip()}

    @classmethod
    def outcome(cls, handle) -> str:
        """``finished`` when every task of the job finished, or why not (task 0's reason
        first, then the first other task's that has one)."""
        said = [cls.task_outcome(handle.task(k)) for k in range(handle.num_tasks)]
        return next((o for o in said if o != "finished"), "finished")

    @staticmethod
    def task_outcome(task) -> str:
        """``finished``, or why not: the task's error (its log's last line), a stop on a
        signal (resumable), or killed with no result (cancelled, out of time or memory)."""
        result = Path(task.paths.result_pickle)
        if result.is_file():
            status, value = submitit.core.utils.pickle_load(result)
            if status == "success":
                return "finished"
            said = QUALIFIED.sub("", last_line_of(value))  # as the traceback ends
            if "Interrupted" in str(value):
                return "stopped, resumable: " + (said or "a signal")
            return "failed: " + (said or last_line(task.paths.stderr))
        return "ended without a result: " + (last_line(task.paths.stderr)
                                             or "cancelled or killed")


QUALIFIED = re.compile(r"^(?:\w+\.)+\w+: ")  # a traceback's "package.module.Error: "


@dataclass
class Node:
    """This task's place in a job that spans nodes: node ``rank`` of ``count``, meeting the
    others at ``rdzv`` (HOST:PORT); its own error ``log``."""
    rank: int
    count: int
    rdzv: str
    log: Path


def this_node() -> Node:
    """In a task of a job submitted :meth:`~SlurmLauncher.across` nodes: each task is one node
    of the training, so the rank is SLURM_PROCID of SLURM_NTASKS (with one task per node, as
    submitted by default, the same as SLURM_NODEID). Task 0 runs on the job's first node
    (Slurm's block distribution), which hosts the rendezvous: at that node's address, on a port
    derived from the job id (two jobs sharing a node do not meet at one port)."""
    env = submitit.JobEnvironment()
    first = env.hostnames[0]
    port = 29500 + int(os.environ["SLURM_JOB_ID"]) % 2500  # below Linux's ephemeral ports
    return Node(env.global_rank, env.num_tasks, f"{node_address(first)}:{port}",
                Path(env.paths.stderr))


def node_address(name: str) -> str:
    """Where Slurm reaches node ``name`` (its NodeAddr, the name itself unless slurm.conf says
    otherwise, as for several nodes on one host)."""
    try:
        shown = subprocess.run(["scontrol", "show", "node", "-o", name], capture_output=True,
                               text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return name
    fields = dict(part.partition("=")[::2] for part in shown.stdout.split())
    return fields.get("NodeAddr") or name


def last_line_of(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Requeued(submitit.helpers.Checkpointable):
    """A job's callable that Slurm's time limit or a preemption requeues as it is: the run
    checkpoints on the SIGTERM that ends the job, and the requeued call resumes it."""

    def __init__(self, call):
        self.call = call

    def __call__(self):
        return self.call()
