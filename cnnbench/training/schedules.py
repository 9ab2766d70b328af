"""Learning-rate schedules a recipe can name: a table of ``torch.optim.lr_scheduler`` classes.

Each entry names the scheduler class and turns the configuration into its arguments; the
trainer steps it once per optimizer step. ``constant``, ``step`` (x ``gamma`` every
``step_epochs``) and ``cosine`` (to zero) follow an optional linear warm-up of ``warmup_epochs``
(one ``LambdaLR``); ``onecycle`` is fast.ai's ``fit_one_cycle`` (``OneCycleLR``): cosine up from
``lr / div_factor`` to ``lr`` over ``pct_start`` of the steps, then down to
``lr / div_factor / final_div_factor``, with momentum (or Adam's beta1) 0.95 -> 0.85 -> 0.95.

Every schedule here is closed-form in the step number, so a resumed run jumps to its step.
To add a schedule: one entry (a class and a function from the configuration to its arguments).
"""

from __future__ import annotations

import math
import pkgutil
import warnings
from dataclasses import dataclass
from typing import Callable

from cnnbench.keys import Key, declare

ONE_CYCLE_MOMENTUM = (0.95, 0.85)  # fast.ai's moms: at the ends, at the peak


@dataclass(frozen=True)
class ScheduleInfo:
    cls: str  # a torch.optim.lr_scheduler class, imported when a run uses it
    arguments: Callable[[dict, int, int, object], dict]  # (config, steps/epoch, steps, optimizer)
    description: str


def _cos(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


def _warmup_then(after: Callable[[dict, int, int, int], Callable[[int], float]]):
    """``LambdaLR`` arguments: linear warm-up over ``warmup_epochs``, then ``after``'s factor."""

    def arguments(c: dict, steps_per_epoch: int, total: int, optimizer) -> dict:
        warmup = round(c["warmup_epochs"] * steps_per_epoch)
        factor = after(c, steps_per_epoch, total, warmup)

        def lr_lambda(step: int) -> float:
            return (1.0 if step >= warmup else (step + 1) / warmup) * factor(step)

        return {"lr_lambda": lr_lambda}

    return arguments


def _constant(c, steps_per_epoch, total, warmup):
    return lambda step: 1.0


def _step(c, steps_per_epoch, total, warmup):
    return lambda step: c["gamma"] ** (step // steps_per_epoch // max(1, c["step_epochs"]))


def _cosine(c, steps_per_epoch, total, warmup):
    return lambda step: _cos(1.0, 0.0, min(1.0, max(0, step - warmup) / max(1, total - warmup)))


def _one_cycle(c: dict, steps_per_epoch: int, total: int, optimizer) -> dict:
    up = max(1, round(c["pct_start"] * total))
    # fast.ai peaks at step ``up`` and would reach the end one step after the last; OneCycleLR
    # reaches each at the last step of its phase: one step more, and the peak one step later.
    has_momentum = "betas" in optimizer.defaults or optimizer.defaults.get("momentum", 0) > 0
    high, low = ONE_CYCLE_MOMENTUM
    return {"max_lr": [g["lr"] for g in optimizer.param_groups], "total_steps": total + 1,
            "pct_start": min(1.0, (up + 1) / (total + 1)), "anneal_strategy": "cos",
            "div_factor": c["div_factor"], "final_div_factor": c["final_div_factor"],
            "cycle_momentum": bool(c["cycle_momentum"] and has_momentum),
            "base_momentum": low, "max_momentum": high}


SCHEDULES: dict[str, ScheduleInfo] = {
    "constant": ScheduleInfo("torch.optim.lr_scheduler.LambdaLR", _warmup_then(_constant),
                             "the same lr throughout (after any warm-up)"),
    "step": ScheduleInfo("torch.optim.lr_scheduler.LambdaLR", _warmup_then(_step),
                         "x gamma every step_epochs"),
    "cosine": ScheduleInfo("torch.optim.lr_scheduler.LambdaLR", _warmup_then(_cosine),
                           "cosine from lr to zero"),
    "onecycle": ScheduleInfo("torch.optim.lr_scheduler.OneCycleLR", _one_cycle,
                             "fast.ai's one cycle: up, then down, momentum the other way"),
}


KEYS = declare(
    Key("schedule", "constant", str, tuple(SCHEDULES), help="the learning-rate schedule"),
    Key("warmup_epochs", 0.0, float, bounds="[0, inf)",
        help="linear warm-up (constant, step, cosine)"),
    Key("step_epochs", 3, int, bounds="[1, inf)", help="step: multiply by gamma every step_epochs"),
    Key("gamma", 0.1, float, bounds="(0, inf)", help="step: the factor"),
    Key("pct_start", 0.25, float, bounds="(0, 1)",
        help="onecycle: fraction of steps going up (fastai 0.25)"),
    Key("div_factor", 25.0, float, bounds="(0, inf)", help="onecycle: start at lr / div_factor"),
    Key("final_div_factor", 1e4, float, bounds="(0, inf)",
        help="onecycle: end at lr / div_factor / this"),
    Key("cycle_momentum", True, bool, help="onecycle: momentum (or beta1) 0.95 -> 0.85 -> 0.95"),
)


def build_schedule(optimizer, config: dict, steps_per_epoch: int):
    """The scheduler ``config["schedule"]`` names, at step 0 (it has set the first lr)."""
    info = SCHEDULES[config["schedule"]]
    steps_per_epoch = max(1, steps_per_epoch)
    total = max(1, steps_per_epoch * config["epochs"])
    arguments = info.arguments(config, steps_per_epoch, total, optimizer)
    return pkgutil.resolve_name(info.cls)(optimizer, **arguments)


def jump_to(schedule, step: int) -> None:
    """Set the learning rate (and momentum) of ``step``, as ``step`` calls of ``step()`` would."""
    if step > 0:
        schedule.last_epoch = step - 1
        with warnings.catch_warnings():  # "step() before optimizer.step()": on purpose here
            warnings.simplefilter("ignore")
            schedule.step()
