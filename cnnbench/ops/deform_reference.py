"""The notes' gather-based deformable convolution, kept as a reference for `bench deformconv`.

This follows the ``DeformConv2d.forward`` of the notes (seeds 000 and 004) step by step, as a
function with torchvision's signature so the bench can run it beside ours and torchvision's:

1. zero-pad the input by ``padding``;
2. sample positions ``p = p_0 + p_n + offset`` in padded coordinates, rows first then columns;
3. ``q_lt = floor(p)`` and ``q_rb = q_lt + 1``, both clamped into the padded image, and ``p``
   itself clamped into it; the four bilinear factors from the clamped ``q`` and ``p``;
4. each corner read by ``gather`` with an index expanded over every channel
   (``[N, C, H_out * W_out * taps]`` of int64: the memory the notes' version is known for);
5. the weighted sum, times the mask repeated over the channels (v2);
6. the taps laid out as a ``(H_out * kh) x (W_out * kw)`` image and a convolution with
   ``stride = kernel size``.

What had to be generalised to share the signature: torchvision's offset layout (interleaved
(dy, dx) per tap) is split into the notes' rows-then-columns layout; the notes' grid starts at 1
with taps centred on it, which is torchvision's grid only for 3x3, dilation 1 -- here it is
torchvision's ``out * stride + tap * dilation`` in padded coordinates for every kernel; offset
groups gather per group; weight groups go to the final convolution.

How it relates to torchvision's semantics. Clamping ``p`` into the *padded* image instead of
reading zero outside changes nothing when ``padding >= 1``: the clamped sample lands on the zero
border, and between the border and the image the bilinear weights are the same, so outputs and
gradients agree to float rounding (about 1e-5). With ``padding = 0``, a sample outside the image
is clamped onto real edge pixels (and, at the far side, both corners collapse onto the edge row
with weights summing to 2), so the output differs by the size of the edge values there (order 1
for unit-variance inputs); at sample positions exactly on an integer the offset gradient follows
the notes' clamped form.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.nn.modules.utils import _pair


def deform_conv2d_reference(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """The notes' algorithm with torchvision's signature and offset layout (see the module doc)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    b, c, _, _ = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    taps = kh * kw
    groups = offset.shape[1] // (2 * taps)
    h, w = offset.shape[-2:]

    x = F.pad(input, (pw, pw, ph, ph))  # the notes' nn.ZeroPad2d
    hp, wp = x.shape[-2:]
    n = groups * taps
    pairs = offset.view(b, n, 2, h, w)
    offset_rc = torch.cat([pairs[:, :, 0], pairs[:, :, 1]], dim=1)  # rows, then columns

    p = _positions(offset_rc, h, w, kh, kw, (sh, sw), (dh, dw))  # [b, 2n, h, w]
    p = p.contiguous().permute(0, 2, 3, 1)  # [b, h, w, 2n]
    q_lt = p.detach().floor()
    q_rb = q_lt + 1
    q_lt = torch.cat([q_lt[..., :n].clamp(0, hp - 1), q_lt[..., n:].clamp(0, wp - 1)], -1).long()
    q_rb = torch.cat([q_rb[..., :n].clamp(0, hp - 1), q_rb[..., n:].clamp(0, wp - 1)], -1).long()
    q_lb = torch.cat([q_lt[..., :n], q_rb[..., n:]], -1)
    q_rt = torch.cat([q_rb[..., :n], q_lt[..., n:]], -1)
    p = torch.cat([p[..., :n].clamp(0, hp - 1), p[..., n:].clamp(0, wp - 1)], -1)

    def factor(q, sign_r, sign_c):
        return ((1 + sign_r * (q[..., :n].type_as(p) - p[..., :n]))
                * (1 + sign_c * (q[..., n:].type_as(p) - p[..., n:])))

    g_lt, g_rb = factor(q_lt, 1, 1), factor(q_rb, -1, -1)
    g_lb, g_rt = factor(q_lb, 1, -1), factor(q_rt, -1, 1)

    cg = c // groups
    parts = []
    for grp in range(groups):  # the notes have one group; each group reads its own taps
        taps_of = slice(grp * taps, (grp + 1) * taps)
        x_g = x[:, grp * cg:(grp + 1) * cg]
        # [b, cg, h, w, taps]
        sampled = sum(g[..., taps_of].unsqueeze(1) * _gather(x_g, q, n, taps_of)
                      for g, q in ((g_lt, q_lt), (g_rb, q_rb), (g_lb, q_lb), (g_rt, q_rt)))
        if mask is not None:
            m = mask[:, taps_of].contiguous().permute(0, 2, 3, 1).unsqueeze(1)  # [b, 1, h, w, taps]
            m = torch.cat([m for _ in range(cg)], dim=1)  # the notes repeat it per channel
            sampled = sampled * m
        parts.append(sampled)
    sampled = torch.cat(parts, dim=1) if groups > 1 else parts[0]

    columns = _reshape_taps(sampled, kh, kw)
    return F.conv2d(columns, weight, bias, stride=(kh, kw), groups=c // c_per_group)


def _positions(offset_rc, h, w, kh, kw, stride, dilation):
    """``p_0 + p_n + offset`` in padded coordinates, rows then columns."""
    b, two_n = offset_rc.shape[:2]
    n = two_n // 2
    groups = n // (kh * kw)
    dev, dtype = offset_rc.device, offset_rc.dtype
    p_n_r, p_n_c = torch.meshgrid(torch.arange(kh, device=dev) * dilation[0],
                                  torch.arange(kw, device=dev) * dilation[1], indexing="ij")
    p_n = torch.cat([p_n_r.flatten().repeat(groups), p_n_c.flatten().repeat(groups)])
    p_0_r, p_0_c = torch.meshgrid(torch.arange(0, h * stride[0], stride[0], device=dev),
                                  torch.arange(0, w * stride[1], stride[1], device=dev),
                                  indexing="ij")
    p_0 = torch.cat([p_0_r.view(1, 1, h, w).repeat(1, n, 1, 1),
                     p_0_c.view(1, 1, h, w).repeat(1, n, 1, 1)], dim=1)
    return p_0.to(dtype) + p_n.view(1, 2 * n, 1, 1).to(dtype) + offset_rc


def _gather(x, q, n, taps_of):
    """Corner values ``[b, c, h, w, taps]`` by ``gather`` with an index expanded over channels."""
    b, h, w, _ = q.shape
    c, wp = x.shape[1], x.shape[3]
    index = q[..., :n][..., taps_of] * wp + q[..., n:][..., taps_of]  # [b, h, w, taps]
    taps = index.shape[-1]
    index = index.contiguous().unsqueeze(1).expand(-1, c, -1, -1, -1).contiguous().view(b, c, -1)
    return x.contiguous().view(b, c, -1).gather(-1, index).view(b, c, h, w, taps)


def _reshape_taps(sampled, kh, kw):
    """``[b, c, h, w, kh*kw]`` -> ``[b, c, h*kh, w*kw]``; tap (i, j) of (y, x) goes to
    (y*kh + i, x*kw + j)."""
    b, c, h, w, _ = sampled.shape
    rows = [sampled[..., s:s + kw].contiguous().view(b, c, h, w * kw)
            for s in range(0, kh * kw, kw)]
    return torch.cat(rows, dim=-1).contiguous().view(b, c, h * kh, w * kw)
