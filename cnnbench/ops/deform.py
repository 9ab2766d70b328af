"""Deformable convolution: a fast drop-in for ``torchvision.ops.deform_conv2d`` and a module.

Offsets hold (dy, dx) pairs per kernel position, per offset group, as in torchvision:
``offset`` is ``[N, 2 * offset_groups * kh * kw, H_out, W_out]`` and ``mask`` (v2) is
``[N, offset_groups * kh * kw, H_out, W_out]``. Samples outside the input read zero.

On CUDA the work goes to Triton kernels (:mod:`cnnbench.ops.deform_triton`: one fused implicit
GEMM forward, atomics for the input gradient), or to torchvision's op where Triton is not
importable. How ours is computed on the CPU:

1. Every tap of every output position is a bilinear sample: four corner pixels with weights
   ``(1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly*lx`` (times the mask). The input is zero-padded by one
   pixel and stored channels-last, so a corner is one contiguous row of channels and a corner
   outside the image is clamped onto the zero border: that *is* torchvision's zero-outside rule.
2. A weighted sum of four rows is exactly what ``F.embedding_bag(mode="sum",
   per_sample_weights=...)`` computes, with a fused, vectorised kernel. It fills the im2col
   matrix (positions x kh*kw*C) one chunk of positions at a time, so the block stays in cache.
3. One matrix product per chunk with the weight gives the output.

The backward (a custom ``autograd.Function``) recomputes a chunk's columns instead of storing
them, multiplies back through the weight, and then needs two sparse steps:

* the gradient of the sample positions and of the mask: the derivative of a bilinear sample
  along y (or x) is itself a weighted sum of the same four corners, so ``embedding_bag`` with
  the derivative weights, then a dot product with the sample's column gradient (``bmm``);
* the gradient of the input, a scatter-add of the column gradient into the corners, done
  without atomics or a serial loop: sort a chunk's corner indices and let ``embedding_bag``
  sum, for every input pixel, the column-gradient rows that touched it.

Positions are computed in the input's float type exactly as torchvision does
(``out * stride - pad + tap * dilation + offset``), so both pick the same corners.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

# Bytes of im2col columns per chunk: small enough to stay in a CPU's cache, big enough that
# Python's per-chunk overhead stays negligible. On CUDA one chunk covers everything.
CHUNK_BYTES = 4 << 20


def deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Deformable convolution with torchvision's signature, offset layout and semantics.

    Weight groups are inferred from ``weight.shape[1]`` and offset groups from ``offset``'s
    channels, as in torchvision. Half precision is computed in float32 and cast back.
    """
    geometry = _Geometry.of(input, offset, weight, stride, padding, dilation, mask)
    # Tools that interpret a model op by op through a TorchFunctionMode (the receptive-field
    # tracer) see torchvision's single op; the numbers are the same. (On the meta device ours
    # runs, so FlopCounterMode counts the matrix product: a plain conv's FLOPs.)
    if torch._C._is_torch_function_mode_enabled():
        return torchvision_deform_conv2d(input, offset, weight, bias, stride, padding, dilation,
                                         mask)
    if input.is_cuda:
        triton_op = triton_deform_conv2d() if input.dtype in TRITON_DTYPES else None
        if triton_op is None:  # no Triton, or float64
            return torchvision_deform_conv2d(input, offset, weight, bias, stride, padding,
                                             dilation, mask)
        return triton_op(input, offset, weight, bias, stride, padding, dilation, mask,
                         check=False)
    return _ours(geometry, input, offset, weight, bias, mask)


def torchvision_deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0,
                              dilation=1, mask=None) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d``, imported on first use."""
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    return tv_deform_conv2d(input, offset, weight, bias, stride=_pair(stride),
                            padding=_pair(padding), dilation=_pair(dilation), mask=mask)


class _Geometry:
    """Shapes and hyper-parameters of one call, checked once."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    @classmethod
    def of(cls, x, offset, weight, stride, padding, dilation, mask):
        if x.dim() != 4 or offset.dim() != 4 or weight.dim() != 4:
            raise ValueError("deform_conv2d expects 4-d input, offset and weight")
        (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
        b, c, h, w = x.shape
        c_out, c_per_group, kh, kw = weight.shape
        taps = kh * kw
        if c % c_per_group or c_out % (c // c_per_group):
            raise ValueError(f"weight {tuple(weight.shape)} does not fit {c} input channels")
        if offset.shape[1] % (2 * taps) or offset.shape[1] == 0:
            raise ValueError(f"offset has {offset.shape[1]} channels; expected a multiple of "
                             f"2 * {kh} * {kw}")
        offset_groups = offset.shape[1] // (2 * taps)
        if c % offset_groups:
            raise ValueError(f"{c} input channels do not split into {offset_groups} offset groups")
        h_out = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
        w_out = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
        if tuple(offset.shape) != (b, 2 * offset_groups * taps, h_out, w_out):
            raise ValueError(f"offset shape {tuple(offset.shape)} does not match the output "
                             f"{h_out}x{w_out} of batch {b}")
        if mask is not None and tuple(mask.shape) != (b, offset_groups * taps, h_out, w_out):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the offsets")
        return cls(batch=b, channels=c, height=h, width=w, c_out=c_out, kh=kh, kw=kw,
                   taps=taps, stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw),
                   offset_groups=offset_groups, weight_groups=c // c_per_group,
                   h_out=h_out, w_out=w_out)


# --- ours -------------------------------------------------------------------------------------

def _ours(geo, x, offset, weight, bias, mask):
    # Half precision (and mixed dtypes under autocast) is computed in float32 and cast back;
    # float64 stays float64.
    dtype = x.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    # Autocast off inside: the products would otherwise drop to half precision.
    no_autocast = (torch.autocast(x.device.type, enabled=False)
                   if torch.amp.is_autocast_available(x.device.type) else contextlib.nullcontext())
    with no_autocast:
        x, offset, weight = x.to(work), offset.to(work), weight.to(work)
        bias = bias.to(work) if bias is not None else None
        mask = mask.to(work) if mask is not None else None
        py, px = _sample_positions(geo, offset)
        if mask is not None:  # to the samples' order: [N, H_out, W_out, kh*kw, offset_groups]
            g, kk = geo.offset_groups, geo.taps
            mask = mask.reshape(geo.batch, g, kk, geo.h_out, geo.w_out).permute(0, 3, 4, 2, 1)
        out = _DeformIm2col.apply(x, py, px, mask, weight, bias, geo)
    return out.to(dtype)


def _sample_positions(geo, offset):
    """Sample rows and columns ``[N, H_out, W_out, kh*kw, offset_groups]`` (differentiable)."""
    g, kh, kw = geo.offset_groups, geo.kh, geo.kw
    off = offset.reshape(geo.batch, g, kh * kw, 2, geo.h_out, geo.w_out).permute(0, 4, 5, 2, 1, 3)
    dev = offset.device
    tap_y = torch.arange(kh, device=dev).repeat_interleave(kw) * geo.dilation[0]
    tap_x = torch.arange(kw, device=dev).repeat(kh) * geo.dilation[1]
    # Integer grid first, then one float addition, as torchvision does: same rounding.
    grid_y = (torch.arange(geo.h_out, device=dev) * geo.stride[0] - geo.padding[0])
    grid_x = (torch.arange(geo.w_out, device=dev) * geo.stride[1] - geo.padding[1])
    base_y = (grid_y.view(-1, 1, 1) + tap_y.view(1, 1, -1)).to(offset.dtype)  # [H_out, 1, kk]
    base_x = (grid_x.view(1, -1, 1) + tap_x.view(1, 1, -1)).to(offset.dtype)  # [1, W_out, kk]
    py = base_y.unsqueeze(-1) + off[..., 0]
    px = base_x.unsqueeze(-1) + off[..., 1]
    return py, px


class _Taps:
    """Corner rows and bilinear factors of every sample (flattened positions x taps x groups).

    Rows index the zero-bordered, channels-last input ``[N * (H+2) * (W+2) * groups, C/groups]``.
    A sample one pixel or more outside has all four corners on the zero border, so it reads
    zero, as in torchvision, with no special case.
    """

    def __init__(self, geo, py, px):
        b, g = geo.batch, geo.offset_groups
        # [N, H_out * W_out * taps, groups]: the batch and group parts of a row are broadcast.
        py, px = py.reshape(b, -1, g), px.reshape(b, -1, g)
        hp, wp = geo.height + 2, geo.width + 2
        r0, r1, self.ly = _corner_lines(py, geo.height)
        c0, c1, self.lx = _corner_lines(px, geo.width)
        image_and_group = (torch.arange(b, device=py.device).view(b, 1, 1) * (hp * wp * g)
                           + torch.arange(g, device=py.device).view(1, 1, g))
        first = (r0 * wp + c0) * g + image_and_group
        right = (c1 - c0) * g  # 0 where both columns sit on the border
        down = (r1 - r0) * (wp * g)
        self.index = torch.stack([first, first + right, first + down, first + down + right],
                                 dim=-1).view(-1, 4)
        self.ly, self.lx = self.ly.reshape(-1), self.lx.reshape(-1)

    def bilinear(self):
        ly, lx = self.ly, self.lx
        hy, hx = 1 - ly, 1 - lx
        return torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], 1)

    def d_dy(self):
        lx = self.lx
        return torch.stack([lx - 1, -lx, 1 - lx, lx], 1)

    def d_dx(self):
        ly = self.ly
        return torch.stack([ly - 1, 1 - ly, -ly, ly], 1)


def _corner_lines(p, size):
    """Bordered rows (or columns) of the two corners around ``p``, and ``p``'s fraction.

    Clamping to ``[-1, size]`` (then + 1 for the border) sends a corner outside the input onto
    a zero border line. Positions are first clamped to ``[-2, size + 1]``, still wholly
    outside, so that infinities stay finite; NaN stays NaN in the weights.
    """
    p = p.clamp(-2, size + 1)
    low = p.floor()
    frac = p - low
    low = low.nan_to_num_(nan=-2.0).long()
    return low.clamp(-1, size).add_(1), low.clamp(-2, size - 1).add_(2), frac


def _table(x):
    """The input with a one-pixel zero border, channels-last: a table of channel rows."""
    return F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()


def _weight_matrix(weight, groups):
    """``[groups, kh*kw*C/groups, C_out/groups]``: the weight in the columns' order."""
    c_out, cpg, kh, kw = weight.shape
    return weight.view(groups, c_out // groups, cpg, kh * kw).permute(0, 3, 2, 1) \
        .reshape(groups, kh * kw * cpg, c_out // groups)


def _group_columns(cols, geo):
    """``[n, kk*C]`` columns -> ``[weight_groups, n, kk*C/groups]`` (a view when ungrouped)."""
    wg = geo.weight_groups
    if wg == 1:
        return cols.unsqueeze(0)
    n = cols.shape[0]
    return cols.view(n, geo.taps, wg, -1).permute(2, 0, 1, 3).reshape(wg, n, -1)


def _ungroup_columns(grouped, geo):
    wg = geo.weight_groups
    if wg == 1:
        return grouped[0]
    n = grouped.shape[1]
    return grouped.view(wg, n, geo.taps, -1).permute(1, 2, 0, 3).reshape(n, -1)


def _chunks(geo, element_size, device):
    """Runs of output positions whose columns fill about ``CHUNK_BYTES``."""
    positions = geo.batch * geo.h_out * geo.w_out
    if device.type != "cpu":
        return [(0, positions)]
    step = max(1, CHUNK_BYTES // (geo.taps * geo.channels * element_size))
    return [(s, min(s + step, positions)) for s in range(0, positions, step)]


class _DeformIm2col(torch.autograd.Function):
    """Bilinear im2col by ``embedding_bag`` and a matrix product, chunk by chunk."""

    @staticmethod
    def forward(ctx, x, py, px, mask, weight, bias, geo):
        rows = _table(x).view(-1, geo.channels // geo.offset_groups)
        wmat = _weight_matrix(weight, geo.weight_groups)
        per_pos = geo.taps * geo.offset_groups  # bags per output position
        taps = _Taps(geo, py, px)
        weights = taps.bilinear() if mask is None else taps.bilinear() * mask.reshape(-1, 1)
        out = x.new_empty(geo.batch * geo.h_out * geo.w_out, geo.c_out)
        for start, stop in _chunks(geo, x.element_size(), x.device):
            bags = slice(start * per_pos, stop * per_pos)
            cols = F.embedding_bag(taps.index[bags], rows, per_sample_weights=weights[bags],
                                   mode="sum").view(stop - start, -1)
            if geo.weight_groups == 1:
                torch.mm(cols, wmat[0], out=out[start:stop])
            else:
                out[start:stop] = torch.bmm(_group_columns(cols, geo), wmat) \
                    .permute(1, 0, 2).reshape(stop - start, -1)
        if bias is not None:
            out += bias
        ctx.geo, ctx.taps, ctx.has_bias = geo, taps, bias is not None
        ctx.save_for_backward(x, mask, weight)
        ctx.position_shape = py.shape
        # Contiguous like torchvision's result, so that callers may .view() it.
        return out.view(geo.batch, geo.h_out, geo.w_out, geo.c_out).permute(0, 3, 1, 2) \
            .contiguous()

    @staticmethod
    def backward(ctx, grad_out):
        x, mask, weight = ctx.saved_tensors
        geo, taps = ctx.geo, ctx.taps
        need_x, need_py, need_px, need_mask, need_w, need_b = ctx.needs_input_grad[:6]
        need_mask = need_mask and mask is not None
        cg = geo.channels // geo.offset_groups
        rows = _table(x).view(-1, cg)
        wmat = _weight_matrix(weight, geo.weight_groups)
        per_pos = geo.taps * geo.offset_groups
        m = mask.reshape(-1, 1) if mask is not None else None
        wg = geo.weight_groups
        go = grad_out.permute(0, 2, 3, 1).reshape(-1, wg, geo.c_out // wg).to(x.dtype)
        n_bags = taps.index.shape[0]
        grad_wmat = torch.zeros_like(wmat) if need_w else None
        wanted = [need_py, need_px, need_mask]
        grad_pos = x.new_empty(n_bags, sum(wanted)) if any(wanted) else None
        grad_rows = torch.zeros_like(rows) if need_x else None
        rows_per_image = (geo.height + 2) * (geo.width + 2) * geo.offset_groups
        per_image = geo.h_out * geo.w_out
        wmat_t = wmat.transpose(1, 2).contiguous()
        weights = taps.bilinear() if m is None else taps.bilinear() * m
        if grad_pos is not None:
            # d(sample)/dy, d(sample)/dx and the unmasked sample, each a 4-corner sum: k bags
            # per sample, then k dot products with the sample's column gradient.
            factors = []
            if need_py:
                factors.append(taps.d_dy() if m is None else taps.d_dy() * m)
            if need_px:
                factors.append(taps.d_dx() if m is None else taps.d_dx() * m)
            if need_mask:
                factors.append(taps.bilinear())
            k = len(factors)
            factors = torch.stack(factors, 1)  # [bags, k, 4]

        for start, stop in _chunks(geo, x.element_size(), x.device):
            bags = slice(start * per_pos, stop * per_pos)
            go_c = go[start:stop].transpose(0, 1)  # [groups, n, C_out/groups]
            if need_w:
                cols = F.embedding_bag(taps.index[bags], rows, per_sample_weights=weights[bags],
                                       mode="sum").view(stop - start, -1)
                grad_wmat.baddbmm_(_group_columns(cols, geo).transpose(1, 2), go_c)
            if not (need_x or grad_pos is not None):
                continue
            if wg == 1:
                chunk_grad = torch.mm(go_c[0], wmat_t[0]).view(-1, cg)
            else:
                chunk_grad = _ungroup_columns(torch.bmm(go_c, wmat_t), geo).reshape(-1, cg)
            if grad_pos is not None:
                index = taps.index[bags].unsqueeze(1).expand(-1, k, -1).reshape(-1, 4)
                samples = F.embedding_bag(index, rows, per_sample_weights=factors[bags].view(-1, 4),
                                          mode="sum")
                torch.bmm(samples.view(-1, k, cg), chunk_grad.unsqueeze(-1),
                          out=grad_pos[bags].unsqueeze(-1))
            if need_x:
                # A chunk's corners all lie in the rows of its own images.
                lo = start // per_image * rows_per_image
                hi = ((stop - 1) // per_image + 1) * rows_per_image
                grad_rows[lo:hi] += _scatter_rows(taps.index[bags] - lo, weights[bags],
                                                  chunk_grad, hi - lo)

        grad_x = None
        if need_x:
            h, w = geo.height, geo.width
            grad_x = grad_rows.view(geo.batch, h + 2, w + 2, geo.channels)[:, 1:h + 1, 1:w + 1] \
                .permute(0, 3, 1, 2)
        grad_weight = None
        if need_w:
            c_out, cpg, kh, kw = weight.shape
            grad_weight = grad_wmat.view(wg, kh * kw, cpg, c_out // wg).permute(0, 3, 2, 1) \
                .reshape(c_out, cpg, kh, kw)
        grad_bias = go.sum(0).reshape(-1) if need_b and ctx.has_bias else None
        pos_grads = iter(grad_pos.t().reshape(-1, *ctx.position_shape)) \
            if grad_pos is not None else None
        grad_py, grad_px, grad_m = (next(pos_grads) if want else None for want in wanted)
        return grad_x, grad_py, grad_px, grad_m, grad_weight, grad_bias, None


def _scatter_rows(index, weights, source, n_rows):
    """``out[index[n, j]] += weights[n, j] * source[n]``, with no atomics and no serial loop.

    Sorting the indices turns the scatter into a gather: ``embedding_bag`` sums, for every
    output row, the ``source`` rows that point at it, each bag one run of the sorted order.
    """
    flat = index.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(order // index.shape[1], source, starts,
                           per_sample_weights=weights.reshape(-1)[order], mode="sum")


# --- CUDA: the Triton kernels --------------------------------------------------------------------

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def triton_deform_conv2d():
    """:func:`cnnbench.ops.deform_triton.deform_conv2d`, or None where Triton is not importable."""
    try:
        from cnnbench.ops.deform_triton import deform_conv2d as triton_op
    except ImportError:
        return None
    return triton_op


# --- the module ------------------------------------------------------------------------------

class DeformConv2d(nn.Module):
    """Deformable convolution v1 (``modulation=False``) or v2 (``modulation=True``).

    A regular convolution of the same kernel, stride, padding and dilation predicts the offsets
    (and, for v2, the mask through a sigmoid). Both branches start at zero, as in the notes, so
    at initialisation the layer is a plain convolution (v2: scaled by 0.5). Their learning rate
    is ``offset_lr_mult`` times the base rate: :meth:`lr_multipliers` tells the trainer's
    optimizer builder so, the working form of the notes' backward hook (which rebinds local
    names and so changes nothing).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1,
                 dilation=1, bias: bool = False, modulation: bool = False,
                 offset_groups: int = 1, offset_lr_mult: float = 0.1):
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.modulation = modulation
        self.offset_lr_mult = offset_lr_mult
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        taps = offset_groups * kh * kw
        branch = dict(kernel_size=(kh, kw), stride=stride, padding=padding, dilation=dilation)
        self.p_conv = nn.Conv2d(in_channels, 2 * taps, **branch)
        self.m_conv = nn.Conv2d(in_channels, taps, **branch) if modulation else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same initialisation as nn.Conv2d for the main weight.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        for branch in (self.p_conv, self.m_conv):
            if branch is not None:
                nn.init.zeros_(branch.weight)
                nn.init.zeros_(branch.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.p_conv(x)
        mask = torch.sigmoid(self.m_conv(x)) if self.modulation else None
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride,
                             padding=self.padding, dilation=self.dilation, mask=mask)

    def lr_multipliers(self) -> dict[str, float]:
        """Learning-rate multipliers of this layer's own parameters, by relative name."""
        return {name: self.offset_lr_mult for branch in ("p_conv", "m_conv")
                if getattr(self, branch) is not None
                for name, _ in getattr(self, branch).named_parameters(prefix=branch)}

    def extra_repr(self) -> str:
        out_c, in_c, kh, kw = self.weight.shape
        return (f"{in_c}, {out_c}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, "
                f"modulation={self.modulation}")

