"""The shapes and hyper-parameters of one deformable-convolution call, checked once: shared by
the PyTorch implementation (``deform.py``) and the Triton kernels (``deform_triton.py``)."""

from __future__ import annotations

from torch.nn.modules.utils import _pair


class Geometry:
    """Shapes and hyper-parameters of one call, checked once: a tensor of the wrong rank is a
    ValueError, sizes that do not fit a RuntimeError (the exception types of torchvision's
    op, so that code catching those keeps working)."""

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
            raise RuntimeError(f"weight {tuple(weight.shape)} does not fit {c} input channels")
        if offset.shape[1] % (2 * taps) or offset.shape[1] == 0:
            raise RuntimeError(f"offset has {offset.shape[1]} channels; expected a multiple of "
                               f"2 * {kh} * {kw}")
        offset_groups = offset.shape[1] // (2 * taps)
        if c % offset_groups:
            raise RuntimeError(f"{c} input channels do not split into {offset_groups} "
                               "offset groups")
        h_out = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
        w_out = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
        if tuple(offset.shape) != (b, 2 * offset_groups * taps, h_out, w_out):
            raise RuntimeError(f"offset shape {tuple(offset.shape)} does not match the output "
                               f"{h_out}x{w_out} of batch {b}")
        if mask is not None and tuple(mask.shape) != (b, offset_groups * taps, h_out, w_out):
            raise RuntimeError(f"mask shape {tuple(mask.shape)} does not match the offsets")
        return cls(batch=b, channels=c, height=h, width=w, c_out=c_out, kh=kh, kw=kw,
                   taps=taps, stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw),
                   offset_groups=offset_groups, weight_groups=c // c_per_group,
                   h_out=h_out, w_out=w_out)
