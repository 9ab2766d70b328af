"""Building a registered model and checking that an input size fits it and fits in memory.

Shared by every command, so that `summary`, `bench`, `train` and `receptive-field` build models
the same way and report a too-small or too-large input the same way.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
from torch.utils import _pytree as pytree

from cnnbench.errors import CnnbenchError
from cnnbench.models import get_model, get_model_info
from cnnbench.registry import ModelInfo, check_options


def build(name: str, model_args: dict | None = None, *, in_channels: int | None = None,
          device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    """Build ``name`` on ``device`` (``meta`` builds no real weights and costs nothing)."""
    info = get_model_info(name)
    options = dict(model_args or {})
    check_options(info, options)
    if in_channels is not None and "in_channels" in info.options:
        if "in_channels" not in options and in_channels != info.in_channels:
            options["in_channels"] = in_channels
        elif options.get("in_channels", in_channels) != in_channels:
            raise CnnbenchError(f"the input has {in_channels} channels but {name} is built with "
                                f"in_channels={options['in_channels']}: make them agree")
    try:
        with torch.device(device):
            model = get_model(name, **options)
    except CnnbenchError:
        if torch.device(device).type != "meta":
            raise
        # A builder that reads its own tensors' values (torchvision's regnets size their
        # stages with tensor arithmetic) cannot run on meta: build on the CPU, then move.
        model = get_model(name, **options).to("meta")
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


# Refuse without a closer look only a batch above this fraction of the free memory: no model
# here makes an activation more than about 64 times its input (64 channels from 1 at full size).
ACTIVATION_GROWTH = 1024


def free_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes that can be allocated on ``device`` now; None where that is unknown (meta, MPS)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def largest_activation(model: torch.nn.Module, size: tuple[int, ...]) -> int:
    """Elements of the largest tensor any module of ``model`` (built on ``meta``) outputs for
    one input of ``size``; 0 when it does not run at that size (reported elsewhere)."""
    largest = 0

    def hook(module, inputs, output):
        nonlocal largest
        for t in pytree.tree_leaves(output):
            if isinstance(t, torch.Tensor):
                largest = max(largest, t.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros((1, *size), device="meta"))
    except Exception:  # noqa: BLE001 - a size that does not fit is reported by the caller
        return 0
    finally:
        for handle in handles:
            handle.remove()
    return largest


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:,.3g} TB" if n < 1000 else f"{n:,.0f} TB"


def check_memory(size: tuple[int, ...], batch_size: int = 1, *, name: str | None = None,
                 model_args: dict | None = None, device: str | torch.device = "cpu") -> None:
    """Refuse, before anything is allocated, a batch of inputs of ``size`` (float32) whose
    tensor alone, or the largest activation of model ``name`` (when given), would not fit in
    the memory free on ``device``."""
    free = free_memory(device)
    if free is None or batch_size < 1:
        return
    need, what = batch_size * math.prod(size) * 4, "the input"
    if name is not None and need <= free < need * ACTIVATION_GROWTH:
        meta_model, _ = build(name, model_args, in_channels=size[0], device="meta")
        need, what = batch_size * largest_activation(meta_model, size) * 4, "its largest activation"
    if need > free:
        shape = "x".join(str(d) for d in size)
        raise CnnbenchError(f"{what} alone would take {_bytes(need)} for a batch of {batch_size} "
                            f"at {shape}, more than the {_bytes(free)} free on "
                            f"{torch.device(device).type}: reduce --input-size or --batch-size")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
