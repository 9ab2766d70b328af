"""ResNet-18 as in d2l, and ResNet-18 with deformable v2 convolutions in conv3-conv5 (DCNv2)."""

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from cnnbench.ops import DeformConv2d
from cnnbench.registry import register_model


class Residual(nn.Module):
    """Two 3x3 convolutions with batch norm; a strided 1x1 convolution on the skip if needed.

    ``conv`` builds the 3x3 convolutions, so the same block serves the deformable variant.
    """

    def __init__(self, input_channels: int, num_channels: int, use_1x1conv: bool = False,
                 strides: int = 1, conv=nn.Conv2d):
        super().__init__()
        self.conv1 = conv(input_channels, num_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = conv(num_channels, num_channels, kernel_size=3, padding=1)
        self.conv3 = (nn.Conv2d(input_channels, num_channels, kernel_size=1, stride=strides)
                      if use_1x1conv else None)
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return F.relu(y + x)


def resnet_block(input_channels: int, num_channels: int, num_residuals: int,
                 first_block: bool = False, conv=nn.Conv2d) -> nn.Sequential:
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blocks.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2,
                                   conv=conv))
        else:
            blocks.append(Residual(num_channels, num_channels, conv=conv))
    return nn.Sequential(*blocks)


def resnet18_body(in_channels: int, width: int = 64,
                  stage_convs=(nn.Conv2d,) * 4) -> nn.Sequential:
    """Stem b1 and the four residual stages b2-b5 (strides 4, 4, 8, 16, 32).

    The stage widths are ``width`` x (1, 1, 2, 4, 8): 64 is the book's network (512 channels at
    1/32 of the input), smaller ones suit the CPU. ``stage_convs`` builds each stage's 3x3s.
    """
    widths = [width * m for m in (1, 1, 2, 4, 8)]
    b1 = nn.Sequential(nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(widths[0]), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    stages = [resnet_block(widths[i], widths[i + 1], 2, first_block=(i == 0), conv=stage_convs[i])
              for i in range(4)]
    return nn.Sequential(b1, *stages)


def _classifier(body: nn.Sequential, num_classes: int) -> nn.Sequential:
    return nn.Sequential(*body, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                         nn.Linear(512, num_classes))


@register_model("resnet18", task="classification", image_size=(96, 96),
                source="seeds 000/003: ResNet")
def resnet18(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """ResNet-18 (d2l): 7x7 stem, four stages of two residual blocks, global pooling."""
    return _classifier(resnet18_body(in_channels), num_classes)


@register_model("resnet18-dcn", task="classification", image_size=(96, 96),
                source="seeds 004: deformable convolution v2 in conv3-conv5")
def resnet18_dcn(in_channels: int = 1, num_classes: int = 10,
                 offset_lr_mult: float = 0.1) -> nn.Sequential:
    """ResNet-18 whose 3x3 convolutions in conv3-conv5 (b3-b5) are modulated deformable (v2)."""
    dcn = partial(DeformConv2d, modulation=True, bias=True, offset_lr_mult=offset_lr_mult)
    body = resnet18_body(in_channels, stage_convs=(nn.Conv2d, dcn, dcn, dcn))
    return _classifier(body, num_classes)
