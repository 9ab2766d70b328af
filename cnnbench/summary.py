"""Layer table of a model: output shapes, parameters and FLOPs per layer, with totals.

The model runs one forward pass on the CPU. PyTorch's ``meta`` device gives the same shapes and
FLOPs without initialising a weight or doing arithmetic, but its kernels cost a one-off import
(~1.5 s here) that is dearer than running most models: it is used only where the weights would
not fit in memory, where the CPU pass takes longer than ``CPU_SECONDS``, or where the model
does not run on the CPU (``device="auto"``; ``cpu``, ``cuda`` or ``meta`` is the only one tried).
The model is built on ``meta`` and given zeros for weights: initialising them costs more than the
pass itself and changes no shape or FLOP. Options follow torchinfo: columns (input shape, kernel,
parameter percentages, receptive field and stride from :mod:`cnnbench.rf`), train or eval mode,
dtype, device, a row per weight tensor (``verbose``) and several inputs.
FLOPs come from ``torch.utils.flop_counter``'s formulas, counted as ``FlopCounterMode`` counts
them (one multiply-add is 2 FLOPs) by a lighter dispatch mode of ours;
operators it has no formula for (pooling, activations, normalisation) are named, not counted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from cnnbench.building import build, eval_mode
from cnnbench.capture import hook_modules, on_first_device, tensors, type_name
from cnnbench.devices import resolve_device
from cnnbench.errors import CnnbenchError, did_you_mean


def shape_of(output):
    """Shapes of a tensor or of the tensors inside tuples, lists and dicts (None for the rest)."""
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    return tree_map(lambda v: list(v.shape) if isinstance(v, torch.Tensor) else None, output)


# Columns of the table, in display order; torchinfo's names are accepted for ours.
COLUMNS = ("input_shape", "output_shape", "kernel", "params", "params_percent", "trainable",
           "flops", "rf")
DEFAULT_COLUMNS = ("output_shape", "params", "trainable", "flops")
COLUMN_ALIASES = {"input_size": "input_shape", "output_size": "output_shape",
                  "kernel_size": "kernel", "num_params": "params", "mult_adds": "flops"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
MODES = ("eval", "train")
DEVICES = ("auto", "cpu", "cuda", "meta")


def parse_columns(text: str | None) -> tuple[str, ...]:
    """``"kernel,params_percent"`` -> the columns in display order (``all`` for every one)."""
    if not text:
        return DEFAULT_COLUMNS
    if text.strip() == "all":
        return COLUMNS
    wanted = set()
    for word in (w.strip() for w in text.split(",") if w.strip()):
        column = COLUMN_ALIASES.get(word, word)
        if column not in COLUMNS:
            raise CnnbenchError(f"unknown column {word!r}"
                                f"{did_you_mean(word, [*COLUMNS, *COLUMN_ALIASES])}: "
                                f"use {', '.join(COLUMNS)} or all")
        wanted.add(column)
    return tuple(c for c in COLUMNS if c in wanted)


def _check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise CnnbenchError(f"unknown --{what} {value!r}{did_you_mean(value, choices)}: "
                            f"use {', '.join(choices)}")


@contextlib.contextmanager
def _in_mode(model: nn.Module, mode: str):
    """``model`` in train or eval mode for the pass; every module's own flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


CPU_SECONDS = 1.0  # a CPU pass longer than this costs more than the meta device's import


class _TooSlow(RuntimeError):
    """The CPU pass ran past its time: the meta device will be quicker."""


# Operators without a FLOP formula that still do arithmetic (besides those tagged pointwise or
# reduction); copies, views and allocations are not worth naming.
_ARITHMETIC = ("pool", "norm", "upsample", "softmax", "grid_sampler", "embedding", "rsub", "cumsum")


@lru_cache(maxsize=None)
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


def _flop_registry() -> dict:
    """``torch.utils.flop_counter``'s FLOP formulas, by operator, without the import of Triton
    it would cost a summary (0.2 s with CUDA builds of torch): it imports Triton only to recognise
    Triton kernels, which an eager forward pass never runs, so Triton is hidden while the module
    loads (it then counts Triton kernels as nothing) and unhidden at once."""
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

    global _SHAPE_WRAPPER_CODE
    _SHAPE_WRAPPER_CODE = flop_counter.shape_wrapper(len).__code__
    return flop_counter.flop_registry


@lru_cache(maxsize=None)
def _formulas() -> dict:
    """:func:`_flop_registry`, and the CPU's fused attention: it has no formula of its own
    (FlopCounterMode misses it); its work is the flash kernel's, which the meta device's
    decomposition counts as two matmuls."""
    registry = dict(_flop_registry())
    aten = torch.ops.aten
    registry.setdefault(aten._scaled_dot_product_flash_attention_for_cpu,
                        registry[aten._scaled_dot_product_flash_attention])
    return registry


_SHAPE_WRAPPER_CODE = None  # the code of the formulas' shape-taking wrapper, once loaded


# Operators that only ask about a tensor's layout; answered by the tensor itself, never counted.
_METADATA = {torch.ops.aten.sym_is_contiguous.default, torch.ops.aten.is_contiguous.default,
             torch.ops.aten.is_contiguous.memory_format,
             torch.ops.aten.is_strides_like_format.default,
             torch.ops.aten.is_non_overlapping_and_dense.default, torch.ops.aten.size.default,
             torch.ops.aten.sym_size.default, torch.ops.aten.stride.default,
             torch.ops.aten.sym_stride.default, torch.ops.aten.storage_offset.default,
             torch.ops.aten.sym_storage_offset.default, torch.ops.aten.numel.default,
             torch.ops.aten.sym_numel.default, torch.ops.aten.dim.default,
             torch.ops.prim.layout.default}


def _shapes(v):
    """``torch.utils.flop_counter.get_shape`` mapped over an operator's arguments, without the
    pytree machinery (several times the cost of a convolution on a small input)."""
    if isinstance(v, torch.Tensor):
        return v.shape
    if type(v) in (list, tuple):
        return type(v)(_shapes(a) for a in v)
    if type(v) is dict:
        return {k: _shapes(a) for k, a in v.items()}
    return v


def _apply(formula, args, kwargs, out) -> int:
    """``formula(*args, **kwargs, out_val=out)``; one wrapped by ``shape_wrapper`` gets shapes."""
    raw = getattr(formula, "__wrapped__", None)
    if raw is None or formula.__code__ is not _SHAPE_WRAPPER_CODE:
        return formula(*args, **kwargs, out_val=out)
    return raw(*_shapes(args), out_shape=_shapes(out), **_shapes(kwargs))


@lru_cache(maxsize=None)
def _decomposes(func) -> bool:
    """Whether ``func`` has a composite kernel that ``FlopCounterMode`` would run instead."""
    cia = torch._C.DispatchKey.CompositeImplicitAutograd
    return func is not torch.ops.prim.device.default and (
        cia in func.py_kernels or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), cia))


class _FlopCounter(TorchDispatchMode):
    """``FlopCounterMode``'s count (same formulas, same decompositions) without its per-module
    bookkeeping: the total so far, and the operators that did arithmetic without a formula.
    (``FlopCounterMode`` tracks every module with global hooks, which costs more than a small
    model's pass.)"""

    def __init__(self):
        super().__init__()
        self.registry = _formulas()
        self.total = 0
        self.uncounted: set[str] = set()

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Not wrapped to disable dynamo: no model is compiled here, and the wrapper imports
        # ``torch._dynamo`` (1.3 s) and costs a Python frame per operator.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA or isinstance(func, torch._ops.HigherOrderOperator):
            return NotImplemented
        if _decomposes(func):
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = self.registry.get(packet)
        if formula is not None:
            self.total += _apply(formula, args, kwargs, out)
        elif _does_arithmetic(packet):
            self.uncounted.add(_op_label(packet))
        return out


@contextlib.contextmanager
def _no_mha_fastpath():
    """``nn.MultiheadAttention`` (and the Transformer layers) in eval mode without gradients
    take a fused fast path on the CPU, ``_native_multi_head_attention``, that has no FLOP
    formula: vit_b_16 would lose a third of its FLOPs, and differ from the meta device. The
    ordinary path gives both the same count."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@dataclass
class Trace:
    """What one forward pass showed of each module, by qualified name (the model itself is "")."""

    output: object
    first_call: dict[str, int]  # the order in which modules were first entered
    shapes: dict[str, object]  # output shapes of the last call
    input_shapes: dict[str, object]  # shapes of the last call's arguments
    own_flops: dict[str, int]  # FLOPs of the operations run while the module was the innermost
    total_flops: int
    activation_bytes: int  # outputs of all leaf modules
    uncounted: list[str]  # operators that did arithmetic without a FLOP formula


def _trace(model: nn.Module, xs: list[torch.Tensor], seconds: float | None = None) -> Trace:
    """Run ``model(*xs)`` once, recording call order, output shapes and each module's own FLOPs.

    FLOPs are attributed to the innermost module running when they are counted, so that a
    module whose children are called by someone else (a block iterating over its ``ModuleList``)
    still accounts for every FLOP exactly once. With ``seconds``, a pass still running after
    that long stops with :class:`_TooSlow`.
    """
    counter = _FlopCounter()
    deadline = None if seconds is None else time.perf_counter() + seconds

    names = {m: n for n, m in model.named_modules() if n}
    # A ScriptModule's inside is opaque (its children run in TorchScript): it counts as a leaf.
    leaves = {m for m in names
              if next(m.children(), None) is None or isinstance(m, torch.jit.ScriptModule)}
    first_call, shapes, input_shapes, own_flops = {}, {}, {}, defaultdict(int)
    stack, counted, leaf_bytes = [""], [0], [0]

    def account():
        own_flops[stack[-1]] += counter.total - counted[0]
        counted[0] = counter.total

    def pre_hook(module, args):
        if deadline is not None and time.perf_counter() > deadline:
            raise _TooSlow(f"the CPU pass took over {seconds} s")
        account()
        name = names[module]
        stack.append(name)
        first_call.setdefault(name, len(first_call))
        input_shapes[name] = shape_of(args[0] if len(args) == 1 else args)

    def hook(module, args, output):
        account()
        stack.pop()
        shapes[names[module]] = shape_of(output)
        if module in leaves:
            outs = (output,) if isinstance(output, torch.Tensor) else tensors(output)
            leaf_bytes[0] += sum(t.numel() * t.element_size() for t in outs)

    handles = hook_modules(names, pre_hook, hook)
    try:
        with torch.no_grad(), _no_mha_fastpath(), counter:
            output = model(*xs)
            account()
    finally:
        for h in handles:
            h.remove()
    return Trace(output, first_call, shapes, input_shapes, dict(own_flops), counter.total,
                 leaf_bytes[0], sorted(counter.uncounted))


def _available_bytes() -> float:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: assume it fits
        return math.inf


def _materialise(model: nn.Module, device: str) -> nn.Module:
    """A meta-built model on ``device`` with zeros for weights: initialising them costs more
    than the pass itself and changes no shape and no FLOP. (``to_empty`` would cost more:
    its ``empty_like`` of a meta tensor runs in Python; and it unties shared weights.)"""
    made = {}
    for m in model.modules():
        for store, is_param in ((m._parameters, True), (m._buffers, False)):
            for key, t in store.items():
                if t is not None and id(t) not in made:
                    zeros = torch.zeros(t.shape, dtype=t.dtype, device=device)
                    made[id(t)] = (nn.Parameter(zeros, t.requires_grad) if is_param else zeros)
                if t is not None:
                    store[key] = made[id(t)]
    return model


def _sizes(input_size) -> list[tuple[int, ...]]:
    """One size ``(C, H, W)`` or several (one per positional input) -> a list of sizes."""
    if input_size and isinstance(input_size[0], (tuple, list)):
        return [tuple(s) for s in input_size]
    return [tuple(input_size)]


def _run_somewhere(name, model_args, sizes, batch_size, *, mode="eval", dtype="float32",
                   device="auto"):
    """Trace on the CPU; on the meta device where that is quicker or the CPU cannot (see above).
    An explicit ``device`` is the only one tried."""
    meta_model, info = build(name, model_args, in_channels=sizes[0][0], device="meta")
    meta_model.to(DTYPES[dtype])
    weights = [*meta_model.parameters(), *meta_model.buffers()]
    weight_bytes = sum(t.numel() * t.element_size() for t in weights)
    if device == "auto":
        devices = ("cpu", "meta") if 4 * weight_bytes < _available_bytes() else ("meta",)
    else:
        devices = (device,)
    built = {"meta": (meta_model, info)} if devices[0] == "meta" else {
        devices[0]: (_materialise(meta_model, devices[0]), info)}

    def run(model, info, on):
        if dtype != "float32":
            model.to(DTYPES[dtype])
        xs = [torch.zeros((batch_size, *s), device=on, dtype=DTYPES[dtype]) for s in sizes]
        seconds = CPU_SECONDS if on == "cpu" and device == "auto" else None
        with _in_mode(model, mode):
            return model, info, xs, _trace(model, xs, seconds)

    return on_first_device(name, model_args, sizes[0], run, devices=devices,
                           batch_size=batch_size, built=built)


def _check_options(batch_size, depth, mode, dtype, device) -> None:
    if batch_size < 1 or depth < 0:
        raise CnnbenchError("--batch-size must be >= 1 and --depth >= 0")
    _check_choice("mode", mode, MODES)
    _check_choice("dtype", dtype, DTYPES)
    _check_choice("device", device, DEVICES)
    if device == "cuda":
        resolve_device(device)  # one line where there is no GPU


def summarize(name: str, input_size=None, *, batch_size: int = 1, depth: int = 3,
              model_args: dict | None = None, columns=DEFAULT_COLUMNS, mode: str = "eval",
              dtype: str = "float32", device: str = "auto", verbose: bool = False) -> dict:
    """The summary of registered model (or ``torchvision:<name>``) ``name`` as a JSON-ready dict.

    ``input_size`` is ``(C, H, W)`` or a list of them, one per positional input of ``forward``.
    Layers get the keys of ``columns`` beyond the default ones (``input_shape``, ``kernel_size``,
    ``params_percent``, ``receptive_field`` and ``stride``), and ``weights`` with ``verbose``.
    """
    from cnnbench.models import get_model_info

    sizes = _sizes(input_size or get_model_info(name).input_size)
    columns = parse_columns(",".join(columns)) if not isinstance(columns, str) else \
        parse_columns(columns)
    _check_options(batch_size, depth, mode, dtype, device)
    model, info, xs, trace = _run_somewhere(name, model_args, sizes, batch_size, mode=mode,
                                            dtype=dtype, device=device)
    fields = None
    if "rf" in columns:
        from cnnbench.rf.analysis import analyse

        fields = _fields(analyse(name, sizes[0], model_args) if _traceable(sizes) else None)
    return {"model": info.name, "task": info.task,
            **_tabulate(model, xs, trace, depth, columns, verbose, fields)}


def summarize_module(model: nn.Module, input_size, *, batch_size: int = 1, depth: int = 3,
                     columns=DEFAULT_COLUMNS, mode: str = "eval", verbose: bool = False) -> dict:
    """The same summary for any module, run once on zeros of ``input_size`` (no batch; a list of
    sizes for several inputs) on the device and in the dtype of its parameters (the CPU and
    float32 for a module without any)."""
    from cnnbench.rf.analysis import analyse_module

    sizes = _sizes(input_size)
    columns = parse_columns(columns if isinstance(columns, str) else ",".join(columns))
    _check_options(batch_size, depth, mode, "float32", "auto")
    first = next(model.parameters(), torch.empty(0))
    dtype = first.dtype if first.is_floating_point() else torch.float32
    xs = [torch.zeros((batch_size, *s), device=first.device, dtype=dtype) for s in sizes]
    with _in_mode(model, mode):
        trace = _trace(model, xs)
    fields = None
    if "rf" in columns:
        fields = _fields(analyse_module(model, sizes[0], device=first.device)
                         if _traceable(sizes) else None)
    return {"model": type_name(model), "task": None,
            **_tabulate(model, xs, trace, depth, columns, verbose, fields)}


def _traceable(sizes) -> bool:
    """Whether the receptive fields can be traced: one image input (C, H, W). Otherwise (several
    inputs, a 1-D signal, a volume) the ``rf`` column is ``--``."""
    return len(sizes) == 1 and len(sizes[0]) == 3


def _fields(analysis) -> dict[str, dict]:
    """Receptive field and stride of each module's first output, where it is a spatial map
    whose field is known (no operation without a rule upstream)."""
    fields = {}
    for row in analysis.rows if analysis is not None else []:
        f = row.field
        if "#" in row.name or f.dims is None or any("uninterpreted" in fl for fl in f.flags):
            continue
        summary = f.summary()
        fields.setdefault(row.name.split("[")[0], {"receptive_field": summary["receptive_field"],
                                                   "stride": summary["stride"]})
    return fields


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


def _inside_script(model: nn.Module) -> set[str]:
    """Modules inside a ScriptModule (below its own row): TorchScript runs them, unseen."""
    return {f"{n}.{c}" if n else c for n, m in model.named_modules()
            if isinstance(m, torch.jit.ScriptModule) for c, _ in m.named_modules() if c}


def _counts(model: nn.Module) -> dict[int, int]:
    """Parameters counted as torchinfo counts them, by ``id``, where that is not ``numel``: a
    weight pruned by ``torch.nn.utils.prune`` (``weight_orig`` and a ``weight_mask`` buffer)
    counts its unmasked entries."""
    counts = {}
    for m in model.modules():
        for key, p in m.named_parameters(recurse=False):
            mask = getattr(m, key[:-len("_orig")] + "_mask", None) \
                if key.endswith("_orig") else None
            if isinstance(mask, torch.Tensor) and not mask.is_meta:
                counts[id(p)] = int(mask.count_nonzero())
    return counts


def _pruning_note(model: nn.Module, counts: dict[int, int]) -> list[str]:
    pruned = [(n.removesuffix("_orig"), p) for n, p in model.named_parameters()
              if id(p) in counts]
    if not pruned:
        return []
    kept, dense = sum(counts[id(p)] for _, p in pruned), sum(p.numel() for _, p in pruned)
    return [f"pruned (torch.nn.utils.prune) {', '.join(n for n, _ in pruned)}: params count "
            f"the {kept:,} unmasked of {dense:,} weights, as torchinfo does; memory and FLOPs "
            f"are the dense tensors'"]


def _trainable(params) -> bool | str:
    """True, False, or "partly" where some of a row's parameters are frozen."""
    flags = {p.requires_grad for p in params}
    return "partly" if len(flags) > 1 else flags != {False}


def _kernel(module: nn.Module) -> list[int] | None:
    k = getattr(module, "kernel_size", None)
    if k is None:
        return None
    return list(k) if isinstance(k, (tuple, list)) else [k, k]


def _tabulate(model: nn.Module, xs: list[torch.Tensor], trace: Trace, depth: int,
              columns=DEFAULT_COLUMNS, verbose: bool = False, fields: dict | None = None) -> dict:
    modules = dict(model.named_modules())
    order, never_ran = _module_tree(model, trace)
    inclusive = defaultdict(int)  # FLOPs of a module and everything below it
    for n in reversed(order):
        inclusive[n] += trace.own_flops.get(n, 0)
        inclusive[n.rpartition(".")[0]] += inclusive[n]
    params = list(model.parameters())
    counts = _counts(model)

    def count(ps):
        return sum(counts.get(id(p), p.numel()) for p in ps)

    total = count(params)
    layers, counted = [], set()
    for n in order:
        level = n.count(".") + 1
        if level > depth:
            continue
        # A row whose children are shown keeps only what they do not account for, so that
        # the rows add up to the totals; a parameter shared by two modules counts once.
        expanded = level < depth
        own = [(k, p) for k, p in modules[n].named_parameters(recurse=not expanded)
               if id(p) not in counted]
        counted.update(id(p) for _, p in own)
        row = {
            "name": n, "type": type_name(modules[n]), "depth": level,
            "output_shape": trace.shapes.get(n), "params": count(p for _, p in own),
            "trainable": _trainable(p for _, p in own),
            "flops": trace.own_flops.get(n, 0) if expanded else inclusive[n],
        }
        if "input_shape" in columns:
            row["input_shape"] = trace.input_shapes.get(n)
        if "kernel" in columns:
            row["kernel_size"] = _kernel(modules[n])
        if "params_percent" in columns:
            row["params_percent"] = 100 * row["params"] / total if total else 0.0
        if fields is not None:
            row.update(fields.get(n, {"receptive_field": None, "stride": None}))
        if verbose:
            row["weights"] = [{"name": k, "shape": list(p.shape), "params": count([p]),
                               "trainable": p.requires_grad} for k, p in own]
        layers.append(row)
    trainable = count(p for p in params if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    x = xs[0]
    notes = []
    if hasattr(model, "summary_notes"):  # a pass of its own: in eval mode (a batch of 1 at a
        with torch.no_grad(), eval_mode(model):  # 1x1 map breaks training-mode batch norm)
            notes = model.summary_notes(x)
    notes += _pruning_note(model, counts)
    opaque = _inside_script(model)
    scripts = [n or "the model" for n in ["", *order]
               if n not in opaque and isinstance(modules[n], torch.jit.ScriptModule)]
    if scripts:
        notes.append("TorchScript modules (their inner rows show parameters; output shape --, "
                     "FLOPs counted on the module's own row): " + ", ".join(scripts))
    idle = [n for n in order if n in never_ran and n not in opaque
            and n.rpartition(".")[0] not in never_ran]
    if idle:
        notes.append("not run by this forward pass (output shape --): " + ", ".join(idle))
    return {
        "input_size": list(x.shape) if len(xs) == 1 else [list(t.shape) for t in xs],
        "layers": layers, "outputs": shape_of(trace.output),
        "total_params": total, "trainable_params": trainable,
        "non_trainable_params": total - trainable, "flops": trace.total_flops,
        "param_bytes": sum(p.numel() * p.element_size() for p in params) + buffers,
        "activation_bytes": trace.activation_bytes,
        "input_bytes": sum(t.numel() * t.element_size() for t in xs), "device": str(x.device),
        "notes": notes, "uncounted_ops": trace.uncounted,
    }
