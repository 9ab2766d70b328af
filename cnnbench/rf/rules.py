"""One rule per family of tensor operations: the field of its result, and its linearisation.

A rule reads one call (a :class:`Call`) and returns the :class:`Field` of the result (a list for
an operation with several results; None for a result that does not depend on the values). Beside
it sits the rule's linearisation, what :func:`cnnbench.rf.verify.verify` runs instead of the
operation: the identity for activations and normalisation, averaging for max pooling, positive
constant weights for convolutions and dense layers; an operation registered without one runs as
it is. An operation without a rule is flagged by the tracer, never taken for the identity.

Adding an operation: ``@rule("name", linear=...)`` on a function of a :class:`Call`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from cnnbench.capture import tensors
from cnnbench.rf.field import Axis, Field, concat_axes, join_axes, num

DEFORMABLE_NOTE = "deformable: regular-grid field; learned offsets can extend it"


class Unknown(Exception):
    """A rule cannot read this call (the message says why)."""


@dataclass
class Call:
    """One call of a tensor operation whose inputs carry fields."""

    name: str
    args: tuple
    kwargs: dict
    out: object
    inputs: list  # (tensor, Field) of every input tensor that carries a field, in order
    tracer: object  # has note(text), field_of(tensor) and grid_sources

    @property
    def x(self) -> torch.Tensor:
        return self.inputs[0][0]

    @property
    def fx(self) -> Field:
        return self.inputs[0][1]

    @property
    def y(self) -> torch.Tensor:
        return tensors(self.out)[0]

    def arg(self, i: int, key: str, default=None):
        return arg(self.args, self.kwargs, i, key, default)

    def note(self, text: str) -> None:
        self.tracer.note(text)


@dataclass(frozen=True)
class Rule:
    field: Callable[[Call], Field | list | None]
    linear: Callable | None  # (func, args, kwargs) -> the linearised result; None: run as is


RULES: dict[str, Rule] = {}


def rule(*names: str, linear: Callable | None = None):
    """Register the decorated function as the field rule of ``names`` (each name once)."""
    def register(fn):
        for name in names:
            if name in RULES:
                raise ValueError(f"two receptive-field rules for {name!r}")
            RULES[name] = Rule(fn, linear)
        return fn
    return register


# --- reading the arguments of torch functions ---

def arg(args, kwargs, i: int, key: str, default=None):
    if key in kwargs:
        return kwargs[key]
    return args[i] if len(args) > i else default


def pair(v, default=None):
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return default
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


_DUNDER_BINARY = {"add", "sub", "mul", "truediv", "floordiv", "pow", "matmul", "and", "or", "xor",
                  "mod"}


def op_name(func) -> str:
    """The rule name of a torch function, method or operator (``__radd__`` -> add, ``relu_`` ->
    relu)."""
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name.startswith(("r", "i")) and name[1:] in _DUNDER_BINARY:
            name = name[1:]
    elif name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return {"truediv": "div", "floordiv": "div", "concat": "cat", "concatenate": "cat"}.get(name, name)


def spatial_axes(c: Call) -> tuple[Axis, Axis]:
    if c.fx.dims != (c.x.dim() - 2, c.x.dim() - 1):
        raise Unknown("spatial dimensions are not the last two")
    return c.fx.axes


def spatial_sizes(c: Call) -> list[tuple[Axis, int, int]]:
    """Per spatial axis (h, w): its field, and its size in the input and in the output."""
    return [(a, c.x.shape[-2 + k], c.y.shape[-2 + k]) for k, a in enumerate(spatial_axes(c))]


# --- linearisations shared by several rules ---

def identity(func, args, kwargs):
    """A floating-point input passes unchanged (activations, dropout, normalisation)."""
    x = arg(args, kwargs, 0, "input")
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x
    return func(*args, **kwargs)


def constant_conv(x, weight, geometry: dict, groups: int, transposed: bool = False):
    """A convolution whose weights all equal 1/fan-in, computed cheaply but exactly.

    With a constant weight every output channel of a group is the same window sum of the mean of
    the group's input channels, so one channel per group is convolved and then repeated; the
    geometry (kernel, stride, padding, dilation, groups) is the real call's.
    """
    n, c = x.shape[:2]
    mean = x.reshape(n, groups, c // groups, *x.shape[2:]).mean(2)
    kernel = weight.shape[-2:]
    ones = x.new_full((groups, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
    conv = F.conv_transpose2d if transposed else F.conv2d
    y = conv(mean, ones, groups=groups, **geometry)
    out_c = weight.shape[1] * groups if transposed else weight.shape[0]
    return y.repeat_interleave(out_c // groups, dim=1)


def _with_indices_of(real, y):
    """``y`` in place of the values of a pooling result that may carry indices."""
    return (y, real[1]) if isinstance(real, tuple) else y


# --- where paths meet ---

def join(c: Call, inputs, y, shift_from=None) -> Field:
    """Paths meet (pointwise ops with several inputs, channel concatenation, stack)."""
    spatial = [(t, f) for t, f in inputs if f.dims is not None]
    flags = frozenset().union(*(f.flags for _, f in inputs))
    if spatial and len(spatial) != len(inputs):
        raise Unknown("mixes a flattened tensor with a map")
    if not spatial:  # flattened tensors: element-wise, each keeps its unit
        return Field(inputs[0][1].axes, None, flags)
    nd = y.dim()
    if shift_from is not None:  # stack inserts a dimension
        at = shift_from % nd
        dims = [tuple(d + (d >= at) for d in f.dims) for _, f in spatial]
    else:  # broadcasting aligns trailing dimensions
        dims = [tuple(d + nd - t.dim() for d in f.dims) for t, f in spatial]
    n = tuple(y.shape[d] for d in dims[0])
    fields = [f for _, f in spatial]
    if all(f is fields[0] for f in fields):
        return Field(fields[0].axes, dims[0], flags)
    axes = []
    for k in range(2):
        group = [f.axes[k] for f in fields]
        if any(a.n not in (1, n[k]) for a in group):
            raise Unknown("paths of different sizes")
        axes.append(join_axes(group, n[k]))
    _check_alignment(c, fields, n)
    if any(f.axes[k].n == 1 < n[k] for f in fields for k in range(2)):
        c.note("a 1x1 map (global context, e.g. squeeze-excitation) is broadcast: "
               "every unit reads the whole input")
    return Field(tuple(axes), dims[0], flags)


def _check_alignment(c: Call, fields, n) -> None:
    if len(fields) < 2:
        return
    for k, axis in enumerate("hw"):
        # A map whose units all read the same region (after a global context) has no grid.
        maps = [f.axes[k] for f in fields if f.axes[k].n == n[k] > 1
                and np.ptp(f.axes[k].centres()) > 0]
        if len(maps) < 2:
            continue
        first = maps[0]
        for other in maps[1:]:
            if (abs(other.jump - first.jump) > 1e-9
                    or not np.allclose(other.centres(), first.centres())):
                shift = float(np.abs(other.centres() - first.centres()).max())
                c.note(f"paths misaligned on {axis}: unit centres differ by up to "
                       f"{num(shift)} px (strides {num(first.jump)} and {num(other.jump)})")
                break


# --- per-unit operations ---

ACTIVATIONS = """
relu relu6 hardtanh sigmoid tanh gelu silu hardswish hardsigmoid mish elu selu celu leaky_relu
softplus prelu rrelu threshold logsigmoid softsign tanhshrink hardshrink softshrink
dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout feature_dropout
batch_norm local_response_norm
abs exp log log1p sqrt rsqrt pow square reciprocal clamp clip clamp_min clamp_max sign erf erfc
logical_not logical_and logical_or and or xor mod fmod remainder bitwise_and
""".split()
ARITHMETIC = """
add sub mul div true_divide floor_divide neg where maximum minimum addcmul addcdiv lerp
eq ne lt le gt ge
float double half bfloat16 to type type_as contiguous clone detach cpu cuda requires_grad
data masked_fill nan_to_num
""".split()


@rule(*ACTIVATIONS, linear=identity)
@rule(*ARITHMETIC)  # sums and products of positive maps stay positive: run as they are
def pointwise(c: Call) -> Field:
    """Each unit by itself (activations, arithmetic, casts); with several inputs paths meet."""
    return join(c, c.inputs, c.y)


@rule("group_norm", "instance_norm", "layer_norm", linear=identity)
def normalisation(c: Call) -> Field:
    if c.fx.dims is not None:
        c.note(f"{c.name}: statistics over the map are ignored (not part of the field)")
    return join(c, c.inputs, c.y)


@rule(*"""
size dim numel shape dtype device is_contiguous zeros_like ones_like empty_like full_like rand_like
randn_like new_zeros new_ones new_empty new_full new_tensor stride is_floating_point element_size
requires_grad_ ndim ndimension grad_fn layout is_cuda is_meta T
""".split())
def no_dependency(c: Call) -> None:
    """Results that do not depend on the values they are given."""
    return None


# --- windows: convolution and pooling ---

def _linear_conv2d(func, args, kwargs):
    a = lambda i, k, d=None: arg(args, kwargs, i, k, d)  # noqa: E731
    return constant_conv(a(0, "input"), a(1, "weight"), dict(
        stride=a(3, "stride", 1), padding=a(4, "padding", 0), dilation=a(5, "dilation", 1)),
        a(6, "groups", 1))


def _linear_conv_transpose2d(func, args, kwargs):
    a = lambda i, k, d=None: arg(args, kwargs, i, k, d)  # noqa: E731
    return constant_conv(a(0, "input"), a(1, "weight"), dict(
        stride=a(3, "stride", 1), padding=a(4, "padding", 0),
        output_padding=a(5, "output_padding", 0), dilation=a(7, "dilation", 1)),
        a(6, "groups", 1), transposed=True)


def _linear_deform_conv2d(func, args, kwargs):
    if len(args) < 14:
        return func(*args, **kwargs)
    # With zero offsets and a unit mask it is the plain convolution of its regular grid.
    return constant_conv(args[0], args[1], dict(stride=args[5:7], padding=args[7:9],
                                                dilation=args[9:11]), int(args[11]))


@rule("conv2d", linear=_linear_conv2d)
@rule("conv_transpose2d", linear=_linear_conv_transpose2d)
@rule("deform_conv2d", linear=_linear_deform_conv2d)
@rule("convolution")
def conv(c: Call) -> Field:
    h, w = spatial_axes(c)
    kernel = tuple(c.arg(1, "weight").shape[-2:])
    y = c.y
    if c.name == "deform_conv2d":
        a = c.args
        stride, padding, dilation = (a[5], a[6]), (a[7], a[8]), (a[9], a[10])
        c.note(DEFORMABLE_NOTE)
        flags = {"deformable upstream"}
    elif c.name == "conv_transpose2d" or (c.name == "convolution"
                                          and c.arg(6, "transposed", False)):
        if c.name == "convolution":
            stride, padding, dilation = (pair(c.arg(i, k)) for i, k in
                                         ((3, "stride"), (4, "padding"), (5, "dilation")))
        else:
            stride = pair(c.arg(3, "stride", 1))
            padding = pair(c.arg(4, "padding", 0))
            dilation = pair(c.arg(7, "dilation", 1))
        return c.fx.with_axes([_transposed(a, y.shape[-2 + k], kernel[k], stride[k], padding[k],
                                           dilation[k]) for k, a in enumerate((h, w))])
    else:
        stride = pair(c.arg(3, "stride", 1))
        dilation = pair(c.arg(5, "dilation", 1))
        padding = c.arg(4, "padding", 0)
        if isinstance(padding, str):
            padding = ((0, 0) if padding == "valid" else
                       tuple(dilation[k] * (kernel[k] - 1) // 2 for k in range(2)))
        padding = pair(padding)
        flags = set()
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    return c.fx.with_axes([a.window(y.shape[-2 + k], kernel[k], stride[k], padding[k], dilation[k])
                           for k, a in enumerate((h, w))], flags=flags)


def _transposed(a: Axis, n_out: int, kernel: int, stride: int, padding: int, dilation: int) -> Axis:
    """Transposed convolution: output ``o`` gets input ``i`` through tap ``t`` when
    ``i*stride - padding + t*dilation == o``; up-sampling by ``stride`` divides the jump."""
    num_ = np.arange(n_out)[:, None] + padding - np.arange(kernel)[None, :] * dilation
    return a.take(np.floor_divide(num_, stride), num_ % stride == 0, a.jump / stride)


def _linear_max_pool(func, args, kwargs):
    """Max pooling becomes averaging over the same windows (dilated ones included)."""
    x = arg(args, kwargs, 0, "input")
    with torch.no_grad():
        real = func(x.detach(), *args[1:], **kwargs)
    shape = (real[0] if isinstance(real, tuple) else real).shape[-2:]
    kernel = pair(arg(args, kwargs, 1, "kernel_size"))
    stride = pair(arg(args, kwargs, 2, "stride"), kernel)
    padding = pair(arg(args, kwargs, 3, "padding", 0))
    dilation = pair(arg(args, kwargs, 4, "dilation", 1))
    if dilation == (1, 1):
        y = F.avg_pool2d(x, kernel, stride, padding, ceil_mode=bool(
            arg(args, kwargs, 5, "ceil_mode", False)), count_include_pad=True)
        return _with_indices_of(real, y)
    extra = [max(0, (shape[k] - 1) * stride[k] + dilation[k] * (kernel[k] - 1) + 1
                 - x.shape[-2 + k] - 2 * padding[k]) for k in range(2)]
    padded = F.pad(x, (padding[1], padding[1] + extra[1], padding[0], padding[0] + extra[0]))
    c = x.shape[1]
    weight = x.new_full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
    y = F.conv2d(padded, weight, stride=stride, dilation=dilation, groups=c)
    return _with_indices_of(real, y[..., :shape[0], :shape[1]])


@rule("max_pool2d", "max_pool2d_with_indices", linear=_linear_max_pool)
@rule("avg_pool2d", "lp_pool2d")
def pool(c: Call) -> Field:
    h, w = spatial_axes(c)
    if c.name == "lp_pool2d":
        kernel = pair(c.arg(2, "kernel_size"))
        stride, padding, dilation = pair(c.arg(3, "stride"), kernel), (0, 0), (1, 1)
    else:
        kernel = pair(c.arg(1, "kernel_size"))
        stride = pair(c.arg(2, "stride"), kernel)
        padding = pair(c.arg(3, "padding", 0))
        dilation = (pair(c.arg(4, "dilation", 1)) if "max" in c.name else (1, 1))
    return c.fx.with_axes([a.window(c.y.shape[-2 + k], kernel[k], stride[k], padding[k],
                                    dilation[k]) for k, a in enumerate((h, w))])


def _linear_adaptive_max_pool(func, args, kwargs):
    real = func(*args, **kwargs)
    y = F.adaptive_avg_pool2d(arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "output_size"))
    return _with_indices_of(real, y)


@rule("adaptive_max_pool2d", "adaptive_max_pool2d_with_indices",
      linear=_linear_adaptive_max_pool)
@rule("adaptive_avg_pool2d")
def adaptive(c: Call) -> Field:
    x, y = c.x, c.y
    axes = []
    for a, n_in, n_out in spatial_sizes(c):
        starts = [(o * n_in) // n_out for o in range(n_out)]
        ends = [-((-(o + 1) * n_in) // n_out) for o in range(n_out)]
        width = max(e - s for s, e in zip(starts, ends))
        idx = np.array([[s + t for t in range(width)] for s in starts])
        valid = np.array([[s + t < e for t in range(width)] for s, e in zip(starts, ends)])
        axes.append(a.take(idx, valid, a.jump * n_in / n_out))
    if y.shape[-2:] == (1, 1):
        c.note("global pooling: the field is the whole input")
    elif any(x.shape[-2 + k] % y.shape[-2 + k] for k in range(2)):
        c.note("adaptive pooling with uneven bins: the size shown is the largest bin's")
    return c.fx.with_axes(axes)


# --- resampling and moving pixels ---

@rule("interpolate", "upsample", "upsample_bilinear", "upsample_nearest")
def interpolate(c: Call) -> Field:
    mode = c.arg(3, "mode", "bilinear" if c.name == "upsample_bilinear" else "nearest")
    align = c.arg(4, "align_corners", True if c.name == "upsample_bilinear" else None)
    scale = c.arg(2, "scale_factor")
    size = c.arg(1, "size")
    if c.arg(6, "antialias", False):
        raise Unknown("antialiased resizing")
    axes = []
    for k, (a, n_in, n_out) in enumerate(spatial_sizes(c)):
        s = None if scale is None or size is not None else (
            scale[k] if isinstance(scale, (list, tuple)) else scale)
        inv = Fraction(n_in, n_out) if s is None or c.arg(5, "recompute_scale_factor") \
            else 1 / Fraction(s).limit_denominator(10 ** 6)
        if mode == "area":
            return adaptive(c)
        idx, valid = _resample_taps(mode, align, n_in, n_out, inv)
        axes.append(a.take(idx, valid, a.jump * float(inv)))
    return c.fx.with_axes(axes)


def _resample_taps(mode: str, align, n_in: int, n_out: int, inv: Fraction):
    """Input units read by each output unit of ``F.interpolate`` (taps of weight zero left out)."""
    rows = []
    for o in range(n_out):
        if mode in ("nearest", "nearest-exact"):
            src = Fraction(o) * inv if mode == "nearest" else (o + Fraction(1, 2)) * inv
            rows.append([min(math.floor(src), n_in - 1)])
            continue
        if align:
            src = Fraction(o * (n_in - 1), n_out - 1) if n_out > 1 else Fraction(0)
        else:
            src = max((o + Fraction(1, 2)) * inv - Fraction(1, 2), Fraction(0))
        base = math.floor(src)
        frac = src - base
        if mode in ("bilinear", "linear"):
            taps = [base] + ([base + 1] if frac else [])
        elif mode == "bicubic":
            taps = [base - 1, base, base + 1, base + 2] if frac else [base]
        else:
            raise Unknown(f"interpolation mode {mode!r}")
        rows.append(sorted({min(max(t, 0), n_in - 1) for t in taps}))
    width = max(len(r) for r in rows)
    idx = np.array([r + [r[-1]] * (width - len(r)) for r in rows])
    return idx, np.ones_like(idx, dtype=bool)


@rule("pad")
def pad(c: Call) -> Field:
    x, y, fx = c.x, c.y, c.fx
    pads = list(c.arg(1, "pad"))
    mode = c.arg(2, "mode", "constant")
    pads += [0] * (2 * x.dim() - len(pads))
    axes = list(fx.axes)
    if fx.dims is None:
        raise Unknown("padding a flattened tensor")
    for k, d in enumerate(fx.dims):
        before = pads[2 * (x.dim() - 1 - d)]
        n_in, n_out = x.shape[d], y.shape[d]
        src = np.arange(n_out) - before
        if mode == "reflect":
            period = 2 * (n_in - 1) or 1
            src = np.abs((src + period) % period)
            src = np.where(src >= n_in, period - src, src)
        elif mode == "replicate":
            src = np.clip(src, 0, n_in - 1)
        elif mode == "circular":
            src = src % n_in
        axes[k] = axes[k].take(src[:, None], True, axes[k].jump)
    return fx.with_axes(axes)


@rule("pixel_shuffle", "pixel_unshuffle")
def shuffle(c: Call) -> Field:
    r = int(c.arg(1, "upscale_factor" if c.name == "pixel_shuffle" else "downscale_factor"))
    axes = []
    for k, a in enumerate(spatial_axes(c)):
        n_out = c.y.shape[-2 + k]
        if c.name == "pixel_shuffle":
            axes.append(a.take((np.arange(n_out) // r)[:, None], True, a.jump / r))
        else:
            axes.append(a.window(n_out, r, r, 0))
    return c.fx.with_axes(axes)


# --- dense layers, joining and splitting tensors ---

def _linear_dense(func, args, kwargs):
    x = arg(args, kwargs, 0, "input")
    out_features = arg(args, kwargs, 1, "weight").shape[0]
    return x.mean(-1, keepdim=True).expand(*x.shape[:-1], out_features).contiguous()


@rule("linear", linear=_linear_dense)
@rule("matmul", "mm", "bmm", "addmm", "einsum", "baddbmm")
def dense(c: Call) -> Field:
    fx = c.fx
    if c.name == "linear" and fx.dims is not None and c.x.dim() - 1 not in fx.dims:
        return fx  # a dense layer over channels-last: per unit
    if fx.dims is not None:
        raise Unknown("matrix product over a spatial axis")
    c.note("dense layer: the field is the whole input")
    flags = frozenset().union(*(f.flags for _, f in c.inputs))
    return Field(fx.union(), None, flags)


@rule("cat")
def cat(c: Call) -> Field:
    out = c.out
    tensors_ = [t for t in c.arg(0, "tensors") if isinstance(t, torch.Tensor)]
    dim = c.arg(1, "dim", 0) % out.dim()
    pairs = [(t, c.tracer.field_of(t)) for t in tensors_ if c.tracer.field_of(t) is not None]
    fields = [f for _, f in pairs]  # constants add no field
    if not any(f.dims and dim in f.dims for f in fields):
        return join(c, pairs, out)
    if len(fields) != len(tensors_) or any(f.dims != fields[0].dims for f in fields):
        raise Unknown("concatenation along a spatial axis")
    k = fields[0].dims.index(dim)
    axes = list(fields[0].axes)
    axes[k] = concat_axes([f.axes[k] for f in fields])
    c.note("concatenation along a spatial axis")
    return fields[0].with_axes(axes, flags=frozenset().union(*(f.flags for f in fields)))


@rule("stack")
def stack(c: Call) -> Field:
    return join(c, c.inputs, c.y, shift_from=c.arg(1, "dim", 0))


@rule("chunk", "split", "tensor_split", "unbind", "split_with_sizes")
def split(c: Call) -> list[Field]:
    fx, x = c.fx, c.x
    dim = c.arg(2 if c.name != "unbind" else 1, "dim", 0) % x.dim()
    parts = tensors(c.out)
    if fx.dims is None or dim not in fx.dims:
        if c.name == "unbind":
            new = None if fx.dims is None else tuple(d - (d > dim) for d in fx.dims)
            return [fx.moved(new)] * len(parts)
        return [fx] * len(parts)
    if c.name == "unbind":
        raise Unknown("unbinding a spatial axis")
    k = fx.dims.index(dim)
    result, offset = [], 0
    for t in parts:
        axes = list(fx.axes)
        axes[k] = fx.axes[k].take(np.arange(offset, offset + t.shape[dim])[:, None], True,
                                  fx.axes[k].jump)
        offset += t.shape[dim]
        result.append(fx.with_axes(axes))
    return result


@rule("getitem")
def getitem(c: Call) -> Field:
    fx, x = c.fx, c.x
    if fx.dims is None:
        return fx
    index = c.args[1]
    index = index if isinstance(index, tuple) else (index,)
    if any(i is None or isinstance(i, torch.Tensor) or i is True or i is False for i in index):
        raise Unknown("advanced indexing")
    if Ellipsis in index:
        e = index.index(Ellipsis)
        index = index[:e] + (slice(None),) * (x.dim() - len(index) + 1) + index[e + 1:]
    index = index + (slice(None),) * (x.dim() - len(index))
    axes, dims, removed = list(fx.axes), [], 0
    for d, item in enumerate(index):
        if d in fx.dims:
            k = fx.dims.index(d)
            if isinstance(item, int):
                raise Unknown("indexing a single row or column")
            start, stop, step = item.indices(x.shape[d])
            axes[k] = axes[k].take(np.arange(start, stop, step)[:, None], True,
                                   axes[k].jump * step)
            dims.append(d - removed)
        elif isinstance(item, int):
            removed += 1
    return fx.with_axes(axes, dims)


# --- layout: reshaping, permuting, reducing ---

@rule("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
      "expand", "expand_as", "broadcast_to")
def reshape(c: Call) -> Field:
    dims = _reshaped_dims(c.fx.dims, c.x.shape, c.y.shape)
    if dims is None and c.fx.dims is not None:
        c.tracer.grid_sources.append(c.fx)  # a head flattens this map into per-cell predictions
    return c.fx.moved(dims)


def _reshaped_dims(dims, old, new):
    """Where the spatial dims go in a reshape, or None when they are merged away."""
    if dims is None:
        return None
    old, new = list(old), list(new)
    result = []
    for d in dims:
        before, after = math.prod(old[:d]), math.prod(old[d + 1:])
        match = [e for e in range(len(new)) if new[e] == old[d] and math.prod(new[:e]) == before
                 and math.prod(new[e + 1:]) == after]
        if not match:
            return None
        result.append(match[0])
    return tuple(result) if result[0] != result[1] else None


@rule("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t")
def permute(c: Call) -> Field:
    """Where the spatial dims go: ask torch, on a meta tensor numbered by dimension."""
    if c.fx.dims is None:
        return c.fx.moved(None)
    probe = torch.empty(list(range(2, c.x.dim() + 2)), device="meta")
    moved = getattr(probe, c.name)(*c.args[1:], **{k: v for k, v in c.kwargs.items()
                                                   if k != "input"})
    order = [s - 2 for s in moved.shape]
    return c.fx.moved(tuple(order.index(d) for d in c.fx.dims))


@rule("softmax", "log_softmax", linear=identity)
@rule("cumsum")
def along_channels(c: Call) -> Field:
    """Softmax and cumulative sums keep the layout; along a spatial axis they have no rule."""
    dim = c.arg(1, "dim")
    if c.fx.dims is not None and dim is not None and dim % c.x.dim() in c.fx.dims:
        raise Unknown(f"{c.name} along a spatial axis")
    return c.fx


@rule("mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "norm", "prod",
      "nansum", "nanmean", "argmax", "argmin", "median", "all", "any")
def reduce(c: Call) -> Field:
    fx, x = c.fx, c.x
    dim = c.arg(1, "dim")
    keepdim = bool(c.arg(2, "keepdim", False))
    dims = set(range(x.dim())) if dim is None else {
        d % x.dim() for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
    if fx.dims is None:
        if dim is None or not keepdim:
            c.note("reduction over all elements: the field is the whole input")
            return Field(fx.union(), None, fx.flags)
        return fx
    axes = list(fx.axes)
    for k, d in enumerate(fx.dims):
        if d in dims:
            axes[k] = axes[k].whole()
    if not any(d in dims for d in fx.dims):
        new_dims = fx.dims if keepdim else tuple(d - sum(r < d for r in dims) for d in fx.dims)
        return fx.moved(new_dims)
    c.note("reduction over the map: the field is the whole input along it")
    if keepdim:
        return fx.with_axes(axes)
    if all(d in dims for d in fx.dims):
        return Field(tuple(axes), None, fx.flags)
    raise Unknown("reduction over one spatial axis")
