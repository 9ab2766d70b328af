"""Stopping a run without losing it: Ctrl-C and SIGTERM, and running out of memory or disk.

:class:`Interrupt` turns SIGINT/SIGTERM into a clean stop: the signal handler only sets a flag;
after the running step the callback writes a mid-epoch ``last.pt`` holding the exact position
(``Trainer.position``: epoch, steps done, the epoch's shuffle state, the metric sums; the
checkpoint has the RNG, optimizer, schedule and scaler states), prints the command that
continues it on stderr and raises :class:`Interrupted` (exit code 130 for SIGINT, 143 for
SIGTERM). ``--resume`` then continues the same epoch at the next step, bitwise as if it had not
stopped (on the CPU). A second Ctrl-C stops at once (KeyboardInterrupt); a second SIGTERM does
not (a scheduler and a launcher may both pass the one stop on; SIGKILL is the hard stop).

:func:`resource_errors` turns out-of-memory into one line naming what to reduce, a file that
cannot be written (a full disk, a quota, ``ulimit -f``, a read-only disk: ``files.WriteFailed``)
into one line naming it and how to continue, and a DataLoader worker that died (``data_mode:
stream``) into a clean stop that ``--resume`` continues; checkpoints are written atomically and
the log after them, so the folder stays resumable.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import torch

from cnnbench.data.stream import WorkerDied
from cnnbench.errors import CnnbenchError
from cnnbench.files import OUT_OF_SPACE, RunLayout, WriteFailed, failed, save_torch
from cnnbench.training.loop import Callback, Step, Trainer

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a signal after writing its checkpoint; ``exit_code`` 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class Interrupt(Callback):
    """Ctrl-C/SIGTERM: finish the step, checkpoint the position, say how to resume, stop.

    Several processes (torchrun sends the signal to each; one may get it alone) stop after the
    same step: every ``every`` steps and at each epoch's end they agree on the largest signal
    any of them has seen (``Trainer.agree``: a small collective, not one per step). Rank 0
    writes the checkpoint while the others wait; every process then exits 130/143."""

    order = 95  # after the epoch's checkpoint and log
    every = 10  # steps between the processes' agreements (one process: every step, no cost)

    def __init__(self):
        self.signum: int | None = None  # this process's signal
        self.stopping: int | None = None  # the signal every process stops on
        self.previous: dict = {}

    def request(self, signum: int = signal.SIGINT, frame=None) -> None:
        """The signal handler (also callable from a test): a flag, nothing else."""
        if self.signum == signal.SIGTERM and signum == signal.SIGTERM:
            return  # the same stop passed on twice (Slurm signals every process of a job step,
            # and torch's launcher passes its own SIGTERM on): it still checkpoints
        if self.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def before_fit(self, trainer: Trainer) -> None:
        self.signum = self.stopping = None
        if threading.current_thread() is threading.main_thread():  # signals go to the main one
            self.previous = {s: signal.signal(s, self.request) for s in SIGNALS}

    def after_fit(self, trainer: Trainer) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def agree(self, trainer: Trainer) -> int | None:
        self.stopping = trainer.agree(self.signum or 0) or None
        return self.stopping

    def after_step(self, trainer: Trainer, step: Step) -> None:
        total = trainer.steps_per_epoch()
        if step.batch + 1 == total:  # its checkpoint comes with the epoch's end (after_epoch)
            return
        if trainer.world > 1 and (step.batch + 1) % self.every:
            return
        if self.agree(trainer) is None or trainer.run_dir is None:
            return
        if not all(torch.isfinite(p).all() for p in trainer.model.parameters()):  # equal on all
            raise CnnbenchError(f"interrupted with non-finite weights in epoch {step.epoch}: "
                                f"not checkpointed (the last good last.pt is kept)")
        state = trainer.state_dict()
        state["position"] = trainer.position()  # a collective with several processes
        failure = None
        if trainer.rank == 0:
            try:
                save_torch(state, RunLayout(trainer.run_dir).last)
            except BaseException as exc:  # noqa: BLE001 - raised below, after the others know
                failure = exc
        # The others wait for the checkpoint: the launcher stops every process once one exits.
        trainer.agree(int(failure is not None))
        if failure is not None:
            raise failure
        self.stop(trainer, f"in epoch {step.epoch} after step {step.batch + 1} of {total}")

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        if self.agree(trainer) is not None:
            self.stop(trainer, f"after epoch {row['epoch']}")

    def stop(self, trainer: Trainer, where: str) -> None:
        name = signal.Signals(self.stopping).name
        resume = ""
        if trainer.run_dir is not None:
            resume = f"; continue with: cnnbench train --resume {trainer.run_dir}"
            if trainer.world > 1:
                resume += f" --nproc {trainer.world} (or torchrun with {trainer.world} processes)"
        raise Interrupted(f"{name}: stopped {where}, checkpoint written{resume}", self.stopping)


@contextlib.contextmanager
def resource_errors(trainer: Trainer):
    """Out of memory (CUDA or CPU), or a write that failed, while training: one line saying
    what to reduce or free. Checkpoints are atomic and written before the log, so a run with a
    ``last.pt`` continues with ``--resume``."""
    try:
        yield
    except WorkerDied as exc:
        raise CnnbenchError(_worker_died(trainer, str(exc))) from None
    except torch.OutOfMemoryError:
        raise CnnbenchError(_memory_advice(trainer, f"out of memory on {trainer.device}")) \
            from None
    except RuntimeError as exc:
        text = str(exc)
        if "allocate" in text and "memory" in text or "out of memory" in text:
            raise CnnbenchError(_memory_advice(trainer, "out of memory")) from None
        raise
    except (WriteFailed, OSError) as exc:
        if isinstance(exc, OSError):  # a library's own write (TensorBoard's event files)
            if exc.errno not in OUT_OF_SPACE:
                raise
            exc = failed(exc.filename or trainer.run_dir, exc)
        if trainer.run_dir is None or not RunLayout(trainer.run_dir).last.is_file():
            raise exc from None
        advice = "free some space, then " if exc.out_of_space else ""
        raise WriteFailed(exc.path, f"{exc.cause}; the last checkpoint is kept: {advice}"
                          f"continue with: cnnbench train --resume {trainer.run_dir}",
                          exc.errno) from None


def _worker_died(trainer: Trainer, reason: str) -> str:
    """After a DataLoader worker died (``data_mode: stream``): a mid-epoch checkpoint at the
    last whole optimizer step, as Ctrl-C writes, so that ``--resume`` continues there."""
    where = "the last checkpoint is kept"
    steps = trainer.batch // trainer.accumulate
    in_epoch = trainer.meter is not None and trainer.epoch_shuffle is not None
    if (trainer.run_dir is not None and in_epoch and trainer.batch % trainer.accumulate == 0
            and 0 < steps < trainer.steps_per_epoch() and trainer.world == 1
            and all(torch.isfinite(p).all() for p in trainer.model.parameters())):
        state = trainer.state_dict()
        state["position"] = trainer.position()
        save_torch(state, RunLayout(trainer.run_dir).last)
        where = (f"checkpoint written in epoch {trainer.epoch + 1} after step {steps} of "
                 f"{trainer.steps_per_epoch()}")
    resume = f"; continue with: cnnbench train --resume {trainer.run_dir}" \
        if trainer.run_dir is not None and RunLayout(trainer.run_dir).last.is_file() \
        else ""
    return f"a data-loading worker stopped ({reason}): {where}{resume}"


def _memory_advice(trainer: Trainer, what: str) -> str:
    return (f"{what} in epoch {trainer.epoch + 1}: reduce --batch-size (now "
            f"{trainer.batch_size}), --set eval_batch_size (now {trainer.eval_batch_size}) "
            f"or --input-size")


