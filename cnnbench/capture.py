"""Running a model to look inside it: the tensors in nested outputs, one module's output caught
in the middle of a forward pass, and trying the ``meta`` device before the CPU (or after it).

Shared by ``summary``, the receptive fields (``cnnbench.rf``) and the effective receptive field.
"""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from cnnbench.building import build, check_input_fits
from cnnbench.errors import CnnbenchError
from cnnbench.registry import ModelInfo

T = TypeVar("T")

# What a forward pass raises when a model does not run on an input or a device.
RUN_ERRORS = (RuntimeError, ValueError, IndexError, NotImplementedError, TypeError)


def tensors(obj) -> list[torch.Tensor]:
    """The tensors inside nested tuples, lists and dicts (any pytree), in order."""
    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def type_name(module: nn.Module) -> str:
    """The class name; a ScriptModule's is that of the module it was scripted from."""
    if isinstance(module, torch.jit.ScriptModule):
        return module.original_name
    return type(module).__name__


def hook_modules(modules: Iterable[nn.Module], pre_hook=None, hook=None) -> list:
    """Register a forward pre-hook and a forward hook on each module; returns the handles.

    A ScriptModule refuses hooks of its own: PyTorch's global module hooks, filtered to those
    modules, see each call that Python makes to it (not the modules that its TorchScript forward
    calls in turn, which run unseen).
    """
    handles, scripted = [], set()
    for m in modules:
        if isinstance(m, torch.jit.ScriptModule):
            scripted.add(id(m))
            continue
        handles += [m.register_forward_pre_hook(pre_hook)] if pre_hook else []
        handles += [m.register_forward_hook(hook)] if hook else []
    if scripted:
        from torch.nn.modules import module as torch_module

        if pre_hook:
            handles.append(torch_module.register_module_forward_pre_hook(
                lambda m, args: pre_hook(m, args) if id(m) in scripted else None))
        if hook:
            handles.append(torch_module.register_module_forward_hook(
                lambda m, args, out: hook(m, args, out) if id(m) in scripted else None))
    return handles


class _Stop(Exception):
    """Raised from a hook once every wanted tensor is caught: the rest of the pass is not run."""


def capture(model: nn.Module, x: torch.Tensor,
            wanted: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int, int], torch.Tensor]:
    """Run ``model(x)`` until the tensors ``wanted`` are seen, and return them.

    Each wanted tensor is ``(module name, call number from 1, index among the tensors of that
    call's output)``. The forward pass stops at the last one; what was caught is cloned, so a later
    in-place operation cannot change it, and stays in the autograd graph of ``x``.
    """
    wanted = set(wanted)
    modules = dict(model.named_modules())
    by_call: dict[tuple[str, int], list[int]] = {}
    for name, count, index in wanted:
        by_call.setdefault((name, count), []).append(index)
    caught, calls = {}, {}

    def hook(name, output):
        calls[name] = calls.get(name, 0) + 1
        outputs = tensors(output)
        for index in by_call.get((name, calls[name]), []):
            caught[(name, calls[name], index)] = outputs[index].clone()
        if len(caught) == len(wanted):
            raise _Stop

    names = {modules[name]: name for name, _ in by_call}
    handles = hook_modules(names, hook=lambda m, i, o: hook(names[m], o))
    try:
        model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return caught


def on_first_device(name: str, model_args: dict | None, size: tuple[int, int, int],
                    run: Callable[[nn.Module, ModelInfo, str], T], *,
                    devices: tuple[str, ...] = ("meta", "cpu"), batch_size: int = 1,
                    built: dict | None = None) -> T:
    """Build ``name`` on each device in turn and return ``run(model, info, device)`` from the
    first where it works.

    The ``meta`` device gives exact shapes without initialising a weight or doing arithmetic; a
    model that cannot run there (an operation without a meta kernel) runs on the CPU. Where
    neither works the error is one line: which input sizes fit, or the model's own first line.
    ``built`` may hold models already built, by device.
    """
    built = dict(built or {})
    last_error = None
    for device in devices:
        if device not in built:
            built[device] = build(name, model_args, in_channels=size[0], device=device)
        model, info = built[device]
        try:
            return run(model, info, device)
        except RUN_ERRORS as exc:
            last_error = exc
    meta_model = built["meta"][0] if "meta" in built else build(
        name, model_args, in_channels=size[0], device="meta")[0]
    check_input_fits(meta_model, name, size, device="meta")
    raise CnnbenchError(f"{name} failed on input {[batch_size, *size]}: "
                        f"{str(last_error).strip().splitlines()[0]}")
