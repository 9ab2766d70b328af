"""DenseNet as in d2l: dense blocks that concatenate, transition layers that halve."""

import torch
from torch import nn

from cnnbench.registry import register_model


def conv_block(input_channels: int, num_channels: int) -> nn.Sequential:
    """Pre-activation unit: batch norm, ReLU, 3x3 convolution."""
    return nn.Sequential(nn.BatchNorm2d(input_channels), nn.ReLU(),
                         nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    """Each unit's output is concatenated to its input, so channels grow by ``num_channels``."""

    def __init__(self, num_convs: int, input_channels: int, num_channels: int):
        super().__init__()
        self.net = nn.Sequential(*(conv_block(num_channels * i + input_channels, num_channels)
                                   for i in range(num_convs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.net:
            x = torch.cat((x, block(x)), dim=1)
        return x


def transition_block(input_channels: int, num_channels: int) -> nn.Sequential:
    """1x1 convolution to cut the channels, 2x2 average pooling to halve height and width."""
    return nn.Sequential(nn.BatchNorm2d(input_channels), nn.ReLU(),
                         nn.Conv2d(input_channels, num_channels, kernel_size=1),
                         nn.AvgPool2d(kernel_size=2, stride=2))


@register_model("densenet", task="classification", image_size=(96, 96),
                source="seeds 000/003: DenseNet")
def densenet(in_channels: int = 1, num_classes: int = 10, growth_rate: int = 32,
             num_convs_in_dense_blocks: tuple = (4, 4, 4, 4)) -> nn.Sequential:
    """DenseNet (d2l): 64-channel stem, four dense blocks of growth 32, transitions between."""
    b1 = nn.Sequential(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    blocks, channels = [], 64
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        blocks.append(DenseBlock(num_convs, channels, growth_rate))
        channels += num_convs * growth_rate
        if i != len(num_convs_in_dense_blocks) - 1:
            blocks.append(transition_block(channels, channels // 2))
            channels //= 2
    return nn.Sequential(b1, *blocks, nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                         nn.Linear(channels, num_classes))
