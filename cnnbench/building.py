"""Building a registered model and checking that an input size fits it.

Shared by every command, so that `summary`, `bench`, `train` and `receptive-field` build models
the same way and report a too-small input the same way.
"""

from __future__ import annotations

import contextlib

import torch

from cnnbench.errors import CnnbenchError
from cnnbench.registry import ModelInfo, get_model, get_model_info


def build(name: str, model_args: dict | None = None, *, in_channels: int | None = None,
          device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    """Build ``name`` on ``device`` (``meta`` builds no real weights and costs nothing)."""
    info = get_model_info(name)
    options = dict(model_args or {})
    if in_channels is not None and in_channels != info.in_channels and "in_channels" in info.options:
        options.setdefault("in_channels", in_channels)
    with torch.device(device):
        model = get_model(name, **options)
    return model, info


def _runs(model: torch.nn.Module, shape: tuple[int, ...], device) -> bool:
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(shape, device=device))
        return True
    except (RuntimeError, ValueError, IndexError):
        return False


def check_input_fits(model: torch.nn.Module, name: str, size: tuple[int, int, int],
                     device="meta") -> None:
    """Raise a one-line error saying which sizes work when ``size`` does not fit ``model``.

    Meant for the error path: it tries square sizes on the ``meta`` device, which costs no
    arithmetic, to find the smallest (and, for fixed-size heads, the largest) that works.
    """
    c, h, w = size
    if _runs(model, (1, c, h, w), device):
        return
    candidates = list(range(1, 129)) + list(range(136, 1025, 8))
    smallest = next((s for s in candidates if _runs(model, (1, c, s, s), device)), None)
    if smallest is None:
        raise CnnbenchError(f"{name} does not run on a {c}-channel input at any size up to 1024 "
                            "(check --input-size's channels)")
    largest = smallest
    while largest < smallest + 64 and _runs(model, (1, c, largest + 1, largest + 1), device):
        largest += 1
    if min(h, w) < smallest:
        raise CnnbenchError(f"input {c}x{h}x{w} is too small for {name}: the smallest that works "
                            f"is {c}x{smallest}x{smallest}")
    if largest < smallest + 64:
        raise CnnbenchError(f"input {c}x{h}x{w} does not fit {name}: its fixed-size dense layers "
                            f"take {smallest}-{largest} px only")
    raise CnnbenchError(f"input {c}x{h}x{w} does not fit {name} (it runs at "
                        f"{c}x{smallest}x{smallest} and larger squares)")


def ensure_input_fits(model: torch.nn.Module, name: str, size: tuple[int, int, int],
                      model_args: dict | None = None, device="cpu") -> None:
    """One forward pass of a single input; if it fails, say which sizes work (see above)."""
    if not _runs(model, (1, *size), device):
        meta_model, _ = build(name, model_args, in_channels=size[0], device="meta")
        check_input_fits(meta_model, name, size, device="meta")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
