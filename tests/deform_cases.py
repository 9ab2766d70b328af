"""The case grid of torchvision's own deform_conv2d tests (``TestDeformConv``), written anew.

torchvision checks its op on one awkward setting: six input channels in two weight groups and
three offset groups, a 3x2 kernel, stride (2, 1), padding (1, 0), dilation (2, 1) on a 5x4
input; batches of 0 and 33; every tensor either contiguous or a permuted (non-contiguous) view
of the same values; with and without a mask. :func:`case` builds those tensors, and a few other
geometries, for the CPU tests (test_deform.py) and the Triton ones (test_deform_triton.py).
"""

import torch

IN_CHANNELS, OUT_CHANNELS, WEIGHT_GROUPS, OFFSET_GROUPS = 6, 2, 2, 3
KERNEL, SIZE = (3, 2), (5, 4)

# stride, padding, dilation: torchvision's own first, then ours around it.
GEOMETRIES = {
    "tv": ((2, 1), (1, 0), (2, 1)),
    "plain": ((1, 1), (0, 0), (1, 1)),
    "wide": ((1, 2), (2, 1), (1, 2)),
    "strided-padded": ((3, 2), (2, 2), (1, 1)),
}


def _permuted(t, order):
    """The values of ``t`` in a tensor laid out in ``order``, viewed back in ``t``'s shape: the
    same numbers, strides that are not contiguous."""
    back = [order.index(d) for d in range(t.dim())]
    return t.permute(order).contiguous().permute(back)


def case(batch, contiguous=True, with_mask=True, geometry="tv", dtype=torch.float64, seed=0):
    """Arguments of ``deform_conv2d`` as a dict (``mask`` None without one)."""
    stride, padding, dilation = GEOMETRIES[geometry]
    (kh, kw), (h, w) = KERNEL, SIZE
    h_out = (h + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    w_out = (w + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    taps = OFFSET_GROUPS * kh * kw
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    x = torch.rand(batch, IN_CHANNELS, h, w, generator=g, dtype=torch.float64).to(dtype)
    offset, mask = randn(batch, 2 * taps, h_out, w_out), randn(batch, taps, h_out, w_out)
    weight = randn(OUT_CHANNELS, IN_CHANNELS // WEIGHT_GROUPS, kh, kw)
    bias = randn(OUT_CHANNELS)
    if not contiguous:
        x = _permuted(x, (0, 1, 3, 2))
        offset, mask = _permuted(offset, (1, 3, 0, 2)), _permuted(mask, (1, 3, 0, 2))
        weight = _permuted(weight, (3, 2, 0, 1))
    return dict(input=x, offset=offset, weight=weight, bias=bias, stride=stride,
                padding=padding, dilation=dilation, mask=mask if with_mask else None)


def call(fn, args, **tensors):
    """``fn`` on ``args`` with some tensors replaced (leaves that need a gradient, say)."""
    a = {**args, **tensors}
    return fn(a["input"], a["offset"], a["weight"], a["bias"], stride=a["stride"],
              padding=a["padding"], dilation=a["dilation"], mask=a["mask"])


def tensors(args):
    """The tensor arguments by name, in ``deform_conv2d``'s order, without an absent mask."""
    return {k: args[k] for k in ("input", "offset", "weight", "bias", "mask")
            if args[k] is not None}
