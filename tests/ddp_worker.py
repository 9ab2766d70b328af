"""Run by tests/test_distributed.py in two processes.

``record RUN EPOCHS OUT [first-best]`` (under torchrun): resume a run in every process,
recording each process's weights after every step and at the end (``OUT/rank<r>.pt``); with
``first-best`` no later epoch beats epoch 1, so best.pt stays epoch 1's::

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/ddp_worker.py record RUN EPOCHS OUT

The other modes launch this script in two processes as ``--nproc 2`` does (the launcher's
exit code is this script's) and write each process's exit code to ``exit<rank>`` in the
working directory:

``cli CLI-ARGS...``: ``cnnbench CLI-ARGS`` in each process.

``alone RANK CLI-ARGS...``: process RANK runs ``cnnbench CLI-ARGS`` at once; the others wait
(up to 60 s) to be stopped by the launcher.

``interrupt RANK STEP CLI-ARGS...``: each runs ``cnnbench CLI-ARGS --run-dir straight`` and
then ``cnnbench CLI-ARGS --run-dir cut`` with process RANK sending itself SIGINT after STEP of
epoch 1 and the processes agreeing every 2 steps (one launch for both runs).
"""

import os
import signal
import sys
import time

import torch

from cnnbench import cli
from cnnbench.training import distributed
from cnnbench.train import resume_trainer
from cnnbench.training.interrupt import Interrupt
from cnnbench.training.loop import Callback


class RecordWeights(Callback):
    def __init__(self, out):
        self.out, self.steps, self.images = out, [], 0

    def after_step(self, trainer, step):
        self.images += step.images
        self.steps.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))

    def after_fit(self, trainer):
        torch.save({"steps": torch.stack(self.steps), "images": self.images,
                    "state": trainer.model.state_dict(), "results": trainer.results},
                   f"{self.out}/rank{distributed.rank()}.pt")


class FirstEpochStaysBest(Callback):
    """Later epochs score below any real one (before ``Checkpoint`` reads the row)."""

    order = 35

    def after_epoch(self, trainer, row):
        if row["epoch"] > 1:
            row[f"val_{trainer.monitor}"] = -1.0


class SignalAt(Callback):
    """Process ``rank`` sends itself SIGINT after step ``step`` of epoch 1 (the others don't)."""

    def __init__(self, rank, step):
        self.rank, self.step = rank, step

    def after_step(self, trainer, step):
        if trainer.rank == self.rank and (step.epoch, step.batch + 1) == (1, self.step):
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets this process's flag


def run_cli(argv: list[str]) -> None:
    """``cnnbench *argv``; its exit code in ``exit<rank>`` (then exits with it if not 0)."""
    sys.argv = ["cnnbench", *argv]
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    with open(f"exit{os.environ['RANK']}", "w") as file:
        file.write(f"{code}\n")
    # The launcher stops the others once one process has failed, and reports the first failure
    # it sees: a failing process 1 waits (at most 20 s) for rank 0 to report and exit first, as
    # rank 0 is the one that prints; so a missing exit1 means process 1 did not get there.
    for _ in range(200 if code and os.environ["RANK"] != "0" else 0):
        if os.path.exists("exit0"):
            time.sleep(0.5)  # rank 0 is exiting
            break
        time.sleep(0.1)
    if code:
        sys.exit(code)


def interrupt(rank: int, step: int, argv: list[str]) -> None:
    from cnnbench.training import build

    run_cli([*argv, "--run-dir", "straight"])
    standard = build.standard_callbacks
    build.standard_callbacks = lambda *a: [*standard(*a), SignalAt(rank, step)]
    distributed.ALL_RANKS = (*distributed.ALL_RANKS, SignalAt)
    Interrupt.every = 2
    run_cli([*argv, "--run-dir", "cut"])


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "record":
        trainer = resume_trainer(args[0], {"epochs": int(args[1])})
        trainer.add_callbacks(RecordWeights(args[2]))
        if args[3:] == ["first-best"]:
            trainer.add_callbacks(FirstEpochStaysBest())
        trainer.fit()
    elif not distributed.launched():
        sys.exit(distributed.launch(2, sys.argv[1:], target=(__file__,)))
    elif mode == "cli":
        run_cli(args)
    elif mode == "alone":
        if os.environ["RANK"] == args[0]:
            sys.argv = ["cnnbench", *args[1:]]
            cli.main()
        time.sleep(60)
    else:
        interrupt(int(args[0]), int(args[1]), args[2:])
