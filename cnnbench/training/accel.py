"""What a run does to go fast, and the weights it starts from: device profiles, ``init:``,
``torch.compile`` with an eager fallback, static batch shapes (fused optimizers: the
``fused`` field of the optimizer table).

Device profiles. A recipe (``experiments/<model>.yaml``) may hold a ``cuda:`` block: keys that
change when the run is on a CUDA device (the paper's width, a GPU-sized batch with its learning
rate, bf16, a compile mode). :func:`apply_profile` merges it over the recipe (``model_args``
key by key) before the command line, which still wins; ``profile`` in the resolved configuration
says which block was applied (``cuda`` or ``none``). The profile follows the *requested* device
(``auto`` means CUDA when torch sees one), so ``--dry-run --device cuda`` shows a GPU recipe on
any machine.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from cnnbench.errors import CnnbenchError, did_you_mean

PROFILES = ("cuda",)  # the device blocks a recipe may hold

# -- device profiles --


def profile_for(device: str | None, profile: str | None = "auto") -> str:
    """``cuda`` or ``none``: the block a run on ``device`` applies (``profile`` may force it)."""
    if profile and profile != "auto":
        return profile
    device = device or "auto"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "none"
    return "cuda" if device.split(":")[0] == "cuda" else "none"


def apply_profile(recipe: dict, device: str | None, profile: str | None = "auto") -> dict:
    """``recipe`` with its block for ``device`` merged in and every block removed."""
    recipe = dict(recipe)
    blocks = {name: recipe.pop(name) for name in PROFILES if name in recipe}
    chosen = profile_for(device or recipe.get("device"), profile or recipe.get("profile"))
    recipe["profile"] = chosen
    block = blocks.get(chosen) or {}
    if not isinstance(block, dict):
        raise CnnbenchError(f"the recipe's {chosen}: block must be a mapping of keys to values")
    if isinstance(block.get("model_args"), dict) and isinstance(recipe.get("model_args"), dict):
        block = {**block, "model_args": {**recipe["model_args"], **block["model_args"]}}
    return {**recipe, **block}


# -- initial weights (d2l's train_ch6 applies Xavier-uniform to every Conv2d and Linear) --

INITS = {
    "default": None,  # PyTorch's own (Kaiming-uniform with a = sqrt(5))
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
}
INIT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def init_weights(model: nn.Module, name: str) -> nn.Module:
    """Re-draw the weight of every Conv2d, ConvTranspose2d and Linear; biases stay as they are.

    Draws from torch's global generator, which ``build_trainer`` has just seeded.
    """
    if name not in INITS:
        raise CnnbenchError(f"init must be one of {', '.join(INITS)}, not {name!r}"
                            f"{did_you_mean(name, INITS)}")
    rule = INITS[name]
    if rule is not None:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, INIT_LAYERS):
                    rule(module.weight)
    return model


# -- torch.compile --

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


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
    mode = compile_mode(config.get("compile"))
    return fn if mode is None else CompiledForward(fn, mode)


def drop_last(config: dict, device: torch.device) -> bool:
    """Skip the last partial training batch: CUDA graphs (reduce-overhead) need static shapes."""
    return device.type == "cuda" and compile_mode(config.get("compile")) == "reduce-overhead"

