"""Receptive fields: exact per-layer fields on the real data-flow graph, checked by gradients.

The model runs once under a ``TorchFunctionMode`` that sees every tensor operation (``F.conv2d``,
``torch.cat``, ``+``, ``F.interpolate``, ``F.pad``, ``flatten`` ...), so branches, additions,
concatenations, up-sampling with skips and multi-output heads are followed as they really run,
whatever module or plain function performs them. Forward hooks give each result its module name.

Every tensor carries, per spatial axis and per unit, the interval of input pixels it reads:
``lo``/``hi`` extend into the padding as in Araujo, Norris and Sim, "Computing Receptive Fields of
Convolutional Neural Networks" (Distill, 2019), and ``real_lo``/``real_hi`` keep only pixels that
exist. From these come the reported size (largest unit), the effective stride (jump) and the
start (centre of the first unit's region, in input pixels; may be negative with padding).
Where paths meet the intervals are joined, so the largest field wins; differing strides or
centres are reported as misaligned paths. An operation without a rule is flagged, never taken
for the identity.

:func:`verify` needs no trust in those rules: it linearises the model (activations and
normalisation become the identity, max pooling becomes averaging, weights become positive) and
takes the bounding box of the non-zero input gradient of one unit. :func:`effective_field` is
Luo et al. (NeurIPS 2016): the gradient mass of the real network's centre unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.building import build, check_input_fits, eval_mode

INF = math.inf
DEFORMABLE_NOTE = "deformable: regular-grid field; learned offsets can extend it"


# --- the field of one tensor ---

@dataclass(frozen=True, eq=False)
class Axis:
    """Per unit along one spatial axis: the input pixels it reads, unclipped and real."""

    lo: np.ndarray
    hi: np.ndarray
    real_lo: np.ndarray  # +inf / -inf for a unit that reads no real pixel (padding)
    real_hi: np.ndarray
    jump: float  # effective stride: input pixels between neighbouring units

    @classmethod
    def input(cls, n: int) -> Axis:
        pos = np.arange(n, dtype=np.float64)
        return cls(pos, pos, pos, pos, 1.0)

    @property
    def n(self) -> int:
        return len(self.lo)

    def take(self, idx: np.ndarray, valid: np.ndarray, jump: float) -> Axis:
        """Output unit ``o`` reads input units ``idx[o, valid[o]]``; outside 0..n-1 is padding.

        Padding units extend the field at the edge's stride (Araujo et al.'s unclipped field)
        but read no real pixel.
        """
        n = self.n
        idx = np.asarray(idx, dtype=np.int64).reshape(len(idx), -1)
        valid = np.broadcast_to(np.asarray(valid, dtype=bool), idx.shape)
        inside = valid & (idx >= 0) & (idx < n)
        clamped = np.clip(idx, 0, n - 1)
        beyond = (np.minimum(idx, 0) + np.maximum(idx - (n - 1), 0)) * self.jump
        lo = np.where(valid, self.lo[clamped] + beyond, INF).min(1)
        hi = np.where(valid, self.hi[clamped] + beyond, -INF).max(1)
        real_lo = np.where(inside, self.real_lo[clamped], INF).min(1)
        real_hi = np.where(inside, self.real_hi[clamped], -INF).max(1)
        return Axis(lo, hi, real_lo, real_hi, jump)

    def window(self, n_out: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> Axis:
        """Convolution or pooling: unit ``o`` reads ``o*stride - padding + t*dilation``."""
        idx = (np.arange(n_out)[:, None] * stride - padding
               + np.arange(kernel)[None, :] * dilation)
        return self.take(idx, True, self.jump * stride)

    def whole(self) -> Axis:
        """One unit reading every unit: global pooling, or a dense layer."""
        return self.take(np.arange(self.n)[None, :], True, self.jump * self.n)

    def size(self) -> float:
        ok = np.isfinite(self.lo) & np.isfinite(self.hi)
        return float((self.hi[ok] - self.lo[ok] + 1).max()) if ok.any() else 0.0

    def start(self) -> float:
        return float((self.lo[0] + self.hi[0]) / 2)

    def centres(self) -> np.ndarray:
        return (self.lo + self.hi) / 2


def join_axes(axes: list[Axis], n: int) -> Axis:
    """Where paths meet a unit reads what any path reads (a path of size 1 is broadcast)."""
    pick = [(a, np.zeros(n, dtype=np.int64) if a.n == 1 and n != 1 else np.arange(n))
            for a in axes]
    return Axis(np.min([a.lo[i] for a, i in pick], axis=0), np.max([a.hi[i] for a, i in pick], axis=0),
                np.min([a.real_lo[i] for a, i in pick], axis=0),
                np.max([a.real_hi[i] for a, i in pick], axis=0),
                max(a.jump for a in axes if a.n == n or n == 1))


@dataclass(frozen=True, eq=False)
class Field:
    """The field of a tensor's units: ``axes`` (h, w) sit at tensor dims ``dims``.

    ``dims`` is None once the spatial layout has been flattened away: each element still reads
    one unit's field, and a dense layer after it reads all of them.
    """

    axes: tuple[Axis, Axis]
    dims: tuple[int, int] | None
    flags: frozenset = frozenset()

    def moved(self, dims) -> Field:
        return replace(self, dims=None if dims is None else tuple(dims))

    def with_axes(self, axes, dims=None, flags=()) -> Field:
        return Field(tuple(axes), self.dims if dims is None else tuple(dims),
                     self.flags | frozenset(flags))

    def summary(self) -> dict:
        h, w = self.axes
        return {"receptive_field": [_num(h.size()), _num(w.size())],
                "stride": [_num(h.jump), _num(w.jump)],
                "start": [_num(h.start()), _num(w.start())]}

    def union(self) -> tuple[Axis, Axis]:
        return tuple(a.whole() for a in self.axes)


def _num(x: float):
    return int(round(x)) if abs(x - round(x)) < 1e-9 else round(float(x), 4)


# --- reading arguments of torch functions ---

def _arg(args, kwargs, i: int, key: str, default=None):
    if key in kwargs:
        return kwargs[key]
    return args[i] if len(args) > i else default


def _pair(v, default=None):
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return default
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _func_name(func) -> str:
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


_DUNDER_BINARY = {"add", "sub", "mul", "truediv", "floordiv", "pow", "matmul", "and", "or", "xor",
                  "mod"}

# Operations that act on each unit by itself (activations, arithmetic, channel-wise
# normalisation, casts); with several inputs their paths meet.
POINTWISE = set("""
relu relu6 hardtanh sigmoid tanh gelu silu hardswish hardsigmoid mish elu selu celu leaky_relu
softplus prelu rrelu threshold logsigmoid softsign tanhshrink hardshrink softshrink
dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout feature_dropout
batch_norm local_response_norm
add sub mul div true_divide floor_divide neg abs exp log log1p sqrt rsqrt pow square reciprocal
clamp clip clamp_min clamp_max where maximum minimum addcmul addcdiv lerp sign erf erfc
eq ne lt le gt ge logical_not logical_and logical_or and or xor mod fmod remainder bitwise_and
float double half bfloat16 to type type_as contiguous clone detach cpu cuda requires_grad
data masked_fill nan_to_num
""".split())
NORMALISATION = {"group_norm", "instance_norm", "layer_norm"}
# Results that do not depend on the values they are given.
NO_DEPENDENCY = set("""
size dim numel shape dtype device is_contiguous zeros_like ones_like empty_like full_like rand_like
randn_like new_zeros new_ones new_empty new_full new_tensor stride is_floating_point element_size
requires_grad_ ndim ndimension grad_fn layout is_cuda is_meta
""".split()) | {"T"}
RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
           "reshape_as", "expand", "expand_as", "broadcast_to"}
REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "norm", "prod",
          "nansum", "nanmean", "argmax", "argmin", "median", "all", "any"}


# --- the analysis ---

@dataclass
class Row:
    name: str
    type: str
    field: Field
    notes: list = field(default_factory=list)
    call: tuple = ()  # (module, call number, output index) to find the tensor again


class _Trace(TorchFunctionMode):
    """Attach a :class:`Field` to every tensor that depends on the input."""

    ATTR = "_cnnbench_field"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {m: n for n, m in model.named_modules() if n}
        self.frames: list[list[str]] = []
        self.rows: list[Row] = []
        self.calls: dict[nn.Module, int] = {}
        self.grid_sources: list[Field] = []  # maps whose layout a reshape consumed (head maps)

    # fields on tensors
    def get(self, t):
        return getattr(t, self.ATTR, None) if isinstance(t, torch.Tensor) else None

    def put(self, out, fld: Field | None):
        if fld is None:
            return
        for t in _tensors(out):
            try:
                setattr(t, self.ATTR, fld)
            except (AttributeError, RuntimeError):
                pass

    def note(self, text: str) -> None:
        if self.frames and text not in self.frames[-1]:
            self.frames[-1].append(text)

    # module hooks
    def pre_hook(self, module, args):
        self.frames.append([])

    def hook(self, module, args, output):
        notes = self.frames.pop() if self.frames else []
        name = self.names[module]
        count = self.calls[module] = self.calls.get(module, 0) + 1
        label = name if count == 1 else f"{name}#{count}"
        outs = [(i, t) for i, t in enumerate(_tensors(output)) if self.get(t) is not None]
        for i, t in outs:
            row_name = label if len(outs) == 1 else f"{label}[{i}]"
            self.rows.append(Row(row_name, type(module).__name__, self.get(t), list(notes),
                                 (module, count, i)))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [(t, self.get(t)) for t in _tensors((args, kwargs)) if self.get(t) is not None]
        if not inputs or not _tensors(out):
            return out
        name = _func_name(func)
        if name in NO_DEPENDENCY:
            return out
        try:
            result = self.rule(name, args, kwargs, out, inputs)
        except _Unknown as exc:
            result = self.unknown(f"{name} ({exc})", out, inputs)
        except Exception as exc:  # a rule that cannot read this call must not hide it
            result = self.unknown(f"{name} ({type(exc).__name__})", out, inputs)
        if isinstance(result, list):
            for t, fld in zip(_tensors(out), result):
                self.put(t, fld)
        else:
            self.put(out, result)
        return out

    def unknown(self, what: str, out, inputs) -> Field:
        self.note(f"uninterpreted op {what}: field unknown")
        flag = f"depends on uninterpreted op {what.split(' ')[0]}"
        spatial = [f for _, f in inputs if f.dims is not None]
        base = spatial[0] if spatial else inputs[0][1]
        shape = _tensors(out)[0].shape
        dims = base.dims if base.dims and max(base.dims) < len(shape) else None
        return base.with_axes(base.axes, dims, {flag}).moved(dims)

    # the rules
    def rule(self, name, args, kwargs, out, inputs):
        x, fx = inputs[0]
        y = _tensors(out)[0]
        if name in POINTWISE or name in NORMALISATION:
            if name in NORMALISATION and fx.dims is not None:
                self.note(f"{name}: statistics over the map are ignored (not part of the field)")
            return self.join(inputs, y)
        if name in ("conv2d", "convolution", "conv_transpose2d", "deform_conv2d"):
            return self.conv(name, args, kwargs, fx, x, y)
        if name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d"):
            return self.pool(name, args, kwargs, fx, x, y)
        if name.startswith(("adaptive_avg_pool2d", "adaptive_max_pool2d")):
            return self.adaptive(fx, x, y)
        if name in ("interpolate", "upsample", "upsample_bilinear", "upsample_nearest"):
            return self.interpolate(name, args, kwargs, fx, x, y)
        if name == "pad":
            return self.pad(args, kwargs, fx, x, y)
        if name in ("pixel_shuffle", "pixel_unshuffle"):
            return self.shuffle(name, args, kwargs, fx, x, y)
        if name in ("linear", "matmul", "mm", "bmm", "addmm", "einsum", "baddbmm"):
            return self.dense(name, x, fx, y, inputs)
        if name == "cat":
            return self.cat(args, kwargs, out)
        if name == "stack":
            return self.join(inputs, y, shift_from=_arg(args, kwargs, 1, "dim", 0))
        if name in RESHAPE:
            dims = _reshaped_dims(fx.dims, x.shape, y.shape)
            if dims is None and fx.dims is not None:
                self.grid_sources.append(fx)
            return fx.moved(dims)
        if name in ("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t"):
            return fx.moved(_permuted_dims(name, args, kwargs, fx.dims, x.dim()))
        if name in REDUCE or name in ("softmax", "log_softmax", "cumsum"):
            return self.reduce(name, args, kwargs, fx, x, out)
        if name in ("chunk", "split", "tensor_split", "unbind", "split_with_sizes"):
            return self.split(name, args, kwargs, fx, x, out)
        if name == "getitem":
            return self.getitem(args[1], fx, x, y)
        raise _Unknown("no rule")

    def join(self, inputs, y, shift_from=None):
        """Paths meet (pointwise ops with several inputs, channel concatenation, stack)."""
        spatial = [(t, f) for t, f in inputs if f.dims is not None]
        flags = frozenset().union(*(f.flags for _, f in inputs))
        if spatial and len(spatial) != len(inputs):
            raise _Unknown("mixes a flattened tensor with a map")
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
                raise _Unknown("paths of different sizes")
            axes.append(join_axes(group, n[k]))
        self.check_alignment(fields, n)
        if any(f.axes[k].n == 1 < n[k] for f in fields for k in range(2)):
            self.note("a 1x1 map (global context, e.g. squeeze-excitation) is broadcast: "
                      "every unit reads the whole input")
        return Field(tuple(axes), dims[0], flags)

    def check_alignment(self, fields, n):
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
                    self.note(f"paths misaligned on {axis}: unit centres differ by up to "
                              f"{_num(shift)} px (strides {_num(first.jump)} and "
                              f"{_num(other.jump)})")
                    break

    def spatial_dims(self, fx, x):
        if fx.dims != (x.dim() - 2, x.dim() - 1):
            raise _Unknown("spatial dimensions are not the last two")
        return fx.axes

    def conv(self, name, args, kwargs, fx, x, y):
        h, w = self.spatial_dims(fx, x)
        weight = _arg(args, kwargs, 1, "weight")
        kernel = tuple(weight.shape[-2:])
        if name == "deform_conv2d":
            stride, padding, dilation = (args[5], args[6]), (args[7], args[8]), (args[9], args[10])
            self.note(DEFORMABLE_NOTE)
            flags = {"deformable upstream"}
        elif name == "conv_transpose2d" or (name == "convolution" and _arg(args, kwargs, 6,
                                                                            "transposed", False)):
            if name == "convolution":
                stride, padding, dilation = (_pair(_arg(args, kwargs, i, k)) for i, k in
                                             ((3, "stride"), (4, "padding"), (5, "dilation")))
            else:
                stride = _pair(_arg(args, kwargs, 3, "stride", 1))
                padding = _pair(_arg(args, kwargs, 4, "padding", 0))
                dilation = _pair(_arg(args, kwargs, 7, "dilation", 1))
            return fx.with_axes([_transposed(a, y.shape[-2 + k], kernel[k], stride[k], padding[k],
                                             dilation[k]) for k, a in enumerate((h, w))])
        else:
            stride = _pair(_arg(args, kwargs, 3, "stride", 1))
            dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
            padding = _arg(args, kwargs, 4, "padding", 0)
            if isinstance(padding, str):
                padding = ((0, 0) if padding == "valid" else
                           tuple(dilation[k] * (kernel[k] - 1) // 2 for k in range(2)))
            padding = _pair(padding)
            flags = set()
        stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
        return fx.with_axes([a.window(y.shape[-2 + k], kernel[k], stride[k], padding[k],
                                      dilation[k]) for k, a in enumerate((h, w))], flags=flags)

    def pool(self, name, args, kwargs, fx, x, y):
        h, w = self.spatial_dims(fx, x)
        if name == "lp_pool2d":
            kernel = _pair(_arg(args, kwargs, 2, "kernel_size"))
            stride, padding, dilation = _pair(_arg(args, kwargs, 3, "stride"), kernel), (0, 0), (1, 1)
        else:
            kernel = _pair(_arg(args, kwargs, 1, "kernel_size"))
            stride = _pair(_arg(args, kwargs, 2, "stride"), kernel)
            padding = _pair(_arg(args, kwargs, 3, "padding", 0))
            dilation = (_pair(_arg(args, kwargs, 4, "dilation", 1)) if "max" in name else (1, 1))
        return fx.with_axes([a.window(y.shape[-2 + k], kernel[k], stride[k], padding[k],
                                      dilation[k]) for k, a in enumerate((h, w))])

    def adaptive(self, fx, x, y):
        axes = []
        for k, a in enumerate(self.spatial_dims(fx, x)):
            n_in, n_out = x.shape[-2 + k], y.shape[-2 + k]
            starts = [(o * n_in) // n_out for o in range(n_out)]
            ends = [-((-(o + 1) * n_in) // n_out) for o in range(n_out)]
            width = max(e - s for s, e in zip(starts, ends))
            idx = np.array([[s + t for t in range(width)] for s in starts])
            valid = np.array([[s + t < e for t in range(width)] for s, e in zip(starts, ends)])
            axes.append(a.take(idx, valid, a.jump * n_in / n_out))
        if y.shape[-2:] == (1, 1):
            self.note("global pooling: the field is the whole input")
        elif any(x.shape[-2 + k] % y.shape[-2 + k] for k in range(2)):
            self.note("adaptive pooling with uneven bins: the size shown is the largest bin's")
        return fx.with_axes(axes)

    def interpolate(self, name, args, kwargs, fx, x, y):
        mode = _arg(args, kwargs, 3, "mode", "bilinear" if name == "upsample_bilinear" else "nearest")
        align = _arg(args, kwargs, 4, "align_corners",
                     True if name == "upsample_bilinear" else None)
        scale = _arg(args, kwargs, 2, "scale_factor")
        size = _arg(args, kwargs, 1, "size")
        if _arg(args, kwargs, 6, "antialias", False):
            raise _Unknown("antialiased resizing")
        axes = []
        for k, a in enumerate(self.spatial_dims(fx, x)):
            n_in, n_out = x.shape[-2 + k], y.shape[-2 + k]
            s = None if scale is None or size is not None else (
                scale[k] if isinstance(scale, (list, tuple)) else scale)
            inv = Fraction(n_in, n_out) if s is None or _arg(args, kwargs, 5, "recompute_scale_factor") \
                else 1 / Fraction(s).limit_denominator(10 ** 6)
            if mode == "area":
                return self.adaptive(fx, x, y)
            idx, valid = _resample_taps(mode, align, n_in, n_out, inv)
            axes.append(a.take(idx, valid, a.jump * float(inv)))
        return fx.with_axes(axes)

    def pad(self, args, kwargs, fx, x, y):
        pads = list(_arg(args, kwargs, 1, "pad"))
        mode = _arg(args, kwargs, 2, "mode", "constant")
        pads += [0] * (2 * x.dim() - len(pads))
        axes = list(fx.axes)
        if fx.dims is None:
            raise _Unknown("padding a flattened tensor")
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

    def shuffle(self, name, args, kwargs, fx, x, y):
        r = int(_arg(args, kwargs, 1, "upscale_factor" if name == "pixel_shuffle" else
                     "downscale_factor"))
        axes = []
        for k, a in enumerate(self.spatial_dims(fx, x)):
            n_out = y.shape[-2 + k]
            if name == "pixel_shuffle":
                axes.append(a.take((np.arange(n_out) // r)[:, None], True, a.jump / r))
            else:
                axes.append(a.window(n_out, r, r, 0))
        return fx.with_axes(axes)

    def dense(self, name, x, fx, y, inputs):
        if name == "linear" and fx.dims is not None and x.dim() - 1 not in fx.dims:
            return fx  # a dense layer over channels-last: per unit
        if fx.dims is not None:
            raise _Unknown("matrix product over a spatial axis")
        self.note("dense layer: the field is the whole input")
        flags = frozenset().union(*(f.flags for _, f in inputs))
        return Field(fx.union(), None, flags)

    def cat(self, args, kwargs, out):
        tensors = [t for t in _arg(args, kwargs, 0, "tensors") if isinstance(t, torch.Tensor)]
        dim = _arg(args, kwargs, 1, "dim", 0) % out.dim()
        pairs = [(t, self.get(t)) for t in tensors if self.get(t) is not None]
        fields = [f for _, f in pairs]  # constants add no field
        if not any(f.dims and dim in f.dims for f in fields):
            return self.join(pairs, out)
        if len(fields) != len(tensors) or any(f.dims != fields[0].dims for f in fields):
            raise _Unknown("concatenation along a spatial axis")
        k = fields[0].dims.index(dim)
        parts = [f.axes[k] for f in fields]
        joined = Axis(*(np.concatenate([getattr(a, attr) for a in parts])
                        for attr in ("lo", "hi", "real_lo", "real_hi")), parts[0].jump)
        axes = list(fields[0].axes)
        axes[k] = joined
        self.note("concatenation along a spatial axis")
        return fields[0].with_axes(axes, flags=frozenset().union(*(f.flags for f in fields)))

    def reduce(self, name, args, kwargs, fx, x, out):
        dim = _arg(args, kwargs, 1, "dim")
        if name in ("softmax", "log_softmax", "cumsum"):
            if fx.dims is not None and dim is not None and dim % x.dim() in fx.dims:
                raise _Unknown(f"{name} along a spatial axis")
            return fx
        keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
        dims = set(range(x.dim())) if dim is None else {
            d % x.dim() for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
        if fx.dims is None:
            if dim is None or not keepdim:
                self.note("reduction over all elements: the field is the whole input")
                return Field(fx.union(), None, fx.flags)
            return fx
        axes = list(fx.axes)
        for k, d in enumerate(fx.dims):
            if d in dims:
                axes[k] = axes[k].whole()
        if not any(d in dims for d in fx.dims):
            new_dims = fx.dims if keepdim else tuple(d - sum(r < d for r in dims) for d in fx.dims)
            return fx.moved(new_dims)
        self.note("reduction over the map: the field is the whole input along it")
        if keepdim:
            return fx.with_axes(axes)
        if all(d in dims for d in fx.dims):
            return Field(tuple(axes), None, fx.flags)
        raise _Unknown("reduction over one spatial axis")

    def split(self, name, args, kwargs, fx, x, out):
        dim = _arg(args, kwargs, 2 if name != "unbind" else 1, "dim", 0) % x.dim()
        parts = _tensors(out)
        if fx.dims is None or dim not in fx.dims:
            if name == "unbind":
                new = None if fx.dims is None else tuple(d - (d > dim) for d in fx.dims)
                return [fx.moved(new)] * len(parts)
            return [fx] * len(parts)
        if name == "unbind":
            raise _Unknown("unbinding a spatial axis")
        k = fx.dims.index(dim)
        result, offset = [], 0
        for t in parts:
            axes = list(fx.axes)
            axes[k] = fx.axes[k].take(np.arange(offset, offset + t.shape[dim])[:, None], True,
                                      fx.axes[k].jump)
            offset += t.shape[dim]
            result.append(fx.with_axes(axes))
        return result

    def getitem(self, index, fx, x, y):
        if fx.dims is None:
            return fx
        index = index if isinstance(index, tuple) else (index,)
        if any(i is None or isinstance(i, torch.Tensor) or i is True or i is False for i in index):
            raise _Unknown("advanced indexing")
        if Ellipsis in index:
            e = index.index(Ellipsis)
            index = index[:e] + (slice(None),) * (x.dim() - len(index) + 1) + index[e + 1:]
        index = index + (slice(None),) * (x.dim() - len(index))
        axes, dims, removed = list(fx.axes), [], 0
        for d, item in enumerate(index):
            if d in fx.dims:
                k = fx.dims.index(d)
                if isinstance(item, int):
                    raise _Unknown("indexing a single row or column")
                start, stop, step = item.indices(x.shape[d])
                axes[k] = axes[k].take(np.arange(start, stop, step)[:, None], True,
                                       axes[k].jump * step)
                dims.append(d - removed)
            elif isinstance(item, int):
                removed += 1
        return fx.with_axes(axes, dims)


class _Unknown(Exception):
    pass


def _transposed(a: Axis, n_out: int, kernel: int, stride: int, padding: int, dilation: int) -> Axis:
    """Transposed convolution: output ``o`` gets input ``i`` through tap ``t`` when
    ``i*stride - padding + t*dilation == o``; up-sampling by ``stride`` divides the jump."""
    num = np.arange(n_out)[:, None] + padding - np.arange(kernel)[None, :] * dilation
    return a.take(np.floor_divide(num, stride), num % stride == 0, a.jump / stride)


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
            raise _Unknown(f"interpolation mode {mode!r}")
        rows.append(sorted({min(max(t, 0), n_in - 1) for t in taps}))
    width = max(len(r) for r in rows)
    idx = np.array([r + [r[-1]] * (width - len(r)) for r in rows])
    return idx, np.ones_like(idx, dtype=bool)


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


def _permuted_dims(name, args, kwargs, dims, ndim):
    """Where the spatial dims go under permute/transpose/movedim: ask torch on a meta tensor."""
    if dims is None:
        return None
    probe = torch.empty(list(range(2, ndim + 2)), device="meta")
    moved = getattr(probe, name)(*args[1:], **{k: v for k, v in kwargs.items() if k != "input"})
    order = [s - 2 for s in moved.shape]
    return tuple(order.index(d) for d in dims)


def _tensors(obj) -> list[torch.Tensor]:
    """The tensors inside nested tuples, lists and dicts, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


# --- running a model under the trace ---

@dataclass
class Analysis:
    name: str
    task: str
    size: tuple[int, int, int]
    rows: list[Row]
    notes: list[str]  # from operations outside any submodule
    grid_maps: list[tuple[str, Field]]  # maps a reshape flattened, and spatial model outputs


def _analyse(name: str, size=None, model_args=None) -> Analysis:
    from cnnbench.registry import get_model_info

    info = get_model_info(name)
    size = tuple(size or info.input_size)
    last_error = None
    for device in ("meta", "cpu"):
        model, info = build(name, model_args, in_channels=size[0], device=device)
        try:
            return _analyse_module(model, size, info.name, info.task, device)
        except (RuntimeError, ValueError, IndexError, NotImplementedError, TypeError) as exc:
            last_error = exc
    check_input_fits(model, name, size, device="cpu")
    raise CnnbenchError(f"{name} failed on input {[1, *size]}: "
                        f"{str(last_error).strip().splitlines()[0]}")


def _analyse_module(model: nn.Module, size, name: str = "model", task: str = "",
                    device="cpu") -> Analysis:
    trace = _Trace(model)
    handles = [h for m in trace.names for h in (m.register_forward_pre_hook(trace.pre_hook),
                                                  m.register_forward_hook(trace.hook))]
    x = torch.zeros((1, *size), device=device)
    trace.put(x, Field((Axis.input(size[1]), Axis.input(size[2])), (2, 3)))
    trace.frames.append([])
    try:
        with eval_mode(model), torch.no_grad(), trace:
            output = model(x)
    finally:
        for h in handles:
            h.remove()
    return Analysis(name, task, tuple(size), trace.rows, trace.frames[0],
                    _grid_maps(trace, output))


def module_fields(model: nn.Module, input_size) -> dict:
    """:func:`receptive_fields` for a model object (``input_size`` is ``(C, H, W)``)."""
    a = _analyse_module(model, input_size)
    return {"model": a.name, "input_size": list(a.size),
            "layers": [_row_dict(r, a.size) for r in a.rows], "notes": a.notes}


def verify_module(model: nn.Module, input_size, *, dtype=torch.float64) -> dict:
    """:func:`verify` for a model object; it is copied, not changed."""
    import copy

    a = _analyse_module(model, input_size)
    checked = _check(a, copy.deepcopy(model).to(dtype).eval(), _distinct(a.rows), dtype, 8)
    return {"checked": checked, "agree": all(c["agree"] for c in checked)}


def _grid_maps(trace: _Trace, output) -> list[tuple[str, Field]]:
    last_row = {}  # a reshape or permute moves a field's axes but keeps them
    for row in trace.rows:
        last_row[id(row.field.axes[0])] = row.name
    fields = [f for f in trace.grid_sources]
    fields += [trace.get(t) for t in _tensors(output)
               if trace.get(t) is not None and trace.get(t).dims is not None]
    maps, seen = [], set()
    for f in fields:
        if id(f.axes[0]) not in seen:
            seen.add(id(f.axes[0]))
            maps.append((last_row.get(id(f.axes[0]), "(model output)"), f))
    return maps


def _centre(f: Field) -> tuple[int, int]:
    return tuple((a.n - 1) // 2 for a in f.axes)


def _clip(lo: float, hi: float, n: int) -> list[int] | None:
    a, b = max(math.ceil(lo - 1e-9), 0), min(math.floor(hi + 1e-9), n - 1)
    return [a, b] if a <= b else None


def _seen_box(f: Field, size) -> list:
    """The input pixels (clipped) the centre unit reads; all units' for a flattened tensor."""
    axes = f.axes if f.dims is not None else f.union()
    unit = _centre(f) if f.dims is not None else (0, 0)
    return [_clip(a.lo[u], a.hi[u], n) for a, u, n in zip(axes, unit, size[1:])]


def _row_dict(row: Row, size) -> dict:
    f = row.field
    box = _seen_box(f, size)
    whole = box == [[0, size[1] - 1], [0, size[2] - 1]]
    notes = list(row.notes)
    if f.dims is None and f.axes[0].n * f.axes[1].n > 1:
        notes.append("flattened: each element keeps its unit's field")
    notes += sorted(fl for fl in f.flags if not (fl == "deformable upstream" and
                                                  DEFORMABLE_NOTE in notes))
    return {"name": row.name, "type": row.type, **f.summary(),
            "output_size": [a.n for a in f.axes] if f.dims is not None else None,
            "seen": [b[1] - b[0] + 1 if b else 0 for b in box], "whole_input": whole,
            "notes": notes}


def receptive_fields(name: str, input_size=None, *, model_args: dict | None = None,
                     layer: str | None = None) -> dict:
    """Per layer of ``name``: receptive field, stride (jump) and start per axis (h, w).

    ``seen`` is the centre unit's field clipped to the input; ``start`` is the centre of the
    first unit's field and may be negative where padding extends it.
    """
    a = _analyse(name, input_size, model_args)
    rows = [_row_dict(r, a.size) for r in _pick(a, layer)]
    return {"model": a.name, "task": a.task, "input_size": list(a.size), "layers": rows,
            "notes": a.notes}


def _pick(a: Analysis, layer: str | None) -> list[Row]:
    if layer is None:
        return a.rows
    rows = [r for r in a.rows if r.name == layer or r.name.split("[")[0].split("#")[0] == layer]
    if not rows:
        names = [r.name for r in a.rows]
        raise CnnbenchError(f"{a.name} has no layer {layer!r}{did_you_mean(layer, names)}; "
                            "the table without --layer lists them")
    return rows


# --- the empirical check ---

class _Linearised(TorchFunctionMode):
    """Run a model as a positive linear map of its input, keeping its geometry.

    Activations, dropout and normalisation become the identity, max pooling becomes averaging
    over the same windows, convolution and dense weights become positive (1/fan-in) without
    bias, deformable offsets become zero (the regular grid's field is what is checked). Every path then adds positive gradient, so the
    non-zero input gradient of a unit is exactly the set of pixels it depends on.
    """

    IDENTITY = (POINTWISE - {"add", "sub", "mul", "div", "true_divide", "floor_divide", "where",
                             "maximum", "minimum", "addcmul", "addcdiv", "lerp", "to", "type",
                             "type_as", "contiguous", "clone", "detach", "cpu", "cuda",
                             "float", "double", "half", "bfloat16", "data", "masked_fill",
                             "requires_grad", "nan_to_num", "neg", "eq", "ne", "lt", "le", "gt",
                             "ge"}) | NORMALISATION | {"softmax", "log_softmax"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _func_name(func)
        x = _arg(args, kwargs, 0, "input")
        if name in self.IDENTITY and isinstance(x, torch.Tensor) and x.is_floating_point():
            return x
        if name == "conv2d":
            return _constant_conv(x, _arg(args, kwargs, 1, "weight"), dict(
                stride=_arg(args, kwargs, 3, "stride", 1), padding=_arg(args, kwargs, 4, "padding", 0),
                dilation=_arg(args, kwargs, 5, "dilation", 1)), _arg(args, kwargs, 6, "groups", 1))
        if name == "conv_transpose2d":
            return _constant_conv(x, _arg(args, kwargs, 1, "weight"), dict(
                stride=_arg(args, kwargs, 3, "stride", 1), padding=_arg(args, kwargs, 4, "padding", 0),
                output_padding=_arg(args, kwargs, 5, "output_padding", 0),
                dilation=_arg(args, kwargs, 7, "dilation", 1)), _arg(args, kwargs, 6, "groups", 1),
                transposed=True)
        if name == "linear":
            out_features = _arg(args, kwargs, 1, "weight").shape[0]
            return x.mean(-1, keepdim=True).expand(*x.shape[:-1], out_features).contiguous()
        if name == "deform_conv2d" and len(args) >= 14:
            # With zero offsets and a unit mask it is the plain convolution of its regular grid.
            return _constant_conv(x, args[1], dict(stride=args[5:7], padding=args[7:9],
                                                   dilation=args[9:11]), int(args[11]))
        if name in ("max_pool2d", "max_pool2d_with_indices"):
            return self.average(func, args, kwargs)
        if name.startswith("adaptive_max_pool2d"):
            real = func(*args, **kwargs)
            y = F.adaptive_avg_pool2d(x, _arg(args, kwargs, 1, "output_size"))
            return (y, real[1]) if isinstance(real, tuple) else y
        return func(*args, **kwargs)

    @staticmethod
    def average(func, args, kwargs):
        x = _arg(args, kwargs, 0, "input")
        with torch.no_grad():
            real = func(x.detach(), *args[1:], **kwargs)
        shape = (real[0] if isinstance(real, tuple) else real).shape[-2:]
        kernel = _pair(_arg(args, kwargs, 1, "kernel_size"))
        stride = _pair(_arg(args, kwargs, 2, "stride"), kernel)
        padding = _pair(_arg(args, kwargs, 3, "padding", 0))
        dilation = _pair(_arg(args, kwargs, 4, "dilation", 1))
        if dilation == (1, 1):
            y = F.avg_pool2d(x, kernel, stride, padding, ceil_mode=bool(
                _arg(args, kwargs, 5, "ceil_mode", False)), count_include_pad=True)
            return (y, real[1]) if isinstance(real, tuple) else y
        extra = [max(0, (shape[k] - 1) * stride[k] + dilation[k] * (kernel[k] - 1) + 1
                     - x.shape[-2 + k] - 2 * padding[k]) for k in range(2)]
        padded = F.pad(x, (padding[1], padding[1] + extra[1], padding[0], padding[0] + extra[0]))
        c = x.shape[1]
        weight = x.new_full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
        y = F.conv2d(padded, weight, stride=stride, dilation=dilation, groups=c)
        y = y[..., :shape[0], :shape[1]]
        return (y, real[1]) if isinstance(real, tuple) else y


def _constant_conv(x, weight, geometry: dict, groups: int, transposed: bool = False):
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


class _Stop(Exception):
    pass


def _gradient_box(grad: torch.Tensor) -> list:
    support = grad.abs().sum(0) != 0
    box = []
    for dim in (1, 0):
        hit = torch.nonzero(support.any(dim=dim)).flatten().tolist()
        box.append([hit[0], hit[-1]] if hit else None)
    return box


def verify(name: str, input_size=None, *, model_args: dict | None = None,
           layers: list[str] | None = None, dtype=torch.float64, batch: int = 8) -> dict:
    """Compare each layer's analytic field (clipped) with the box of non-zero input gradient.

    Checks one unit per layer: the centre unit of a map, all elements of a flattened tensor.
    Layers whose field is the same object as an earlier layer's (ReLU after a convolution)
    are not checked again unless named in ``layers``.
    """
    a = _analyse(name, input_size, model_args)
    rows = [r for n in layers for r in _pick(a, n)] if layers else _distinct(a.rows)
    model, _ = build(name, model_args, in_channels=a.size[0], device="cpu")
    results = _check(a, model.to(dtype).eval(), rows, dtype, batch)
    return {"model": a.name, "input_size": list(a.size), "dtype": str(dtype).removeprefix("torch."),
            "checked": results, "agree": all(r["agree"] for r in results)}


def _distinct(rows: list[Row]) -> list[Row]:
    """The first row of each field (a ReLU after a convolution shares its field)."""
    seen, result = set(), []
    for r in rows:
        if id(r.field) not in seen:
            seen.add(id(r.field))
            result.append(r)
    return result


def _check(a: Analysis, model: nn.Module, rows: list[Row], dtype, batch: int) -> list[dict]:
    modules = dict(model.named_modules())
    trace_names = {}
    for r in a.rows:
        trace_names.setdefault(r.call[0], r.name.split("[")[0].split("#")[0])
    results = []
    for first in range(0, len(rows), batch):
        group = rows[first:first + batch]
        results += _verify_group(model, modules, trace_names, group, a.size, dtype)
    return results


def _verify_group(model, modules, trace_names, group, size, dtype) -> list[dict]:
    wanted = {}
    for b, row in enumerate(group):
        module, count, index = row.call
        wanted.setdefault((trace_names[module], count), []).append((b, index))
    captured, calls = {}, {}

    def hook(module, args, output, name):
        calls[name] = calls.get(name, 0) + 1
        for b, index in wanted.get((name, calls[name]), []):
            captured[b] = _tensors(output)[index].clone()
        if len(captured) == len(group):
            raise _Stop

    targets = {n for n, _ in wanted}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n))
               for n in targets]
    x = torch.ones((len(group), *size), dtype=dtype, requires_grad=True)
    try:
        with _Linearised():
            model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    total = 0
    for b, row in enumerate(group):
        t = captured[b]
        if row.field.dims is None:
            total = total + t[b].sum()
        else:
            index = [slice(None)] * t.dim()
            index[0] = b
            for d, u in zip(row.field.dims, _centre(row.field)):
                index[d] = u
            total = total + t[tuple(index)].sum()
    (grad,) = torch.autograd.grad(total, x, allow_unused=True)
    out = []
    for b, row in enumerate(group):
        got = _gradient_box(grad[b]) if grad is not None else [None, None]
        expected = _seen_box(row.field, size)
        f = row.field
        axes = f.axes if f.dims is not None else f.union()
        unit = _centre(f) if f.dims is not None else (0, 0)
        real = [[int(a.real_lo[u]), int(a.real_hi[u])] if np.isfinite(a.real_lo[u]) else None
                for a, u in zip(axes, unit)]
        result = {"name": row.name, "type": row.type,
                  "unit": list(unit) if f.dims is not None else "all",
                  "analytic": expected, "exact": real, "gradient": got, "agree": got == real}
        if expected != real:
            result["note"] = ("at the border the clipped field also covers pixels that only "
                              "padding units (ceil-mode pooling, padding, dilation) would read")
        out.append(result)
    return out


# --- the grid view (detection heads) ---

def grid_view(name: str, input_size=None, *, model_args: dict | None = None) -> dict:
    """Which input region each cell of each feature map sees (the fast.ai lesson's view).

    The maps are those whose layout a head flattens into per-anchor predictions, and the
    spatial maps a model returns (FPN). Cell ``(i, j)`` sees rows ``rows[i]`` and columns
    ``cols[j]`` of the input, clipped to it.
    """
    a = _analyse(name, input_size, model_args)
    maps = []
    for layer, f in a.grid_maps:
        h, w = f.axes
        rows = [_clip(h.lo[i], h.hi[i], a.size[1]) for i in range(h.n)]
        cols = [_clip(w.lo[j], w.hi[j], a.size[2]) for j in range(w.n)]
        same = next((m for m in maps if m["rows"] == rows and m["cols"] == cols), None)
        if same is not None:
            same["layers"].append(layer)
            continue
        maps.append({"layers": [layer], "grid": [h.n, w.n], **f.summary(),
                     "cell_pixels": [a.size[1] / h.n, a.size[2] / w.n],
                     "rows": rows, "cols": cols})
    if not maps:
        raise CnnbenchError(f"{a.name} has no grid of cells: no feature map is flattened into "
                            "per-cell predictions or returned (try a detection model, e.g. ssd)")
    return {"model": a.name, "task": a.task, "input_size": list(a.size), "maps": maps}


# --- the effective receptive field (Luo et al., 2016) ---

def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a bare state dict or the trainer's ``{"model": state_dict, ...}``."""
    from cnnbench.checkpoints import read_checkpoint

    state = read_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CnnbenchError(f"{path} holds no state dict (a dict of tensors, or one under 'model')")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CnnbenchError(f"{path} does not fit this model: {first}") from None


def _erf_inputs(source: str, n: int, size, seed: int) -> tuple[torch.Tensor, str]:
    """``n`` inputs: Fashion-MNIST test images (resized, standardised) or Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = size
    if source in ("auto", "fashion-mnist"):
        try:
            from cnnbench.data.fashion_mnist import load_split

            images = load_split("test")[0]
            pick = torch.randperm(images.shape[0], generator=g)[:n]
            x = images[pick].float() / 255
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            x = ((x - x.mean()) / x.std()).expand(-1, c, -1, -1).contiguous()
            return x, f"{n} Fashion-MNIST test images"
        except (ImportError, CnnbenchError, OSError) as exc:
            if source == "fashion-mnist":
                raise CnnbenchError(f"Fashion-MNIST is not available: {exc}") from None
            reason = str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
            from cnnbench import render

            render.err.print(f"Fashion-MNIST not available ({reason}); using random inputs")
    elif source != "random":
        raise CnnbenchError(f"unknown --data {source!r}: use auto, fashion-mnist or random")
    return torch.randn((n, c, h, w), generator=g), f"{n} random N(0, 1) inputs"


def effective_field(name: str, input_size=None, *, model_args: dict | None = None,
                    layer: str | None = None, samples: int = 32, checkpoint: str | None = None,
                    data: str = "auto", seed: int = 0) -> dict:
    """The mean |gradient| of a layer's centre unit with respect to the input, over inputs.

    Returns the heat map and the sides of the smallest squares, centred on the unit's
    theoretical centre, that hold 50, 90 and 99 % of the gradient mass, beside the theoretical
    field. The default layer is the last one still laid out as a map larger than 1x1.
    """
    if samples < 1:
        raise CnnbenchError("--samples must be >= 1")
    a = _analyse(name, input_size, model_args)
    if layer is None:
        maps = [r for r in a.rows if r.field.dims is not None]
        big = [r for r in maps if r.field.axes[0].n * r.field.axes[1].n > 1]
        if not maps:
            raise CnnbenchError(f"{a.name} has no spatial layer")
        row = (big or maps)[-1]
    else:
        row = _pick(a, layer)[0]
    if row.field.dims is None:
        raise CnnbenchError(f"layer {row.name} is flattened: no centre unit (pick a map layer)")
    torch.manual_seed(seed)  # the same untrained weights on every run
    model, _ = build(name, model_args, in_channels=a.size[0], device="cpu")
    if checkpoint:
        load_checkpoint(model, checkpoint)
    model.eval()
    x, described = _erf_inputs(data, samples, a.size, seed)
    x.requires_grad_(True)
    module, count, index = row.call
    target = dict(model.named_modules())[_module_name(a, module)]
    captured, calls = [], [0]

    def hook(m, args, output):
        calls[0] += 1
        if calls[0] == count:
            captured.append(_tensors(output)[index])
            raise _Stop

    handle = target.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    out = captured[0]
    unit = _centre(row.field)
    sel = [slice(None)] * out.dim()
    for d, u in zip(row.field.dims, unit):
        sel[d] = u
    (grad,) = torch.autograd.grad(out[tuple(sel)].sum(), x)
    heat = grad.abs().sum(1).mean(0).double()
    centre = [min(max(round((ax.lo[u] + ax.hi[u]) / 2), 0), n - 1)
              for ax, u, n in zip(row.field.axes, unit, a.size[1:])]
    total = float(heat.sum())
    sides = {}
    for frac in (0.5, 0.9, 0.99):
        sides[f"{round(frac * 100)}%"] = _mass_side(heat, centre, frac * total) if total else None
    return {"model": a.name, "input_size": list(a.size), "layer": row.name, "type": row.type,
            "unit": list(unit), "centre": centre, "inputs": described,
            "checkpoint": checkpoint, **row.field.summary(),
            "seen": [b[1] - b[0] + 1 if b else 0 for b in _seen_box(row.field, a.size)],
            "seen_box": _seen_box(row.field, a.size), "mass_sides": sides,
            "heat": heat.tolist()}


def _module_name(a: Analysis, module) -> str:
    return next(r.name.split("[")[0].split("#")[0] for r in a.rows if r.call[0] is module)


def _mass_side(heat: torch.Tensor, centre, mass: float) -> list[int]:
    """Height and width of the smallest square centred on ``centre`` (clipped to the input)
    whose pixels hold ``mass``."""
    h, w = heat.shape
    cy, cx = centre
    for r in range(max(h, w)):
        box = heat[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1]
        if float(box.sum()) >= mass * (1 - 1e-9):
            return list(box.shape)
    return [h, w]


def _half_side(side, centre, size) -> int:
    """The half-width r of the clipped centred square whose clipped size is ``side``."""
    for r in range(max(size)):
        shape = [min(c + r, n - 1) - max(c - r, 0) + 1 for c, n in zip(centre, size)]
        if shape == list(side):
            return r
    return max(size)


def save_erf_png(erf: dict, path: str, scale: int | None = None) -> None:
    """Heat map (sqrt of the gradient mass, black to yellow) with the theoretical field in cyan
    and the 50/90/99 % squares in white, green and magenta."""
    from PIL import Image, ImageDraw

    heat = torch.tensor(erf["heat"])
    h, w = heat.shape
    scale = scale or max(1, 384 // max(h, w))
    v = (heat / heat.max()).sqrt() if float(heat.max()) > 0 else heat
    # A small black-red-yellow-white ramp, enough to read where the mass lies.
    r = (3 * v).clamp(0, 1)
    g = (3 * v - 1).clamp(0, 1)
    b = (3 * v - 2).clamp(0, 1)
    rgb = (torch.stack((r, g, b), dim=-1) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(rgb, "RGB").resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)

    def square(y0, y1, x0, x1, colour, width=2):
        draw.rectangle([x0 * scale, y0 * scale, (x1 + 1) * scale - 1, (y1 + 1) * scale - 1],
                       outline=colour, width=width)

    (ry, rx) = erf["seen_box"]
    if ry and rx:
        square(ry[0], ry[1], rx[0], rx[1], (0, 255, 255), 3)
    cy, cx = erf["centre"]
    for key, colour in (("50%", (255, 255, 255)), ("90%", (0, 255, 0)), ("99%", (255, 0, 255))):
        side = erf["mass_sides"].get(key)
        if side:
            half = _half_side(side, erf["centre"], (h, w))
            square(max(cy - half, 0), min(cy + half, h - 1), max(cx - half, 0),
                   min(cx + half, w - 1), colour, 1)
    sides = " / ".join("x".join(map(str, erf["mass_sides"][k] or [0]))
                       for k in ("50%", "90%", "99%"))
    caption = [f"{erf['model']} layer {erf['layer']}: theoretical field "
               f"{erf['receptive_field'][0]}x{erf['receptive_field'][1]} (cyan, clipped)",
               f"squares holding 50/90/99% of |grad| (white/green/magenta): {sides}"]
    framed = Image.new("RGB", (image.width, image.height + 30), (0, 0, 0))
    framed.paste(image, (0, 0))
    draw = ImageDraw.Draw(framed)
    for k, line in enumerate(caption):
        draw.text((4, image.height + 2 + 14 * k), line, fill=(255, 255, 255))
    image = framed
    try:
        image.save(path, format="PNG")
    except (OSError, ValueError) as exc:
        raise CnnbenchError(f"cannot write {path}: {exc}") from None
