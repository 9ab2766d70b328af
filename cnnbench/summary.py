"""Layer table of a model: output shapes, parameters and FLOPs per layer, with totals.

Small models run one real forward pass on the CPU. Large ones (over ``META_PARAMS`` parameters)
run on PyTorch's ``meta`` device: shapes and FLOPs come out exact while no weight is initialised
and no arithmetic is done; the meta kernels cost a one-off import of ``torch._dynamo`` (~1.5 s
here), which is cheaper than initialising and running a VGG. Either falls back to the other.
FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: one multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnbench.errors import CnnbenchError
from cnnbench.building import build, check_input_fits, eval_mode


def shape_of(output):
    """Shapes of a tensor or of the tensors inside tuples, lists and dicts."""
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, (list, tuple)):
        return [shape_of(o) for o in output]
    if isinstance(output, dict):
        return {k: shape_of(v) for k, v in output.items()}
    return None


def _tensor_bytes(output) -> int:
    if isinstance(output, torch.Tensor):
        return output.numel() * output.element_size()
    if isinstance(output, (list, tuple)):
        return sum(_tensor_bytes(o) for o in output)
    if isinstance(output, dict):
        return sum(_tensor_bytes(o) for o in output.values())
    return 0


META_PARAMS = 40_000_000


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


def _trace(model: nn.Module, x: torch.Tensor):
    """Run ``model(x)`` once, recording call order, output shapes and per-module FLOPs."""
    FlopCounterMode = _flop_counter()

    names = {m: n for n, m in model.named_modules() if n}
    order, shapes, leaf_bytes = [], {}, [0]

    def pre_hook(module, args):
        name = names[module]
        if name not in shapes:
            order.append(name)
            shapes[name] = None

    def hook(module, args, output):
        shapes[names[module]] = shape_of(output)
        if not any(True for _ in module.children()):
            leaf_bytes[0] += _tensor_bytes(output)

    handles = []
    for module in names:
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            output = model(x)
    finally:
        for h in handles:
            h.remove()
    root = type(model).__name__
    flops = {k.removeprefix(root + "."): sum(v.values())
             for k, v in counter.get_flop_counts().items()}
    return output, order, shapes, flops, counter.get_total_flops(), leaf_bytes[0]


def _run_somewhere(name, model_args, size, batch_size):
    """Trace on the CPU or, for large models, the meta device; fall back to the other."""
    meta_model, info = build(name, model_args, in_channels=size[0], device="meta")
    large = sum(p.numel() for p in meta_model.parameters()) > META_PARAMS
    last_error = None
    for device in ("meta", "cpu") if large else ("cpu", "meta"):
        model, info = (meta_model, info) if device == "meta" else build(
            name, model_args, in_channels=size[0], device=device)
        x = torch.zeros((batch_size, *size), device=device)
        with eval_mode(model):
            try:
                return model, info, x, _trace(model, x)
            except (RuntimeError, ValueError, IndexError, NotImplementedError) as exc:
                last_error = exc
    check_input_fits(meta_model, name, size, device="meta")
    raise CnnbenchError(f"{name} failed on input {list(x.shape)}: "
                        f"{str(last_error).strip().splitlines()[0]}")


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
    """The same summary for any module, run once on CPU tensors of ``input_size`` (no batch)."""
    x = torch.zeros((batch_size, *input_size))
    with eval_mode(model):
        trace = _trace(model, x)
    return {"model": type(model).__name__, "task": None, **_tabulate(model, x, trace, depth)}


def _tabulate(model: nn.Module, x: torch.Tensor, trace, depth: int) -> dict:
    output, order, shapes, flops, total_flops, act_bytes = trace
    modules = dict(model.named_modules())
    shown = [n for n in order if n.count(".") < depth]
    shown_set = set(shown)
    layers = []
    for n in shown:
        module = modules[n]
        children = [f"{n}.{c}" for c, _ in module.named_children()]
        expanded = any(c in shown_set for c in children)
        params = list(module.parameters(recurse=not expanded))
        # A row whose children are shown keeps only what they do not account for, so that
        # the rows add up to the totals.
        own_flops = flops.get(n, 0) - (sum(flops.get(c, 0) for c in children) if expanded else 0)
        layers.append({
            "name": n, "type": type(module).__name__, "depth": n.count(".") + 1,
            "output_shape": shapes[n], "params": sum(p.numel() for p in params),
            "trainable": all(p.requires_grad for p in params), "flops": own_flops,
        })
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    notes = model.summary_notes(x) if hasattr(model, "summary_notes") else []
    return {
        "input_size": list(x.shape), "layers": layers, "outputs": shape_of(output),
        "total_params": total, "trainable_params": trainable,
        "non_trainable_params": total - trainable, "flops": total_flops,
        "param_bytes": sum(p.numel() * p.element_size() for p in params) + buffers,
        "activation_bytes": act_bytes,
        "input_bytes": x.numel() * x.element_size(), "device": str(x.device), "notes": notes,
    }
