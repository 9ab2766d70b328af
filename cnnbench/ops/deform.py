"""Deformable convolution: a fast drop-in for ``torchvision.ops.deform_conv2d`` and a module.

Offsets hold (dy, dx) pairs per kernel position, per offset group, as in torchvision:
``offset`` is ``[N, 2 * offset_groups * kh * kw, H_out, W_out]`` and ``mask`` (v2) is
``[N, offset_groups * kh * kw, H_out, W_out]``. Samples outside the input read zero.

On CUDA the work goes to Triton kernels (:mod:`cnnbench.ops.deform_triton`: one fused implicit
GEMM forward, atomics for the input gradient), or to torchvision's op where Triton is not
importable. How ours is computed on the CPU:

1. Every tap of every output position is a bilinear sample: four corner pixels with weights
   ``(1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly*lx`` (times the mask). The input is zero-padded by two
   pixels and stored channels-last, so a corner is one contiguous row of channels, the four
   corners are always the same four rows around the top-left one, and a sample one pixel or more
   outside the image has all four on the zero border: that *is* torchvision's zero-outside rule.
2. A weighted sum of four rows is exactly what ``F.embedding_bag(mode="sum",
   per_sample_weights=...)`` computes, with a fused, vectorised kernel. It fills the im2col
   matrix (positions x kh*kw*C) one chunk of positions at a time, so the block stays in cache.
3. One matrix product per chunk with the weight gives the output, written straight into NCHW.

The backward (a custom ``autograd.Function``) recomputes a chunk's columns for the weight
gradient instead of storing them (cheaper, see ``CHUNK_BYTES``), multiplies the output gradient
back through the weight into a column gradient (one row per sample), and then needs two sparse
steps:

* the gradient of the sample positions and of the mask: each is a fixed combination of the
  four dot products (corner row . the sample's column gradient), which
  ``torch.sparse.sampled_addmm`` computes without gathering the corners;
* the gradient of the input, a scatter-add of the column gradient into the corners, done
  without atomics or a serial loop: sort a chunk's corner indices and let ``embedding_bag``
  sum, for every input pixel, the column-gradient rows that touched it.

Positions are computed in the input's float type exactly as torchvision does
(``out * stride - pad + tap * dilation + offset``), so both pick the same corners.
"""

import contextlib
import functools
import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from cnnbench.ops.geometry import Geometry

# Bytes of im2col columns per chunk: small enough to stay in a CPU's cache, big enough that
# Python's per-chunk overhead stays negligible. On CUDA one chunk covers everything. The
# backward recomputes the columns rather than keeping them from the forward: at batch 8, 64
# channels, 56x56, 3x3 on one core, the forward's embedding_bag calls take 9 ms when each chunk
# reuses the memory of the one before and 35 ms when every chunk is kept (58 MB of fresh
# memory), more than the 9 ms that recomputing costs the backward.
CHUNK_BYTES = 4 << 20


def deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, stride: int | tuple[int, int] = 1,
                  padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Deformable convolution with torchvision's signature, offset layout and semantics.

    Weight groups are inferred from ``weight.shape[1]`` and offset groups from ``offset``'s
    channels, as in torchvision. Half precision is computed in float32 and cast back. Shapes
    that do not fit raise RuntimeError, as torchvision's op does; a batch of 0 gives an empty
    output.

    Under ``torch.jit.script`` the call goes back to Python (see :func:`_from_script`): a
    scripted function or module runs, but cannot be saved with ``torch.jit.save``.
    """
    # The annotations (no ``from __future__ import annotations`` here) are what TorchScript
    # reads; the scripted body is this one line, the rest is never compiled.
    if torch.jit.is_scripting():
        return _from_script(input, offset, weight, bias, stride, padding, dilation, mask)
    geometry = Geometry.of(input, offset, weight, stride, padding, dilation, mask)
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


@torch.jit.ignore
def _from_script(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None, stride: int | tuple[int, int],
                 padding: int | tuple[int, int], dilation: int | tuple[int, int],
                 mask: torch.Tensor | None) -> torch.Tensor:
    """TorchScript's way into :func:`deform_conv2d`: a Python call, every argument given (an
    ignored function's defaults do not reach TorchScript)."""
    return deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)


def torchvision_deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0,
                              dilation=1, mask=None) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d``, imported on first use."""
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    return tv_deform_conv2d(input, offset, weight, bias, stride=_pair(stride),
                            padding=_pair(padding), dilation=_pair(dilation), mask=mask)


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


# The input as a table of channel rows has a zero border this wide: the corners of a sample one
# pixel or more outside the image then all land on it (see _corner_line).
BORDER = 2


class _Taps:
    """Every sample's top-left corner row and bilinear fractions, flattened in the samples' order
    (image, output position, tap, offset group): one *bag* of four corners per sample.

    Rows index the bordered, channels-last input ``[N * (H+4) * (W+4) * groups, C/groups]``.
    Thanks to the two-pixel border a sample's four corners are always the rows
    ``first + corners``, whatever the sample's position, so only ``first`` is stored.
    """

    def __init__(self, geo, py, px):
        b, g = geo.batch, geo.offset_groups
        # [N, H_out * W_out * taps, groups]: the batch and group parts of a row are broadcast.
        # (Sizes spelt out: a batch of 0 has no -1 to infer.)
        samples = geo.h_out * geo.w_out * geo.taps
        py, px = py.reshape(b, samples, g), px.reshape(b, samples, g)
        hp, wp = geo.height + 2 * BORDER, geo.width + 2 * BORDER
        dtype = _index_dtype(b * hp * wp * g)
        row, ly = _corner_line(py, geo.height, dtype)
        col, lx = _corner_line(px, geo.width, dtype)
        image_and_group = (torch.arange(b, dtype=dtype, device=py.device).view(b, 1, 1)
                           * (hp * wp * g)
                           + torch.arange(g, dtype=dtype, device=py.device).view(1, 1, g))
        self.first = ((row * wp + col) * g + image_and_group).reshape(-1)
        self.ly, self.lx = ly.reshape(-1), lx.reshape(-1)
        # Top-left, top-right, bottom-left, bottom-right: one pixel is ``g`` rows.
        self.corners = torch.tensor([0, g, wp * g, (wp + 1) * g], dtype=dtype, device=py.device)

    def index(self, bags):
        """Corner rows ``[n, 4]`` of a run of bags (increasing along each bag)."""
        return self.first[bags].unsqueeze(1) + self.corners

    def weights(self, bags, mask):
        """``(1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly*lx`` of a run of bags, times the mask."""
        ly, lx = self.ly[bags], self.lx[bags]
        hy, hx = 1 - ly, 1 - lx
        if mask is not None:
            hy, ly = hy * mask[bags], ly * mask[bags]
        # Four products of vectors, stacked: a broadcast outer product over [n, 2, 2] is
        # several times slower (its innermost dimension is 2).
        return torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], 1)

    def position_gradients(self, dots, mask):
        """Gradients of the sample rows, columns and mask, from ``dots[n, j]``: the column
        gradient of sample n dotted with its corner j (see :func:`_corner_dots`).

        A sample is ``mask * ((1-ly) top + ly bottom)`` with ``top = (1-lx) c00 + lx c01`` and
        ``bottom = (1-lx) c10 + lx c11``: its derivative along y is ``mask * (bottom - top)``,
        along x ``mask * (right - left)``, and along the mask the unmasked sample.
        """
        ly, lx = self.ly, self.lx
        d00, d01, d10, d11 = dots.unbind(1)
        top, bottom = torch.lerp(d00, d01, lx), torch.lerp(d10, d11, lx)
        left, right = torch.lerp(d00, d10, ly), torch.lerp(d01, d11, ly)
        grad_y, grad_x = bottom - top, right - left
        if mask is not None:
            grad_y *= mask
            grad_x *= mask
        return grad_y, grad_x, torch.lerp(top, bottom, ly)


def _index_dtype(rows):
    """int32 where the table's rows fit: embedding_bag, the sort and the sparse product all take
    int32 indices, and run about a quarter faster on them than on int64."""
    return torch.int32 if rows <= torch.iinfo(torch.int32).max else torch.int64


def _corner_line(p, size, dtype):
    """The bordered line (row or column) of the top-left corner around ``p``, and ``p``'s fraction.

    The corners' lines are ``floor(p)`` and the next one. Positions are first clamped to
    ``[-2, size + 1]``, where a sample is wholly outside: both lines then lie in the two-line zero
    border on that side (``size + 1`` keeps the top-left line at ``size``, its fraction 0), and
    infinities become finite. NaN stays NaN in the fraction, so in the weights.
    """
    p = p.clamp(-2, size + 1)
    low = p.floor()
    frac = p - low
    return low.nan_to_num_(nan=-2.0).clamp_(max=size).to(dtype).add_(BORDER), frac


def _table(x):
    """The input with a zero border of ``BORDER`` pixels, channels-last: a table of channel rows."""
    n, c, h, w = x.shape
    table = x.new_zeros(n, h + 2 * BORDER, w + 2 * BORDER, c)
    table[:, BORDER:h + BORDER, BORDER:w + BORDER] = x.permute(0, 2, 3, 1)
    return table


def _weight_matrix(weight, groups):
    """``[groups, kh*kw*C/groups, C_out/groups]``: the weight in the columns' order."""
    c_out, cpg, kh, kw = weight.shape
    return weight.reshape(groups, c_out // groups, cpg, kh * kw).permute(0, 3, 2, 1) \
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
    """Runs ``(start, stop)`` of output positions (numbered across the batch) whose columns fill
    about ``CHUNK_BYTES``: whole images, or equal parts of one image, so that a run is one block
    of an NCHW tensor (see :func:`_block`)."""
    per_image = geo.h_out * geo.w_out
    positions = geo.batch * per_image
    if device.type != "cpu":
        return [(0, positions)]
    step = max(1, CHUNK_BYTES // (geo.taps * geo.channels * element_size))
    if step >= per_image:
        step -= step % per_image
        return [(s, min(s + step, positions)) for s in range(0, positions, step)]
    parts = -(-per_image // step)
    bounds = [per_image * p // parts for p in range(parts + 1)]
    return [(i * per_image + a, i * per_image + b) for i in range(geo.batch)
            for a, b in zip(bounds, bounds[1:])]


def _block(t, start, stop):
    """Positions ``start:stop`` of a contiguous NCHW tensor as a view ``[images, C, positions]``
    (a run of :func:`_chunks`: whole images, or a part of one)."""
    n, c, h, w = t.shape
    first, last = start // (h * w), (stop - 1) // (h * w)
    return t.view(n, c, h * w)[first:last + 1, :, start - first * h * w:stop - last * h * w]


class _DeformIm2col(torch.autograd.Function):
    """Bilinear im2col by ``embedding_bag`` and a matrix product, chunk by chunk."""

    @staticmethod
    def forward(ctx, x, py, px, mask, weight, bias, geo):
        rows = _table(x).view(-1, geo.channels // geo.offset_groups)
        wg = geo.weight_groups
        wmat = _weight_matrix(weight, wg)
        per_pos = geo.taps * geo.offset_groups  # bags per output position
        taps = _Taps(geo, py, px)
        mask = mask.reshape(-1) if mask is not None else None  # one value per bag
        # Contiguous NCHW like torchvision's result, so that callers may .view() it.
        out = x.new_empty(geo.batch, geo.c_out, geo.h_out, geo.w_out)
        for start, stop in _chunks(geo, x.element_size(), x.device):
            bags = slice(start * per_pos, stop * per_pos)
            cols = F.embedding_bag(taps.index(bags), rows,
                                   per_sample_weights=taps.weights(bags, mask),
                                   mode="sum").view(stop - start, -1)
            block = _block(out, start, stop)  # [images, C_out, positions]
            if wg == 1 and block.shape[0] == 1:
                # Straight into the output: a transposed matrix with leading dimension H*W.
                _addmm(bias, cols, wmat[0], out=block[0].t())
                continue
            if wg == 1:
                result = _addmm(bias, cols, wmat[0])
            else:
                result = torch.bmm(_group_columns(cols, geo), wmat).permute(1, 0, 2) \
                    .reshape(stop - start, -1)
                if bias is not None:
                    result += bias
            block.copy_(result.view(block.shape[0], -1, geo.c_out).transpose(1, 2))
        ctx.geo, ctx.taps, ctx.has_bias = geo, taps, bias is not None
        ctx.save_for_backward(x, mask, weight)
        ctx.position_shape = py.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, mask, weight = ctx.saved_tensors
        geo, taps = ctx.geo, ctx.taps
        need_x, need_py, need_px, need_mask, need_w, need_b = ctx.needs_input_grad[:6]
        need_mask = need_mask and mask is not None
        need_dots = need_py or need_px or need_mask
        cg = geo.channels // geo.offset_groups
        wg = geo.weight_groups
        rows = _table(x).view(-1, cg)
        wmat = _weight_matrix(weight, wg)
        wmat_t = wmat.transpose(1, 2).contiguous()
        per_pos = geo.taps * geo.offset_groups
        grad_out = grad_out.to(x.dtype).contiguous()
        grad_wmat = torch.zeros_like(wmat) if need_w else None
        dots = x.new_empty(taps.first.shape[0], 4) if need_dots else None
        grad_x = x.new_empty(x.shape) if need_x else None
        # (From the geometry: a batch of 0 has no rows to divide.)
        rows_per_image = (geo.height + 2 * BORDER) * (geo.width + 2 * BORDER) * geo.offset_groups
        per_image = geo.h_out * geo.w_out
        image_rows = None  # the input gradient of the current images, bordered, channels-last

        for start, stop in _chunks(geo, x.element_size(), x.device):
            bags = slice(start * per_pos, stop * per_pos)
            index, weights = taps.index(bags), taps.weights(bags, mask)
            # [groups, n, C_out/groups]: a view of grad_out within one image, else a copy.
            go_c = _block(grad_out, start, stop).transpose(1, 2).reshape(stop - start, wg, -1) \
                .transpose(0, 1)
            if need_w:  # the columns again (cheaper than keeping them: see CHUNK_BYTES)
                cols = F.embedding_bag(index, rows, per_sample_weights=weights, mode="sum")
                grad_wmat.baddbmm_(_group_columns(cols.view(stop - start, -1), geo)
                                   .transpose(1, 2), go_c)
            if not (need_x or need_dots):
                continue
            # The column gradient: one row of C/groups per sample (bag).
            if wg == 1:
                grad_cols = torch.mm(go_c[0], wmat_t[0]).view(-1, cg)
            else:
                grad_cols = _ungroup_columns(torch.bmm(go_c, wmat_t), geo).reshape(-1, cg)
            if need_dots:
                dots[bags] = _corner_dots(index, rows, grad_cols)
            if need_x:
                # A chunk's corners all lie in the rows of its own images: the gradient of
                # those images' bordered table, summed over the parts of an image, then copied
                # into grad_x once the image is complete.
                lo = start // per_image * rows_per_image
                hi = ((stop - 1) // per_image + 1) * rows_per_image
                part = _scatter_rows(index - lo, weights, grad_cols, hi - lo)
                image_rows = part if start % per_image == 0 else image_rows.add_(part)
                if stop % per_image == 0:
                    h, w, b = geo.height, geo.width, BORDER
                    grad_x[lo // rows_per_image:hi // rows_per_image].copy_(
                        image_rows.view(-1, h + 2 * b, w + 2 * b, geo.channels)[
                            :, b:h + b, b:w + b].permute(0, 3, 1, 2))

        grad_weight = None
        if need_w:
            c_out, cpg, kh, kw = weight.shape
            grad_weight = grad_wmat.reshape(wg, kh * kw, cpg, c_out // wg).permute(0, 3, 2, 1) \
                .reshape(c_out, cpg, kh, kw)
        grad_bias = grad_out.sum((0, 2, 3)) if need_b and ctx.has_bias else None
        grad_py = grad_px = grad_m = None
        if need_dots:
            grad_py, grad_px, grad_m = (g.view(ctx.position_shape) if want else None for g, want
                                        in zip(taps.position_gradients(dots, mask),
                                               (need_py, need_px, need_mask)))
        return grad_x, grad_py, grad_px, grad_m, grad_weight, grad_bias, None


def _addmm(bias, a, b, out=None):
    """``a @ b + bias``, or ``a @ b`` where there is no bias."""
    if bias is None:
        return torch.mm(a, b, out=out)
    return torch.addmm(bias, a, b, out=out)


def _corner_dots(index, rows, grad):
    """``out[n, j] = rows[index[n, j]] . grad[n]``: each sample's column gradient dotted with
    each of its four corners, without gathering the corners into a tensor.

    These are the entries of ``grad @ rows.T`` on the sparsity pattern of ``index``: a sampled
    dense-dense product, which ``torch.sparse.sampled_addmm`` computes as one vectorised dot
    product per entry. ``index`` increases along each bag, so the pattern is a valid CSR matrix
    (the invariant checks, which would cost a pass, are skipped).
    """
    n = index.shape[0]
    crow = torch.arange(0, 4 * n + 1, 4, dtype=index.dtype, device=index.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse CSR tensor support is in beta state"
        pattern = torch.sparse_csr_tensor(crow, index.view(-1), grad.new_zeros(4 * n),
                                          (n, rows.shape[0]), check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, grad, rows.t(), beta=0).values().view(n, 4)


def _scatter_rows(index, weights, source, n_rows):
    """``out[index[n, j]] += weights[n, j] * source[n]``, with no atomics and no serial loop.

    Sorting the indices turns the scatter into a gather: ``embedding_bag`` sums, for every
    output row, the ``source`` rows that point at it, each bag one run of the sorted order.
    """
    flat = index.view(-1)  # int32 where the rows fit: it sorts in about half the time
    order = torch.sort(flat, stable=True).indices
    counts = torch.bincount(flat, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    # The sample of each entry: order // 4, a shift.
    return F.embedding_bag(order >> 2, source, starts,
                           per_sample_weights=weights.view(-1).index_select(0, order), mode="sum")


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
        mask = None
        if self.m_conv is not None:  # (TorchScript compiles this only where there is a branch)
            mask = torch.sigmoid(self.m_conv(x))
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

