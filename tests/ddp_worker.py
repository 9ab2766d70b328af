"""Run by tests/test_distributed.py under torchrun: resume a run in every process, recording
each process's weights after every step and at the end (``OUT/rank<r>.pt``).

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/ddp_worker.py RUN EPOCHS OUT
"""

import sys

import torch

from cnnbench.training import distributed
from cnnbench.training.build import resume_trainer
from cnnbench.training.loop import Callback


class RecordWeights(Callback):
    def __init__(self):
        self.steps, self.images = [], 0

    def after_step(self, trainer, step):
        self.images += step.images
        self.steps.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))

    def after_fit(self, trainer):
        torch.save({"steps": torch.stack(self.steps), "images": self.images,
                    "state": trainer.model.state_dict(), "results": trainer.results},
                   f"{sys.argv[3]}/rank{distributed.rank()}.pt")


if __name__ == "__main__":
    trainer = resume_trainer(sys.argv[1], {"epochs": int(sys.argv[2])})
    trainer.add_callbacks(RecordWeights())
    trainer.fit()
