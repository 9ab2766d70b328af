"""The local launcher: this machine, in this process or ``--parallel`` processes at once."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from cnnbench.errors import CnnbenchError
from cnnbench.launchers.base import Launcher, last_line


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
