"""Layer table of a model: output shapes, parameters and FLOPs per layer, with totals.

The model runs one forward pass on the CPU. PyTorch's ``meta`` device gives the same shapes and
FLOPs without initialising a weight or doing arithmetic, but its kernels cost a one-off import
(~1.5 s here) that is dearer than running most models: it is used only where the weights would
not fit in memory, where the CPU pass takes longer than ``CPU_SECONDS``, or where the model
does not run on the CPU. Large models (over ``META_PARAMS`` parameters) skip the initialisation
of their weights, which costs more than the pass itself and does not change a shape or a FLOP.
FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: one multiply-add counts as 2 FLOPs;
operators it has no formula for (pooling, activations, normalisation) are named, not counted.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_map

from cnnbench.building import build, eval_mode
from cnnbench.capture import on_first_device, tensors
from cnnbench.errors import CnnbenchError


def shape_of(output):
    """Shapes of a tensor or of the tensors inside tuples, lists and dicts (None for the rest)."""
    return tree_map(lambda v: list(v.shape) if isinstance(v, torch.Tensor) else None, output)


META_PARAMS = 40_000_000
CPU_SECONDS = 1.0  # a CPU pass longer than this costs more than the meta device's import


class _TooSlow(RuntimeError):
    """The CPU pass ran past its time: the meta device will be quicker."""


# Operators without a FLOP formula that still do arithmetic (besides those tagged pointwise or
# reduction); copies, views and allocations are not worth naming.
_ARITHMETIC = ("pool", "norm", "upsample", "softmax", "grid_sampler", "embedding", "rsub", "cumsum")


def _does_arithmetic(op) -> bool:
    name = op.__name__
    tags = getattr(op, op.overloads()[0]).tags
    if name.rstrip("_") in ("clone", "copy", "fill", "zero"):
        return False
    return (torch.Tag.pointwise in tags or torch.Tag.reduction in tags
            or any(word in name for word in _ARITHMETIC))


def _op_label(op) -> str:
    """``aten._native_batch_norm_legit_no_training`` -> batch_norm, ``relu_`` -> relu."""
    name = op.__name__.strip("_")
    return "batch_norm" if "batch_norm" in name else name


def _flop_counter():
    """``FlopCounterMode``, without the two imports it would cost a summary.

    * Importing ``torch.utils.flop_counter`` imports Triton (0.2 s with CUDA builds of torch) only
      to recognise Triton kernels, which an eager forward pass never runs: hide Triton while the
      module loads (it then counts Triton kernels as nothing) and unhide it at once.
    * Its ``__torch_dispatch__`` is wrapped to disable dynamo, and the wrapper imports
      ``torch._dynamo`` (1.3 s) on first use. Outside ``torch.compile`` the disabling changes
      nothing, so mark the function as already wrapped.
    """
    import logging
    import sys

    if "torch.utils.flop_counter" not in sys.modules and "triton" not in sys.modules:
        logger = logging.getLogger("torch.utils.flop_counter")
        level, logger.level = logger.level, logging.ERROR  # its "triton not found" warning
        sys.modules["triton"] = None  # makes ``import triton...`` raise ImportError
        try:
            import torch.utils.flop_counter  # noqa: F401
        finally:
            del sys.modules["triton"]
            logger.setLevel(level)
    from torch.utils import flop_counter

    for cls in vars(flop_counter).values():
        dispatch = getattr(cls, "__torch_dispatch__", None) if isinstance(cls, type) else None
        fn = getattr(dispatch, "__wrapped__", None)
        if fn is not None and not hasattr(fn, "__dynamo_disable"):
            fn.__dynamo_disable = fn
    return flop_counter.FlopCounterMode


@dataclass
class Trace:
    """What one forward pass showed of each module, by qualified name (the model itself is "")."""

    output: object
    first_call: dict[str, int]  # the order in which modules were first entered
    shapes: dict[str, object]  # output shapes of the last call
    own_flops: dict[str, int]  # FLOPs of the operations run while the module was the innermost
    total_flops: int
    activation_bytes: int  # outputs of all leaf modules
    uncounted: list[str]  # operators that did arithmetic without a FLOP formula


def _trace(model: nn.Module, x: torch.Tensor, seconds: float | None = None) -> Trace:
    """Run ``model(x)`` once, recording call order, output shapes and each module's own FLOPs.

    FLOPs are attributed to the innermost module running when they are counted, so that a
    module whose children are called by someone else (a block iterating over its ``ModuleList``)
    still accounts for every FLOP exactly once. With ``seconds``, a pass still running after
    that long stops with :class:`_TooSlow`.
    """
    counter = _flop_counter()(display=False)
    count_flops, uncounted = counter._count_flops, set()

    def count(op, out, args, kwargs):
        if op not in counter.flop_registry and _does_arithmetic(op):
            uncounted.add(_op_label(op))
        return count_flops(op, out, args, kwargs)

    counter._count_flops = count
    deadline = None if seconds is None else time.perf_counter() + seconds

    names = {m: n for n, m in model.named_modules() if n}
    first_call, shapes, own_flops = {}, {}, defaultdict(int)
    stack, counted, leaf_bytes = [""], [0], [0]

    def account():
        total = counter.get_total_flops()
        own_flops[stack[-1]] += total - counted[0]
        counted[0] = total

    def pre_hook(module, args):
        if deadline is not None and time.perf_counter() > deadline:
            raise _TooSlow(f"the CPU pass took over {seconds} s")
        account()
        stack.append(names[module])
        first_call.setdefault(names[module], len(first_call))

    def hook(module, args, output):
        account()
        stack.pop()
        shapes[names[module]] = shape_of(output)
        if not any(True for _ in module.children()):
            leaf_bytes[0] += sum(t.numel() * t.element_size() for t in tensors(output))

    handles = []
    for module in names:
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), counter:
            output = model(x)
            account()
    finally:
        for h in handles:
            h.remove()
    return Trace(output, first_call, shapes, dict(own_flops), counter.get_total_flops(),
                 leaf_bytes[0], sorted(uncounted))


def _available_bytes() -> float:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: assume it fits
        return math.inf


def _run_somewhere(name, model_args, size, batch_size):
    """Trace on the CPU; on the meta device where that is quicker or the CPU cannot (see above)."""
    meta_model, info = build(name, model_args, in_channels=size[0], device="meta")
    weights = [*meta_model.parameters(), *meta_model.buffers()]
    weight_bytes = sum(t.numel() * t.element_size() for t in weights)
    large = sum(p.numel() for p in meta_model.parameters()) > META_PARAMS
    built = {"meta": (meta_model, info)}
    if large:  # uninitialised CPU weights: allocating them is all it costs
        built["cpu"] = (build(name, model_args, in_channels=size[0], device="meta")[0]
                        .to_empty(device="cpu"), info)

    def run(model, info, device):
        x = torch.zeros((batch_size, *size), device=device)
        with eval_mode(model):
            return model, info, x, _trace(model, x, CPU_SECONDS if device == "cpu" else None)

    fits = 4 * weight_bytes < _available_bytes()
    return on_first_device(name, model_args, size, run,
                           devices=("cpu", "meta") if fits else ("meta",),
                           batch_size=batch_size, built=built)


def summarize(name: str, input_size: tuple[int, int, int] | None = None, *, batch_size: int = 1,
              depth: int = 3, model_args: dict | None = None) -> dict:
    """The summary of registered model (or ``torchvision:<name>``) ``name`` as a JSON-ready dict."""
    from cnnbench.registry import get_model_info

    size = tuple(input_size or get_model_info(name).input_size)
    if batch_size < 1 or depth < 0:
        raise CnnbenchError("--batch-size must be >= 1 and --depth >= 0")
    model, info, x, trace = _run_somewhere(name, model_args, size, batch_size)
    return {"model": info.name, "task": info.task, **_tabulate(model, x, trace, depth)}


def summarize_module(model: nn.Module, input_size: tuple[int, ...], *, batch_size: int = 1,
                     depth: int = 3) -> dict:
    """The same summary for any module, run once on zeros of ``input_size`` (no batch) on the
    device of its parameters (the CPU for a module without any)."""
    device = next(model.parameters(), torch.empty(0)).device
    x = torch.zeros((batch_size, *input_size), device=device)
    with eval_mode(model):
        trace = _trace(model, x)
    return {"model": type(model).__name__, "task": None, **_tabulate(model, x, trace, depth)}


def _module_tree(model: nn.Module, trace: Trace) -> tuple[list[str], set[str]]:
    """Every module in display order, and those that never ran.

    Display order is the module tree, depth first, with siblings in the order they first ran
    (a container that was never called itself, such as a ``ModuleList`` its owner iterates
    over, takes the place of its first child); a module that never ran (an auxiliary head in
    eval mode) follows the sibling defined before it.
    """
    children: dict[str, list[str]] = defaultdict(list)
    names = [n for n, _ in model.named_modules()]
    for n in names[1:]:
        children[n.rpartition(".")[0]].append(n)
    first = {}
    for n in reversed(names):
        first[n] = min([trace.first_call.get(n, math.inf)] + [first[c] for c in children[n]])

    def key_of(siblings):
        keys, previous = {}, -1.0
        for c in siblings:
            keys[c] = first[c] if first[c] < math.inf else previous + 0.5
            previous = keys[c]
        return keys

    order = []

    def visit(n):
        keys = key_of(children[n])
        for c in sorted(children[n], key=keys.__getitem__):
            order.append(c)
            visit(c)

    visit("")
    return order, {n for n in names if first[n] == math.inf}


def _tabulate(model: nn.Module, x: torch.Tensor, trace: Trace, depth: int) -> dict:
    modules = dict(model.named_modules())
    order, never_ran = _module_tree(model, trace)
    inclusive = defaultdict(int)  # FLOPs of a module and everything below it
    for n in reversed(order):
        inclusive[n] += trace.own_flops.get(n, 0)
        inclusive[n.rpartition(".")[0]] += inclusive[n]
    layers, counted = [], set()
    for n in order:
        level = n.count(".") + 1
        if level > depth:
            continue
        # A row whose children are shown keeps only what they do not account for, so that
        # the rows add up to the totals; a parameter shared by two modules counts once.
        expanded = level < depth
        params = [p for p in modules[n].parameters(recurse=not expanded) if id(p) not in counted]
        counted.update(id(p) for p in params)
        layers.append({
            "name": n, "type": type(modules[n]).__name__, "depth": level,
            "output_shape": trace.shapes.get(n), "params": sum(p.numel() for p in params),
            "trainable": all(p.requires_grad for p in params),
            "flops": trace.own_flops.get(n, 0) if expanded else inclusive[n],
        })
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    notes = model.summary_notes(x) if hasattr(model, "summary_notes") else []
    idle = [n for n in order if n in never_ran and n.rpartition(".")[0] not in never_ran]
    if idle:
        notes.append("not run by this forward pass (output shape --): " + ", ".join(idle))
    return {
        "input_size": list(x.shape), "layers": layers, "outputs": shape_of(trace.output),
        "total_params": total, "trainable_params": trainable,
        "non_trainable_params": total - trainable, "flops": trace.total_flops,
        "param_bytes": sum(p.numel() * p.element_size() for p in params) + buffers,
        "activation_bytes": trace.activation_bytes,
        "input_bytes": x.numel() * x.element_size(), "device": str(x.device), "notes": notes,
        "uncounted_ops": trace.uncounted,
    }
