"""The learning-rate range test (Smith 2015; fastai's ``lr_find``, Lightning's
``Tuner.lr_find``): ``cnnbench lr-find MODEL``.

A trainer is built from the recipe as ``cnnbench train`` would build it (the same model, data,
optimizer, batch size, augmentation, ``accumulate_steps``), but with no callbacks and no run
folder, and its schedule is replaced by the sweep: the learning rate grows exponentially from
``start`` to ``end`` over ``steps`` real optimizer steps (a recipe's other parameter groups keep
their ratios to ``lr``). Each step's training loss is smoothed exponentially (``beta`` 0.98,
bias-corrected as in fastai); the sweep stops once the smoothed loss exceeds ``DIVERGE`` times
its best. The trained weights and the optimizer's state are thrown away.

The suggestion is fastai's default rule, ``valley`` (:func:`valley`): the longest stretch over
which the smoothed loss keeps falling (its longest decreasing subsequence), and the learning rate
about halfway along it. Beside it: where the loss falls fastest against ``log10(lr)`` (fastai's
``steep``, Lightning's suggestion), searched from a tenth of the way into the sweep up to the
loss's minimum, and the minimum's learning rate divided by 10 (fastai's ``minimum``), which is
the suggestion when the loss never descends. Why the valley (issue 26, LeNet, 3 epochs, two
seeds): the steepest slope's 0.138 reached 0.755 / 0.737 test accuracy, 0.031 0.810 / 0.807, the
recipe's 0.01 0.784 / 0.791. On the README's curve (``lr-find lenet --limit 5000``) the valley
is 0.0123, the steepest descent 0.138.
"""

from __future__ import annotations

import math
import time

import torch

from cnnbench.errors import CnnbenchError
from cnnbench.training.build import build_trainer
from cnnbench.training.loop import Trainer, accumulation_plan

BETA = 0.98  # smoothing of the step losses
DIVERGE = 4.0  # stop once the smoothed loss is this many times its best
SKIP = 0.1  # the first part of the sweep not searched for the steepest descent (noisy)
VALLEY_TAIL = 5  # the last steps valley leaves out, as fastai's lr_find does


# The sweep is the schedule: a constant one underneath, so nothing else moves the lr.
UNDERNEATH = {"schedule": "constant", "warmup_epochs": 0.0}


def check_range(start: float, end: float, steps: int) -> None:
    if not (0 < start < end and math.isfinite(end)):
        raise CnnbenchError(f"lr-find needs 0 < --start < --end, not {start:g} and {end:g}")
    if steps < 5:
        raise CnnbenchError(f"lr-find needs --steps >= 5, not {steps}")


def lr_find(config: dict, start: float = 1e-7, end: float = 10.0, steps: int = 100) -> dict:
    """Sweep the learning rate over real training steps of the resolved ``config`` (with
    :data:`UNDERNEATH`); the curve and the suggestion."""
    check_range(start, end, steps)
    trainer = build_trainer(config, callbacks=[])
    growth = (end / start) ** (1 / (steps - 1))
    trainer.schedule = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda i: start * growth ** i / config["lr"])
    t0 = time.perf_counter()
    lrs, losses, smoothed = sweep(trainer, steps)
    result = {
        "model": config["model"], "optimizer": config["optimizer"],
        "batch_size": config["batch_size"],
        "accumulate_steps": config["accumulate_steps"],
        "train_images": len(trainer.train_split), "device": str(trainer.device),
        "start": start, "end": end, "planned_steps": steps, "steps": len(lrs),
        "diverged": len(lrs) < steps, "seconds": time.perf_counter() - t0,
        "lrs": lrs, "losses": losses, "smoothed": smoothed,
        **suggest(lrs, smoothed),
    }
    return result


def batches(trainer: Trainer):
    """Training batches without end: one shuffled epoch after another."""
    while True:
        order = trainer.epoch_order()
        for s in trainer.batch_starts():
            yield trainer.train_split.take(order[s:s + trainer.batch_size])


def sweep(trainer: Trainer, steps: int) -> tuple[list[float], list[float], list[float]]:
    """(lr, loss, smoothed loss) of each optimizer step until the end or the divergence. Each
    step's loss is read on the host: the sweep decides after each whether to go on."""
    trainer.model.train()
    source = batches(trainer)
    lrs, losses, smoothed = [], [], []
    average, best = 0.0, math.inf
    for i in range(steps):
        lr = trainer.lr
        parts = [next(source) for _ in range(trainer.accumulate)]
        plan = accumulation_plan([images.shape[0] for images, _ in parts], trainer.accumulate)
        loss = 0.0
        for (images, targets), micro in zip(parts, plan):
            loss += float(trainer.train_step(images, targets, micro)[2].detach()) * micro.weight
        average = BETA * average + (1 - BETA) * loss
        smooth = average / (1 - BETA ** (i + 1))
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(smooth)
        if not math.isfinite(smooth) or smooth > DIVERGE * best:
            break
        best = min(best, smooth)
    return lrs, losses, smoothed


def valley(lrs: list[float], smoothed: list[float]) -> float | None:
    """fastai's ``valley``: within the sweep after its first ``SKIP`` and before its last
    ``VALLEY_TAIL`` steps, the longest subsequence of strictly falling losses; it ends at
    ``end`` and is ``length`` steps long, and the suggestion is the lr at ``start + span / 3 +
    span / 6`` (each part rounded down) with ``start = end - length`` and ``span = end - start``
    (fastai's indices). None when fewer than three points are left."""
    first, last = int(len(lrs) * SKIP), len(lrs) - VALLEY_TAIL
    lrs, loss = lrs[first:last], smoothed[first:last]
    if len(loss) < 3:
        return None
    longest = [1] * len(loss)  # longest falling subsequence ending at each step
    for i in range(1, len(loss)):
        longest[i] = 1 + max((longest[j] for j in range(i) if loss[i] < loss[j]), default=0)
    end = longest.index(max(longest))
    start = end - longest[end]
    span = end - start
    return lrs[max(0, start + int(span / 3) + int(span / 6))]


def suggest(lrs: list[float], smoothed: list[float]) -> dict:
    """The suggested lr: fastai's valley (:func:`valley`); beside it the steepest descent of the
    smoothed loss against log10 lr (central differences), searched after the first ``SKIP`` of
    the sweep and before the loss's minimum, and the minimum's lr / 10 (not below the sweep's
    start), the suggestion when the loss never descends."""
    import numpy as np

    loss = np.array(smoothed, dtype=np.float64)
    finite = int(np.isfinite(loss).cumprod().sum())  # the steps before the loss blew up
    if finite < 2:
        raise CnnbenchError("lr-find: the loss was not finite from the first steps: lower "
                            "--start or check the recipe")
    loss, log_lr = loss[:finite], np.log10(lrs[:finite])
    lowest = int(np.argmin(loss))
    first = int(len(lrs) * SKIP)
    minimum_div10 = lrs[lowest] / 10
    steepest = None
    if lowest - first >= 2:
        steepest = lrs[first + int(np.argmin(np.gradient(loss, log_lr)[first:lowest]))]
    valley_lr = valley(list(lrs[:finite]), loss.tolist()) if lowest - first >= 2 else None
    if valley_lr is not None:
        suggested, rule = valley_lr, "valley: halfway down the longest descent (fastai)"
    else:  # the loss rose almost from the start: no descent to measure
        suggested = max(minimum_div10, lrs[0])
        rule = "minimum / 10 (no descent before the minimum)"
    return {"min_loss": float(loss[lowest]), "min_loss_lr": lrs[lowest],
            "minimum_div10_lr": minimum_div10, "steepest_lr": steepest, "valley_lr": valley_lr,
            "suggested_lr": suggested, "rule": rule}
