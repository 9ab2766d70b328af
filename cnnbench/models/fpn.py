"""Feature Pyramid Network on a ResNet-50 bottleneck backbone, returning P2-P5."""

import torch
from torch import nn
from torch.nn import functional as F

from cnnbench.registry import register_model


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, each with batch norm; identity or projection."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, bias=False), nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, self.expansion * planes, 1, bias=False),
            nn.BatchNorm2d(self.expansion * planes),
        )
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bottleneck(x) + identity)


class FPN(nn.Module):
    """Bottom-up C2-C5, a 1x1 top layer on C5, lateral 1x1s, top-down bilinear adds, 3x3 smoothing."""

    def __init__(self, layers=(3, 4, 6, 3), in_channels: int = 3, out_channels: int = 256):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        d = out_channels
        self.toplayer = nn.Conv2d(2048, d, 1, 1, 0)
        self.smooth1 = nn.Conv2d(d, d, 3, 1, 1)
        self.smooth2 = nn.Conv2d(d, d, 3, 1, 1)
        self.smooth3 = nn.Conv2d(d, d, 3, 1, 1)
        self.latlayer1 = nn.Conv2d(1024, d, 1, 1, 0)
        self.latlayer2 = nn.Conv2d(512, d, 1, 1, 0)
        self.latlayer3 = nn.Conv2d(256, d, 1, 1, 0)
        self.out_channels = d

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != Bottleneck.expansion * planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, Bottleneck.expansion * planes, 1, stride, bias=False),
                nn.BatchNorm2d(Bottleneck.expansion * planes))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @staticmethod
    def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False) + y

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c1 = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(c1)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        p5 = self.toplayer(c5)
        p4 = self._upsample_add(p5, self.latlayer1(c4))
        p3 = self._upsample_add(p4, self.latlayer2(c3))
        p2 = self._upsample_add(p3, self.latlayer3(c2))
        return self.smooth3(p2), self.smooth2(p3), self.smooth1(p4), p5


@register_model("fpn", task="feature-extraction", input_size=(3, 224, 224), num_classes=None,
                source="seeds 000: Feature Pyramid Networks")
def fpn(in_channels: int = 3, layers: tuple = (3, 4, 6, 3), out_channels: int = 256) -> FPN:
    """FPN on ResNet-50 (3-4-6-3 bottlenecks); outputs P2, P3, P4, P5 at strides 4-32."""
    return FPN(tuple(layers), in_channels, out_channels)
