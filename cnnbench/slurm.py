"""The Slurm launcher (`cnnbench sweep --launcher slurm`): a job array through ``submitit``.

``--slurm KEY=VALUE,...`` sets ``submitit.SlurmExecutor.update_parameters`` by its names
(``partition``, ``time`` in minutes, ``gpus_per_node``, ``cpus_per_task``, ``mem``, ``nodes``,
``ntasks_per_node``, ...); ``--parallel N`` tasks run at once (``array_parallelism``). The
sweep follows the jobs until each ends; their logs are in ``DIR/slurm/JOBID/``. A job's time
limit or a preemption requeues it (``submitit.helpers.Checkpointable``): the training writes its
checkpoint on the SIGTERM that ends the job, and the requeued call resumes it. A job cancelled
(``scancel``) checkpoints the same way; the next run of the sweep resumes it.

Before any folder is made, ``check`` asks the controller (``scontrol ping``): sbatch missing or
the controller down is one line. ``.ci/slurm-local.sh start`` starts a one-node cluster on
this machine for the tests.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import submitit

from cnnbench.errors import CnnbenchError
from cnnbench.launchers import Launcher, last_line


class SlurmLauncher(Launcher):
    """A Slurm cluster, through submitit: one job array, followed until every task ends."""

    name = "slurm"
    poll_seconds = 2.0

    def __init__(self, parallel: int = 1, options: dict | None = None):
        self.parallel, self.options = parallel, dict(options or {})

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
        executor = self.executor(Path(folder))
        submitted = []
        with executor.batch():
            for job in jobs:
                submitted.append((job, executor.submit(Requeued(job.call))))
        for job, handle in submitted:
            say(f"{job.name}: Slurm job {handle.job_id}")
        failures, pending = [], dict(enumerate(submitted))
        while pending:
            if stop is not None and stop.signum is not None:
                for _, handle in pending.values():
                    handle.cancel(check=False)  # scancel: each run checkpoints, resumable
            for key, (job, handle) in list(pending.items()):
                if not handle.done():
                    continue
                del pending[key]
                state = handle.state
                if state == "COMPLETED":
                    say(f"{job.name}: finished (Slurm job {handle.job_id})")
                    continue
                message = last_line(handle.paths.stderr) or state
                say(f"{job.name}: {state.lower()} (Slurm job {handle.job_id}): {message}")
                failures.append((job.name, f"{state.lower()}: {message}"))
            time.sleep(self.poll_seconds if pending else 0)
        return failures


class Requeued(submitit.helpers.Checkpointable):
    """A job's callable that Slurm's time limit or a preemption requeues as it is: the run
    checkpoints on the SIGTERM that ends the job, and the requeued call resumes it."""

    def __init__(self, call):
        self.call = call

    def __call__(self):
        return self.call()
