"""Deformable convolution: a drop-in for ``torchvision.ops.deform_conv2d`` and a module.

Offsets hold (dy, dx) pairs per kernel position, per offset group, as in torchvision:
``offset`` is ``[N, 2 * offset_groups * kh * kw, H_out, W_out]`` and ``mask`` (v2) is
``[N, offset_groups * kh * kw, H_out, W_out]``. Samples outside the input read zero.
"""

import math

import torch
from torch import nn
from torch.nn.modules.utils import _pair


def deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Deformable convolution with torchvision's signature, offset layout and semantics."""
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    return tv_deform_conv2d(input, offset, weight, bias, stride=stride, padding=padding,
                            dilation=dilation, mask=mask)


class DeformConv2d(nn.Module):
    """Deformable convolution v1 (``modulation=False``) or v2 (``modulation=True``).

    A regular convolution of the same kernel, stride, padding and dilation predicts the offsets
    (and, for v2, the mask through a sigmoid). Both branches start at zero, as in the notes, so
    at initialisation the layer is a plain convolution (v2: scaled by 0.5). Their learning rate
    is ``offset_lr_mult`` times the base rate through :func:`param_groups`, the working form of
    the notes' backward hook (which rebinds local names and so changes nothing).
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

    def extra_repr(self) -> str:
        out_c, in_c, kh, kw = self.weight.shape
        return (f"{in_c}, {out_c}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, "
                f"modulation={self.modulation}")


def param_groups(model: nn.Module, lr: float, **group_options) -> list[dict]:
    """Optimizer parameter groups giving every offset/mask branch ``offset_lr_mult`` x ``lr``."""
    branch_params, seen = {}, set()
    for module in model.modules():
        if isinstance(module, DeformConv2d):
            for branch in (module.p_conv, module.m_conv):
                if branch is not None:
                    for p in branch.parameters():
                        branch_params.setdefault(module.offset_lr_mult, []).append(p)
                        seen.add(id(p))
    rest = [p for p in model.parameters() if id(p) not in seen]
    groups = [dict(params=rest, lr=lr, **group_options)]
    groups += [dict(params=ps, lr=lr * mult, **group_options) for mult, ps in branch_params.items()]
    return groups
