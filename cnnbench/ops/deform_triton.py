"""Deformable convolution in Triton: one fused kernel forward, two backward, as a custom op.

Same signature, offset layout and semantics as ``torchvision.ops.deform_conv2d`` (see
:mod:`cnnbench.ops.deform`). The work is an implicit GEMM: rows are the ``N * H_out * W_out``
output positions, the reduction runs over ``kh * kw`` taps times the input channels of a weight
group, and the columns (the bilinear samples) are computed in registers, tile by tile, and never
written to memory (DCNv4's point: the sampling and the aggregation fused, memory traffic cut).

* Forward, one kernel: for each tap and each run of channels sharing an offset group, the four
  corner rows of every sample are read from a channels-last copy of the input (a corner is a
  contiguous run of channels), blended with the bilinear weights times the mask, and multiplied by
  the weight tile with ``tl.dot`` into a float32 accumulator.
* Backward, data kernel (one program per block of positions and per tap): the column gradient
  ``grad_out x weight^T`` by ``tl.dot``, scattered into the input gradient with atomic adds at
  the four corners, and dotted with the derivatives of the sample along y and x (offset gradient)
  and with the sample itself (mask gradient).
* Backward, weight kernel: ``columns^T x grad_out`` summed over positions, the columns recomputed
  tile by tile; the positions are split over several programs that add their parts atomically.
* The bias gradient is a sum over ``grad_out``.

A corner outside the image reads zero and receives nothing; a sample's offset gradient uses the
corners' validity only, as torchvision's ``get_coordinate_weight`` does. Half precision is read
and multiplied in its own type with float32 accumulation; float32 products use ``tf32x3``
(three TF32 products: float32 accuracy on tensor cores) unless
``torch.backends.cuda.matmul.allow_tf32`` asks for plain TF32.

Triton runs the kernels on CUDA tensors, or on CPU tensors under its interpreter
(``TRITON_INTERPRET=1`` set before this module is imported), which is how the tests run them.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl
from torch.nn.modules.utils import _pair

from cnnbench.ops.geometry import Geometry

# Indices are int32 inside the kernels.
MAX_ELEMENTS = 2**31 - 1


# --- kernels -----------------------------------------------------------------------------------

@triton.jit
def _corners(py, px, height, width, live):
    """Where a sample's four corners are and how much each counts.

    Returns the corners' pixel indices ``y * W + x`` (clamped into the image, so every load is
    in bounds, also for positions past the last), the row factors ``(1-ly, ly)`` and column factors ``(1-lx, lx)`` with a line
    outside the image (or a position past the last, ``live`` false) zeroed, and the same lines'
    0/1 validity, which the offset gradient needs.
    """
    # NaN and far positions go to -2: all four corners outside. Clamping keeps int32 finite.
    py = tl.where(py == py, tl.minimum(tl.maximum(py, -2.0), height + 1.0), -2.0)
    px = tl.where(px == px, tl.minimum(tl.maximum(px, -2.0), width + 1.0), -2.0)
    fy = tl.floor(py)
    fx = tl.floor(px)
    ly = py - fy
    lx = px - fx
    y0 = fy.to(tl.int32)
    x0 = fx.to(tl.int32)
    in_y0 = tl.where(live & (y0 >= 0) & (y0 < height), 1.0, 0.0)
    in_y1 = tl.where(live & (y0 >= -1) & (y0 < height - 1), 1.0, 0.0)
    in_x0 = tl.where((x0 >= 0) & (x0 < width), 1.0, 0.0)
    in_x1 = tl.where((x0 >= -1) & (x0 < width - 1), 1.0, 0.0)
    y0c = tl.minimum(tl.maximum(y0, 0), height - 1)
    y1c = tl.minimum(tl.maximum(y0 + 1, 0), height - 1)
    x0c = tl.minimum(tl.maximum(x0, 0), width - 1)
    x1c = tl.minimum(tl.maximum(x0 + 1, 0), width - 1)
    return (y0c * width + x0c, y0c * width + x1c, y1c * width + x0c, y1c * width + x1c,
            in_y0 * (1 - ly), in_y1 * ly, in_x0 * (1 - lx), in_x1 * lx,
            in_y0, in_y1, in_x0, in_x1)


@triton.jit
def _tap_positions(off_ptr, n, hw, live, oh, ow, og, k, G, hw_out, stride_h, stride_w, pad_h,
                   pad_w, dil_h, dil_w, KH: tl.constexpr, KW: tl.constexpr):
    """Sample rows and columns of tap ``k`` of offset group ``og``: integer grid, then + offset."""
    K: tl.constexpr = KH * KW
    ch = n * (2 * G * K) + 2 * (og * K + k)
    dy = tl.load(off_ptr + ch * hw_out + hw, mask=live, other=0.0).to(tl.float32)
    dx = tl.load(off_ptr + (ch + 1) * hw_out + hw, mask=live, other=0.0).to(tl.float32)
    # Integer grid first, then one float addition, as torchvision does: the same corners.
    by = oh * stride_h - pad_h + (k // KW) * dil_h
    bx = ow * stride_w - pad_w + (k % KW) * dil_w
    return by.to(tl.float32) + dy, bx.to(tl.float32) + dx


@triton.jit
def _mask_values(mask_ptr, n, hw, live, og, k, G, hw_out, K: tl.constexpr):
    return tl.load(mask_ptr + (n * (G * K) + og * K + k) * hw_out + hw, mask=live,
                   other=0.0).to(tl.float32)


@triton.jit
def _corner_values(x_ptr, image, p00, p01, p10, p11, c, c_ok, C, EVEN_C: tl.constexpr):
    """The four corners' channel rows ``[BLOCK_M, BLOCK_C]`` in float32 (masked by weights)."""
    ptr = x_ptr + c[None, :]
    if EVEN_C:  # every run of channels fills whole blocks: no mask, wide loads
        v00 = tl.load(ptr + ((image + p00) * C)[:, None])
        v01 = tl.load(ptr + ((image + p01) * C)[:, None])
        v10 = tl.load(ptr + ((image + p10) * C)[:, None])
        v11 = tl.load(ptr + ((image + p11) * C)[:, None])
    else:
        ok = c_ok[None, :]
        v00 = tl.load(ptr + ((image + p00) * C)[:, None], mask=ok, other=0.0)
        v01 = tl.load(ptr + ((image + p01) * C)[:, None], mask=ok, other=0.0)
        v10 = tl.load(ptr + ((image + p10) * C)[:, None], mask=ok, other=0.0)
        v11 = tl.load(ptr + ((image + p11) * C)[:, None], mask=ok, other=0.0)
    return v00.to(tl.float32), v01.to(tl.float32), v10.to(tl.float32), v11.to(tl.float32)


@triton.jit
def _positions(block, H_OUT, W_OUT, BLOCK_M: tl.constexpr):
    """Block ``block`` of output positions: its image, and the positions' flat index, whether
    they exist, rows and columns. A block lies inside one image, so the positions are
    contiguous in NCHW tensors (offset, mask, output, its gradient) and accesses coalesce."""
    hw_out = H_OUT * W_OUT
    per_image = (hw_out + BLOCK_M - 1) // BLOCK_M
    hw = (block % per_image) * BLOCK_M + tl.arange(0, BLOCK_M)
    return block // per_image, hw, hw < hw_out, hw // W_OUT, hw % W_OUT


# Sizes that change with every shape are not specialised (one binary serves many shapes); the
# channel counts are, so that rows of channels load as aligned vectors.
_VARYING = ["M", "H", "W", "H_OUT", "W_OUT", "m_bucket", "stride_h", "stride_w", "pad_h", "pad_w",
            "dil_h", "dil_w", "G"]


@triton.jit(do_not_specialize=_VARYING)
def _deform_fwd_kernel(
        x_ptr, off_ptr, mask_ptr, w_ptr, b_ptr, out_ptr,
        M, C, H, W, C_OUT, H_OUT, W_OUT, m_bucket,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        G, C_PER_OG, C_PER_WG, COUT_PER_WG,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
        PRECISION: tl.constexpr, ALIGNED: tl.constexpr, EVEN_C: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """``out[m, co] = sum_{k, c} w[co, c, k] * mask * bilinear(x[c], p_k(m))`` for one tile."""
    K: tl.constexpr = KH * KW
    wg = tl.program_id(2)
    n, hw, m_ok, oh, ow = _positions(tl.program_id(0), H_OUT, W_OUT, BLOCK_M)
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < COUT_PER_WG
    image = n * (H * W)
    hw_out = H_OUT * W_OUT
    c_lo = wg * C_PER_WG
    c_hi = c_lo + C_PER_WG
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(K):
        # A run of channels shares one offset group: its samples' corners are computed once.
        for og in range(c_lo // C_PER_OG, (c_hi - 1) // C_PER_OG + 1):
            py, px = _tap_positions(off_ptr, n, hw, m_ok, oh, ow, og, k, G, hw_out, stride_h,
                                    stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW)
            p00, p01, p10, p11, ry0, ry1, cx0, cx1, _, _, _, _ = _corners(py, px, H, W, m_ok)
            if HAS_MASK:
                mv = _mask_values(mask_ptr, n, hw, m_ok, og, k, G, hw_out, K)
                ry0, ry1 = ry0 * mv, ry1 * mv
            w00, w01, w10, w11 = ry0 * cx0, ry0 * cx1, ry1 * cx0, ry1 * cx1
            seg_lo = tl.maximum(c_lo, og * C_PER_OG)
            seg_hi = tl.minimum(c_hi, (og + 1) * C_PER_OG)
            for c0 in range(seg_lo, seg_hi, BLOCK_C):
                if ALIGNED:
                    c0 = tl.multiple_of(c0, 16)
                c = c0 + tl.arange(0, BLOCK_C)
                c_ok = c < seg_hi
                v00, v01, v10, v11 = _corner_values(x_ptr, image, p00, p01, p10, p11, c, c_ok,
                                                    C, EVEN_C)
                col = (w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10
                       + w11[:, None] * v11)
                w_rows = (wg * K + k) * C_PER_WG + (c - c_lo)
                wt = tl.load(w_ptr + w_rows[:, None] * COUT_PER_WG + co[None, :],
                             mask=c_ok[:, None] & co_ok[None, :], other=0.0)
                acc = tl.dot(col.to(wt.dtype), wt, acc, input_precision=PRECISION)
    co_all = wg * COUT_PER_WG + co
    if HAS_BIAS:
        acc += tl.load(b_ptr + co_all, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + (n * C_OUT + co_all)[None, :] * hw_out + hw[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & co_ok[None, :])


@triton.jit(do_not_specialize=_VARYING)
def _deform_bwd_data_kernel(
        x_ptr, off_ptr, mask_ptr, w_ptr, gout_ptr, gx_ptr, goff_ptr, gmask_ptr,
        M, C, H, W, C_OUT, H_OUT, W_OUT, m_bucket,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        G, C_PER_OG, C_PER_WG, COUT_PER_WG,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr,
        NEED_INPUT: tl.constexpr, NEED_OFFSET: tl.constexpr, ATOMIC_OFFSET: tl.constexpr,
        PRECISION: tl.constexpr, ALIGNED: tl.constexpr, EVEN_C: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Input, offset and mask gradients of one tap for a block of positions."""
    K: tl.constexpr = KH * KW
    k = tl.program_id(1)
    wg = tl.program_id(2)
    n, hw, m_ok, oh, ow = _positions(tl.program_id(0), H_OUT, W_OUT, BLOCK_M)
    image = n * (H * W)
    hw_out = H_OUT * W_OUT
    c_lo = wg * C_PER_WG
    c_hi = c_lo + C_PER_WG
    for og in range(c_lo // C_PER_OG, (c_hi - 1) // C_PER_OG + 1):
        py, px = _tap_positions(off_ptr, n, hw, m_ok, oh, ow, og, k, G, hw_out, stride_h,
                                stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW)
        p00, p01, p10, p11, ry0, ry1, cx0, cx1, iy0, iy1, ix0, ix1 = _corners(py, px, H, W, m_ok)
        w00, w01, w10, w11 = ry0 * cx0, ry0 * cx1, ry1 * cx0, ry1 * cx1
        mv = tl.full((BLOCK_M,), 1.0, tl.float32)
        if HAS_MASK:
            mv = _mask_values(mask_ptr, n, hw, m_ok, og, k, G, hw_out, K)
        # sum over channels of the column gradient times each corner's values
        s00 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        s01 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        s10 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        s11 = tl.zeros((BLOCK_M,), dtype=tl.float32)
        seg_lo = tl.maximum(c_lo, og * C_PER_OG)
        seg_hi = tl.minimum(c_hi, (og + 1) * C_PER_OG)
        for c0 in range(seg_lo, seg_hi, BLOCK_C):
            if ALIGNED:
                c0 = tl.multiple_of(c0, 16)
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < seg_hi
            # The column gradient of this tap: grad_out [BLOCK_M, C_out/g] x weight^T.
            g_col = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
            w_rows = (wg * K + k) * C_PER_WG + (c - c_lo)
            for n0 in range(0, COUT_PER_WG, BLOCK_N):
                co = n0 + tl.arange(0, BLOCK_N)
                co_ok = co < COUT_PER_WG
                go = tl.load(gout_ptr + (n * C_OUT + wg * COUT_PER_WG + co)[None, :] * hw_out
                             + hw[:, None], mask=m_ok[:, None] & co_ok[None, :], other=0.0)
                wt = tl.load(w_ptr + w_rows[None, :] * COUT_PER_WG + co[:, None],
                             mask=c_ok[None, :] & co_ok[:, None], other=0.0)
                g_col = tl.dot(go, wt, g_col, input_precision=PRECISION)
            if NEED_INPUT:
                g = g_col * mv[:, None]
                dst = gx_ptr + c[None, :]
                ok = c_ok[None, :]
                # A corner outside (or a position past the last) has weight 0: no atomic.
                tl.atomic_add(dst + ((image + p00) * C)[:, None], w00[:, None] * g,
                              mask=ok & (w00 != 0)[:, None], sem="relaxed")
                tl.atomic_add(dst + ((image + p01) * C)[:, None], w01[:, None] * g,
                              mask=ok & (w01 != 0)[:, None], sem="relaxed")
                tl.atomic_add(dst + ((image + p10) * C)[:, None], w10[:, None] * g,
                              mask=ok & (w10 != 0)[:, None], sem="relaxed")
                tl.atomic_add(dst + ((image + p11) * C)[:, None], w11[:, None] * g,
                              mask=ok & (w11 != 0)[:, None], sem="relaxed")
            if NEED_OFFSET:
                v00, v01, v10, v11 = _corner_values(x_ptr, image, p00, p01, p10, p11, c, c_ok,
                                                    C, EVEN_C)
                s00 += tl.sum(g_col * v00, axis=1)
                s01 += tl.sum(g_col * v01, axis=1)
                s10 += tl.sum(g_col * v10, axis=1)
                s11 += tl.sum(g_col * v11, axis=1)
        if NEED_OFFSET:
            # d(sample)/dy and d(sample)/dx from the corners (torchvision's coordinate weight):
            # each corner's factor differentiated, the lines outside the image counting zero.
            g_dy = (iy1 * (cx0 * s10 + cx1 * s11) - iy0 * (cx0 * s00 + cx1 * s01)) * mv
            g_dx = (ry0 * (ix1 * s01 - ix0 * s00) + ry1 * (ix1 * s11 - ix0 * s10)) * mv
            ch = n * (2 * G * K) + 2 * (og * K + k)
            dst_y = goff_ptr + ch * hw_out + hw
            if ATOMIC_OFFSET:  # an offset group spans several weight groups
                tl.atomic_add(dst_y, g_dy, mask=m_ok, sem="relaxed")
                tl.atomic_add(dst_y + hw_out, g_dx, mask=m_ok, sem="relaxed")
            else:
                tl.store(dst_y, g_dy, mask=m_ok)
                tl.store(dst_y + hw_out, g_dx, mask=m_ok)
            if HAS_MASK:
                g_mask = w00 * s00 + w01 * s01 + w10 * s10 + w11 * s11
                dst_m = gmask_ptr + (n * (G * K) + og * K + k) * hw_out + hw
                if ATOMIC_OFFSET:
                    tl.atomic_add(dst_m, g_mask, mask=m_ok, sem="relaxed")
                else:
                    tl.store(dst_m, g_mask, mask=m_ok)


@triton.jit(do_not_specialize=_VARYING + ["SPLIT"])
def _deform_bwd_weight_kernel(
        x_ptr, off_ptr, mask_ptr, gout_ptr, gw_ptr, seg_ptr,
        M, C, H, W, C_OUT, H_OUT, W_OUT, m_bucket,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        G, C_PER_WG, COUT_PER_WG, SPLIT,
        KH: tl.constexpr, KW: tl.constexpr, HAS_MASK: tl.constexpr, ATOMIC: tl.constexpr,
        PRECISION: tl.constexpr, ALIGNED: tl.constexpr, EVEN_C: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """``grad_w[k, c, co] = sum_m columns[m, (k, c)] * grad_out[m, co]`` over one of ``SPLIT``
    parts of the blocks of positions.

    ``seg_ptr`` lists runs of at most ``BLOCK_C`` channels inside one weight group and one
    offset group: ``(weight group, offset group, first channel, end of the run)``.
    """
    K: tl.constexpr = KH * KW
    seg = tl.program_id(0) // K
    k = tl.program_id(0) % K
    wg = tl.load(seg_ptr + 4 * seg)
    og = tl.load(seg_ptr + 4 * seg + 1)
    c0 = tl.load(seg_ptr + 4 * seg + 2)
    if ALIGNED:
        c0 = tl.multiple_of(c0, 16)
    c = c0 + tl.arange(0, BLOCK_C)
    c_ok = c < tl.load(seg_ptr + 4 * seg + 3)
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < COUT_PER_WG
    hw_out = H_OUT * W_OUT
    blocks = (M // hw_out) * ((hw_out + BLOCK_M - 1) // BLOCK_M)
    per_split = (blocks + SPLIT - 1) // SPLIT
    first = tl.program_id(2) * per_split
    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    for block in range(first, tl.minimum(blocks, first + per_split)):
        n, hw, m_ok, oh, ow = _positions(block, H_OUT, W_OUT, BLOCK_M)
        py, px = _tap_positions(off_ptr, n, hw, m_ok, oh, ow, og, k, G, hw_out, stride_h,
                                stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW)
        p00, p01, p10, p11, ry0, ry1, cx0, cx1, _, _, _, _ = _corners(py, px, H, W, m_ok)
        if HAS_MASK:
            mv = _mask_values(mask_ptr, n, hw, m_ok, og, k, G, hw_out, K)
            ry0, ry1 = ry0 * mv, ry1 * mv
        v00, v01, v10, v11 = _corner_values(x_ptr, n * (H * W), p00, p01, p10, p11, c, c_ok, C,
                                            EVEN_C)
        col = ((ry0 * cx0)[:, None] * v00 + (ry0 * cx1)[:, None] * v01
               + (ry1 * cx0)[:, None] * v10 + (ry1 * cx1)[:, None] * v11)
        go = tl.load(gout_ptr + (n * C_OUT + wg * COUT_PER_WG + co)[None, :] * hw_out
                     + hw[:, None], mask=m_ok[:, None] & co_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(col.to(go.dtype)), go, acc, input_precision=PRECISION)
    rows = (wg * K + k) * C_PER_WG + (c - wg * C_PER_WG)
    dst = gw_ptr + rows[:, None] * COUT_PER_WG + co[None, :]
    if ATOMIC:
        tl.atomic_add(dst, acc, mask=c_ok[:, None] & co_ok[None, :], sem="relaxed")
    else:
        tl.store(dst, acc, mask=c_ok[:, None] & co_ok[None, :])


# --- tuning ------------------------------------------------------------------------------------

def _configs(*tiles):
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=2)
            for bm, bn, warps in tiles]


# A handful of tiles: 32-256 positions x 32-128 output channels. BLOCK_C (input channels a step)
# is the host's choice: it decides whether runs of channels fill whole blocks (EVEN_C).
_FWD_CONFIGS = _configs((32, 64, 4), (64, 64, 4), (128, 64, 8), (64, 128, 8))
_DATA_CONFIGS = _configs((64, 32, 4), (64, 64, 4), (128, 32, 8))
_WEIGHT_CONFIGS = _configs((64, 64, 4), (128, 64, 8), (256, 64, 8))
# The interpreter runs one fixed tile (tuning would only time numpy).
_INTERPRETER_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 16}
_KEY = ["C_PER_WG", "COUT_PER_WG", "KH", "KW", "G", "m_bucket", "PRECISION"]


def _prune_wide_tiles(configs, named_args, **kwargs):
    """Drop tiles wider than the output channels (they only compute padding)."""
    cout = max(16, triton.next_power_of_2(named_args["COUT_PER_WG"]))
    kept = [c for c in configs if c.kwargs["BLOCK_N"] <= cout]
    return kept or configs[:1]


def _quick_bench(fn, quantiles):
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


def _tuned(kernel, configs, reset=None):
    prune = {"early_config_prune": _prune_wide_tiles}
    return triton.autotune(configs, key=_KEY, prune_configs_by=prune, reset_to_zero=reset,
                           do_bench=_quick_bench)(kernel)


_FWD_TUNED = _tuned(_deform_fwd_kernel, _FWD_CONFIGS)
_DATA_TUNED = _tuned(_deform_bwd_data_kernel, _DATA_CONFIGS,
                     reset=["gx_ptr", "goff_ptr", "gmask_ptr"])
_WEIGHT_TUNED = _tuned(_deform_bwd_weight_kernel, _WEIGHT_CONFIGS, reset=["gw_ptr"])

INTERPRETED = type(_deform_fwd_kernel).__name__ == "InterpretedFunction"


def _launch(kernel, tuned, grid, *args, **constants):
    """Autotuned on a GPU; the interpreter's fixed tile on the CPU."""
    if INTERPRETED:
        kernel[grid({**constants, **_INTERPRETER_CONFIG})](*args, **constants,
                                                          **_INTERPRETER_CONFIG)
    else:
        tuned[grid](*args, **constants)


# --- host side ---------------------------------------------------------------------------------

class _Shape:
    """The sizes a launch needs, read from the shapes (offset groups from the offset's)."""

    def __init__(self, x_shape, offset_shape, weight_shape, geometry):
        self.n, self.c, self.h, self.w = x_shape
        self.c_out, self.c_per_wg, self.kh, self.kw = weight_shape
        self.h_out, self.w_out = offset_shape[2:]
        self.wg = self.c // self.c_per_wg
        self.g = offset_shape[1] // (2 * self.kh * self.kw)
        self.c_per_og = self.c // self.g
        self.cout_per_wg = self.c_out // self.wg
        self.m = self.n * self.h_out * self.w_out
        self.geometry = tuple(geometry)  # stride, padding, dilation: (h, w) each
        # Input channels a step; with runs of channels that fill whole blocks, loads need no
        # mask. (The interpreter's small block keeps the tests fast.)
        self.block_c = 16 if INTERPRETED else 32
        self.even_c = self.c_per_og % self.block_c == 0 and self.c_per_wg % self.block_c == 0

    def blocks(self, meta):
        """Blocks of positions: each lies inside one image."""
        return self.n * triton.cdiv(self.h_out * self.w_out, meta["BLOCK_M"])

    def args(self):
        return (self.m, self.c, self.h, self.w, self.c_out, self.h_out, self.w_out,
                triton.next_power_of_2(max(self.m, 1)), *self.geometry, self.g)

    def constants(self, x, **flags):
        # Runs of channels start at multiples of 16 when both group sizes are.
        aligned = self.c_per_og % 16 == 0 and self.c_per_wg % 16 == 0
        return dict(KH=self.kh, KW=self.kw, PRECISION=_dot_precision(x.dtype), ALIGNED=aligned,
                    EVEN_C=self.even_c, BLOCK_C=self.block_c, **flags)


def _dot_precision(dtype) -> str:
    if dtype != torch.float32:
        return "ieee"  # half types multiply in their own type on the tensor cores
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def _or(t, stand_in):
    """A tensor for an absent mask or bias: the kernel never reads it (HAS_MASK, HAS_BIAS)."""
    return stand_in if t is None else t


def _channels_last(x):
    return x.permute(0, 2, 3, 1).contiguous()


def _weight_taps(weight, groups):
    """``[C_out, C/g, kh, kw]`` -> ``[g, kh*kw, C/g, C_out/g]``: a tap's rows are contiguous."""
    c_out, cpg, kh, kw = weight.shape
    return weight.reshape(groups, c_out // groups, cpg, kh * kw).permute(0, 3, 2, 1).contiguous()


def _forward(x, offset, weight, bias, mask, geometry):
    """The output, and the channels-last input and tap-major weight that the backward reads."""
    s = _Shape(x.shape, offset.shape, weight.shape, geometry)
    x_cl, w_taps = _channels_last(x), _weight_taps(weight, s.wg)
    out = x.new_empty(s.n, s.c_out, s.h_out, s.w_out)
    if s.m and s.c_out:
        def grid(meta):
            return (s.blocks(meta), triton.cdiv(s.cout_per_wg, meta["BLOCK_N"]), s.wg)

        _launch(_deform_fwd_kernel, _FWD_TUNED, grid, x_cl, offset, _or(mask, offset), w_taps,
                _or(bias, offset), out,
                *s.args(), s.c_per_og, s.c_per_wg, s.cout_per_wg,
                **s.constants(x, HAS_MASK=mask is not None, HAS_BIAS=bias is not None))
    return out, x_cl, w_taps


@functools.lru_cache(maxsize=256)
def _runs(c, wg, g, block_c, device):
    """``(weight group, offset group, first channel, end)`` of every run of <= block_c channels."""
    c_per_wg, c_per_og = c // wg, c // g
    rows = []
    for grp in range(wg):
        lo, hi = grp * c_per_wg, (grp + 1) * c_per_wg
        for og in range(lo // c_per_og, (hi - 1) // c_per_og + 1):
            start, end = max(lo, og * c_per_og), min(hi, (og + 1) * c_per_og)
            rows += [(grp, og, c0, end) for c0 in range(start, end, block_c)]
    return torch.tensor(rows, dtype=torch.int32, device=device)


def _backward(grad, x_cl, offset, w_taps, mask, s, need_input, need_offset, need_weight):
    """Gradients of the input, offset, mask and weight (empty where not needed, or no mask)."""
    grad = grad.contiguous()
    f32 = dict(dtype=torch.float32, device=grad.device)
    grad_x = torch.zeros(s.n, s.h, s.w, s.c, **f32) if need_input else grad.new_empty(0)
    atomic_offset = s.wg > 1
    make = torch.zeros if atomic_offset else torch.empty
    grad_offset = make(offset.shape, **f32) if need_offset else offset.new_empty(0)
    grad_mask = (make(mask.shape, **f32) if need_offset and mask is not None
                 else offset.new_empty(0))
    if s.m and (need_input or need_offset):
        def grid(meta):
            return (s.blocks(meta), s.kh * s.kw, s.wg)

        _launch(_deform_bwd_data_kernel, _DATA_TUNED, grid, x_cl, offset, _or(mask, offset),
                w_taps, grad,
                grad_x, grad_offset if need_offset else grad_x,
                grad_mask if grad_mask.numel() else grad_x,
                *s.args(), s.c_per_og, s.c_per_wg, s.cout_per_wg,
                **s.constants(x_cl, HAS_MASK=mask is not None, NEED_INPUT=need_input,
                              NEED_OFFSET=need_offset, ATOMIC_OFFSET=atomic_offset))
    grad_w = _weight_grad(s, grad, x_cl, offset, mask) if need_weight else w_taps.new_empty(0)
    if need_input:
        grad_x = grad_x.permute(0, 3, 1, 2).to(x_cl.dtype)
    return grad_x, grad_offset.to(offset.dtype), grad_mask.to(offset.dtype), grad_w


def _weight_grad(s, grad, x_cl, offset, mask):
    runs = _runs(s.c, s.wg, s.g, s.block_c, x_cl.device)
    taps = s.kh * s.kw
    # Enough programs to fill the GPU: split the positions when runs x taps x tiles are few.
    programs = runs.shape[0] * taps * triton.cdiv(s.cout_per_wg, 64)
    split = 1 if INTERPRETED else max(1, min(triton.cdiv(4 * _sm_count(x_cl.device), programs),
                                             triton.cdiv(s.m, 512)))
    make = torch.zeros if split > 1 or s.m == 0 else torch.empty
    grad_w = make(s.wg, taps, s.c_per_wg, s.cout_per_wg, dtype=torch.float32,
                  device=x_cl.device)
    if s.m:
        def grid(meta):
            return (runs.shape[0] * taps, triton.cdiv(s.cout_per_wg, meta["BLOCK_N"]), split)

        _launch(_deform_bwd_weight_kernel, _WEIGHT_TUNED, grid, x_cl, offset, _or(mask, offset),
                grad, grad_w, runs, *s.args(), s.c_per_wg, s.cout_per_wg, split,
                **s.constants(x_cl, HAS_MASK=mask is not None, ATOMIC=split > 1))
    # [g, kh*kw, C/g, C_out/g] -> [C_out, C/g, kh, kw]
    return grad_w.permute(0, 3, 2, 1).reshape(s.c_out, s.c_per_wg, s.kh, s.kw) \
        .to(grad.dtype)


@functools.lru_cache(maxsize=8)
def _sm_count(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


# --- autograd: a Function for eager mode, a custom op for torch.compile -----------------------

class _DeformConv2dFunction(torch.autograd.Function):
    """Eager mode: the kernels without a custom op's Python dispatch (which costs more CPU time
    than the kernels take on the GPU at common sizes), keeping the forward's channels-last input
    and tap-major weight for the backward."""

    @staticmethod
    def forward(ctx, input, offset, weight, bias, mask, geometry):
        out, x_cl, w_taps = _forward(input, offset, weight, bias, mask, geometry)
        ctx.save_for_backward(x_cl, offset, w_taps, mask)
        ctx.shape = _Shape(input.shape, offset.shape, weight.shape, geometry)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x_cl, offset, w_taps, mask = ctx.saved_tensors
        need_input, need_offset, need_weight, need_bias, need_mask = ctx.needs_input_grad[:5]
        need_mask = need_mask and mask is not None
        grads = _backward(grad, x_cl, offset, w_taps, mask, ctx.shape, need_input,
                          need_offset or need_mask, need_weight)
        grad_input, grad_offset, grad_weight, grad_mask = _wanted(grads, need_input, need_offset,
                                                                  need_mask, need_weight)
        return (grad_input, grad_offset, grad_weight,
                _bias_grad(grad) if need_bias and ctx.has_bias else None, grad_mask, None)


def _wanted(grads, need_input, need_offset, need_mask, need_weight):
    """``(input, offset, weight, mask)`` gradients in autograd's order, None where not needed."""
    grad_input, grad_offset, grad_mask, grad_weight = grads
    return (grad_input if need_input else None, grad_offset if need_offset else None,
            grad_weight if need_weight else None, grad_mask if need_mask else None)


def _bias_grad(grad):
    return grad.sum((0, 2, 3))


# --- the custom op and its autograd ------------------------------------------------------------
# Few arguments: PyTorch's dispatch of a Python custom op costs time per argument.

@torch.library.custom_op("cnnbench::deform_conv2d", mutates_args=())
def deform_conv2d_op(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                     geometry: Sequence[int]) -> torch.Tensor:
    """The Triton forward (all tensors of one floating type); ``geometry`` is
    ``(stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)``."""
    return _forward(input, offset.contiguous(), weight, bias, _contiguous(mask), geometry)[0]


@deform_conv2d_op.register_fake
def _(input, offset, weight, bias, mask, geometry):
    return input.new_empty(input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3])


@torch.library.custom_op("cnnbench::deform_conv2d_backward", mutates_args=())
def deform_conv2d_backward_op(grad: torch.Tensor, input: torch.Tensor, offset: torch.Tensor,
                              weight: torch.Tensor, mask: Optional[torch.Tensor],
                              geometry: Sequence[int], needs: Sequence[bool]
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of input, offset, mask and weight (empty where not asked for, or no mask);
    ``needs``: the input's, the offset's and mask's, the weight's."""
    s = _Shape(input.shape, offset.shape, weight.shape, geometry)
    return _backward(grad, _channels_last(input), offset.contiguous(),
                     _weight_taps(weight, s.wg), _contiguous(mask), s, *needs)


@deform_conv2d_backward_op.register_fake
def _(grad, input, offset, weight, mask, geometry, needs):
    def maybe(t, want):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if want \
            else t.new_empty(0)

    need_input, need_offset, need_weight = needs
    return (maybe(input, need_input), maybe(offset, need_offset),
            maybe(mask, need_offset) if mask is not None else offset.new_empty(0),
            maybe(weight, need_weight))


def _setup_context(ctx, inputs, output):
    input, offset, weight, bias, mask, geometry = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.geometry = geometry
    ctx.has_bias = bias is not None


def _backward_formula(ctx, grad):
    input, offset, weight, mask = ctx.saved_tensors
    need_input, need_offset, need_weight, need_bias, need_mask = ctx.needs_input_grad[:5]
    need_mask = need_mask and mask is not None
    grads = deform_conv2d_backward_op(grad, input, offset, weight, mask, ctx.geometry,
                                      [need_input, need_offset or need_mask, need_weight])
    grad_input, grad_offset, grad_weight, grad_mask = _wanted(grads, need_input, need_offset,
                                                              need_mask, need_weight)
    return (grad_input, grad_offset, grad_weight,
            _bias_grad(grad) if need_bias and ctx.has_bias else None, grad_mask, None)


deform_conv2d_op.register_autograd(_backward_formula, setup_context=_setup_context)


def deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                  mask: torch.Tensor | None = None, *, check: bool = True) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` in Triton (float32, bfloat16 or float16).

    Offset, weight, bias and mask are cast to the input's type (as under autocast the input may
    be half and the weight float32); their gradients come back in their own types. ``check``
    validates the shapes (:func:`cnnbench.ops.deform.deform_conv2d` has done it already).
    """
    if check:
        Geometry.of(input, offset, weight, stride, padding, dilation, mask)
    dtype = input.dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"the Triton deform_conv2d takes float32, bfloat16 or float16, "
                        f"not {dtype}")
    out_numel = input.shape[0] * weight.shape[0] * offset.shape[2] * offset.shape[3]
    if max(input.numel(), offset.numel(), weight.numel(), out_numel) > MAX_ELEMENTS:
        raise ValueError("the Triton deform_conv2d indexes with int32: a tensor is too large")
    offset, weight, bias, mask = (_contiguous(t, dtype) for t in (offset, weight, bias, mask))
    geometry = [*_pair(stride), *_pair(padding), *_pair(dilation)]
    if torch.compiler.is_compiling():
        return deform_conv2d_op(input, offset, weight, bias, mask, geometry)
    return _DeformConv2dFunction.apply(input, offset, weight, bias, mask, geometry)


def _contiguous(t, dtype=None):
    if t is None:
        return None
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()
