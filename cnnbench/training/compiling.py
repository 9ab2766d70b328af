"""``torch.compile`` with an eager fallback, and the static batch shapes CUDA graphs need."""

from __future__ import annotations

import sys

import torch

from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.keys import Key, declare

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")

KEYS = declare(
    Key("compile", False, None,
        help=f"false, true or a torch.compile mode ({', '.join(COMPILE_MODES)})"),
)


def compile_mode(value) -> str | None:
    """The ``compile`` key -> a torch.compile mode, or None for eager (true means default)."""
    if value is None or value is False or value in ("false", "none", "off"):
        return None
    if value is True or value in ("true", "on"):
        return "default"
    if value in COMPILE_MODES:
        return value
    raise CnnbenchError(f"compile must be false, true or one of {', '.join(COMPILE_MODES)}, "
                        f"not {value!r}{did_you_mean(str(value), COMPILE_MODES)}")


class CompiledForward:
    """``torch.compile`` of the trainer's forward-and-loss that falls back to eager if it fails.

    The compiled function is the whole differentiable part of a step: the task's ``prepare``
    (uint8 to float, augmentation on the device), the model, and the task's loss (matching and
    encoding for the detectors). None of them reads the device (``syncs.py``), so dynamo traces
    them into one graph with no break, inductor fuses across their borders, and
    ``reduce-overhead`` replays the forward and the backward each as one CUDA graph.
    Compilation happens at the first call (and the backward graph at the first backward), so
    the trainer asks :meth:`fall_back` when its first step raises and runs the step again.
    """

    def __init__(self, fn, mode: str):
        self.fn, self.mode = fn, mode
        self.compiled = torch.compile(fn, mode=None if mode == "default" else mode)
        self.proven = False  # a training step went through

    def __call__(self, *args, **kwargs):
        return self.compiled(*args, **kwargs)

    def fall_back(self, exc: BaseException):
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        print(f"warning: torch.compile (mode {self.mode}) failed, training eagerly: "
              f"{type(exc).__name__}: {reason}", file=sys.stderr)
        return self.fn


def build_forward(fn, config: dict):
    """The callable the trainer runs: ``fn`` itself, or a :class:`CompiledForward` of it."""
    mode = compile_mode(config["compile"])
    return fn if mode is None else CompiledForward(fn, mode)


def drop_last(config: dict, device: torch.device) -> bool:
    """Skip the last partial training batch: CUDA graphs (reduce-overhead) need static shapes."""
    return device.type == "cuda" and compile_mode(config["compile"]) == "reduce-overhead"
