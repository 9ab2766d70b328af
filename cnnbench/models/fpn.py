"""Feature Pyramid Network on a ResNet-50 bottleneck backbone, returning P2-P5.

Two heads put the pyramid to work: ``FPNSegmentation`` (each level to 128 channels, up-sampled to
P2 and summed, then one logit per class, as in Panoptic FPN's semantic branch) and ``RetinaNet``
(a class subnet and a box subnet shared by every level, anchors per level, the focal loss in the
detection task). ``fpn --model-args head=...`` or the names ``fpn-seg`` and ``retinanet`` build
them; ``fpn`` alone is the bare pyramid.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from cnnbench.anchors import anchor_notes, anchors_per_cell, grid_anchors
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

    def __init__(self, layers: tuple, in_channels: int, out_channels: int = 256):
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




class FPNSegmentation(nn.Module):
    """Semantic segmentation on the pyramid: per level a 3x3 convolution (batch norm, ReLU),
    up-sampled to P2 (1/4 of the input) and summed; a 1x1 classifier; bilinear up to the input."""

    def __init__(self, fpn: FPN, num_classes: int, channels: int = 128):
        super().__init__()
        self.fpn = fpn
        d = fpn.out_channels
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, channels, 3, padding=1, bias=False),
                          nn.BatchNorm2d(channels), nn.ReLU(inplace=True)) for _ in range(4))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.fpn(x)
        size = levels[0].shape[-2:]
        y = sum(F.interpolate(conv(p), size=size, mode="bilinear", align_corners=False)
                for conv, p in zip(self.lateral, levels))
        return F.interpolate(self.classifier(y), size=x.shape[-2:], mode="bilinear",
                             align_corners=False)


def _subnet(channels: int, out: int, depth: int) -> nn.Sequential:
    layers = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Conv2d(channels, out, 3, padding=1))


# Anchor sizes per level P2-P5 (fractions of the image) for small images; ratios w / h.
RETINA_SIZES = ((0.1, 0.14), (0.2, 0.28), (0.4, 0.56), (0.75, 0.95))
RETINA_RATIOS = (1.0, 2.0, 0.5)


class RetinaNet(nn.Module):
    """RetinaNet heads on P2-P5: ``depth`` 3x3 convolutions then a class (sigmoid per class) or
    box output, the same weights on every level. Returns ``(anchors [A, 4], class_logits
    [N, A, classes], box_offsets [N, A, 4])``: no background column, the focal loss's form."""

    def __init__(self, fpn: FPN, num_classes: int, depth: int = 4, sizes=RETINA_SIZES,
                 ratios=RETINA_RATIOS, prior: float = 0.01):
        super().__init__()
        self.fpn, self.num_classes = fpn, num_classes
        self.sizes, self.ratios = [tuple(s) for s in sizes], tuple(ratios)
        k = anchors_per_cell(self.sizes[0], self.ratios)
        d = fpn.out_channels
        self.cls_subnet = _subnet(d, k * num_classes, depth)
        self.box_subnet = _subnet(d, k * 4, depth)
        # Start every class at probability ``prior``, so the many background anchors do not
        # swamp the first steps (the paper's initialisation).
        nn.init.constant_(self.cls_subnet[-1].bias, -math.log((1 - prior) / prior))

    def forward(self, x: torch.Tensor):
        anchors, cls_preds, box_preds = [], [], []
        for p, sizes in zip(self.fpn(x), self.sizes):
            anchors.append(grid_anchors(p.shape[2], p.shape[3], sizes, self.ratios,
                                        device=x.device))
            n = p.shape[0]
            cls_preds.append(self.cls_subnet(p).permute(0, 2, 3, 1).reshape(n, -1,
                                                                           self.num_classes))
            box_preds.append(self.box_subnet(p).permute(0, 2, 3, 1).reshape(n, -1, 4))
        return torch.cat(anchors), torch.cat(cls_preds, 1), torch.cat(box_preds, 1)

    def summary_notes(self, x: torch.Tensor) -> list[str]:
        names = [f"P{k}" for k in range(2, len(self.sizes) + 2)]
        return anchor_notes(self.fpn(x), self.sizes, self.ratios, names)


@register_model("fpn", task="feature-extraction", image_size=(224, 224),
                source="seeds 000: Feature Pyramid Networks")
def fpn(in_channels: int = 3, layers: tuple = (3, 4, 6, 3), out_channels: int = 256,
        head: str | None = None, num_classes: int = 10) -> nn.Module:
    """FPN on ResNet-50 (3-4-6-3 bottlenecks); outputs P2, P3, P4, P5 at strides 4-32.
    ``head="retinanet"`` or ``"segmentation"`` adds that head (``num_classes`` objects, or
    classes including the background)."""
    pyramid = FPN(tuple(layers), in_channels, out_channels)
    if head is None:
        return pyramid
    if head == "retinanet":
        return RetinaNet(pyramid, num_classes)
    if head == "segmentation":
        return FPNSegmentation(pyramid, num_classes)
    raise ValueError(f"unknown head {head!r}: use retinanet or segmentation")


@register_model("retinanet", task="detection", image_size=(96, 96),
                source="seeds 000: Feature Pyramid Networks (+ RetinaNet heads)",
                description="RetinaNet: FPN (ResNet bottlenecks) with class/box subnets on P2-P5, "
                            "focal loss")
def retinanet(in_channels: int = 1, num_classes: int = 10, layers: tuple = (3, 4, 6, 3),
              out_channels: int = 256, depth: int = 4) -> RetinaNet:
    return RetinaNet(FPN(tuple(layers), in_channels, out_channels), num_classes, depth)


@register_model("fpn-seg", task="segmentation", image_size=(96, 96),
                source="seeds 000: Feature Pyramid Networks (+ a semantic head)",
                description="FPN with a semantic segmentation head (levels summed at 1/4 scale)")
def fpn_seg(in_channels: int = 1, num_classes: int = 11, layers: tuple = (3, 4, 6, 3),
            out_channels: int = 256, channels: int = 128) -> FPNSegmentation:
    return FPNSegmentation(FPN(tuple(layers), in_channels, out_channels), num_classes, channels)
