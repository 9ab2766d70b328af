"""The fast.ai lesson's path to SSD (seeds 002): a ResNet body with custom heads.

- ``single-object``: the largest object's box (4 numbers, scaled into the image by a sigmoid in
  the loss) and its class, from one flattened head (the lesson's ``head_reg4``);
- ``multi-label``: which classes appear (one logit per class, BCE);
- ``ssd-resnet``: the lesson's ``StdConv``/``OutConv`` SSD head for *small* images on a narrow
  d2l ResNet-18 body, with anchors on several grids. ``ssd`` (ssd.py) is the notes' VGG19 SSD for
  large images (>= 352 px).

The body is d2l's ResNet-18 (``resnet.py``'s ``resnet18_body``) narrowed by its ``width`` option:
32 here, 64 being the book's network. Every model here keeps it as ``body``, so one trained on
another task lends it by name (``init_from``): ``body-classifier`` is that body with a pooled
linear head, to pretrain on Fashion-MNIST as the lesson starts from an ImageNet ResNet. The
layer groups (``lr_mult``, ``freeze_epochs``) are fastai's three for a ResNet: the body to
``b3``, ``b4``-``b5``, and the head.
"""

import torch
from torch import nn
from torch.nn import functional as F

from cnnbench.anchors import anchor_notes, anchors_per_cell, grid_anchors
from cnnbench.models.resnet import resnet18_body
from cnnbench.models.ssd import flatten_prediction
from cnnbench.registry import register_model


class StdConv(nn.Module):
    """3x3 convolution (stride 2 by default halves the grid), ReLU, batch norm, dropout."""

    def __init__(self, nin: int, nout: int, stride: int = 2, drop: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(nin, nout, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(nout)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU before batch norm, as the lesson prefers: the norm can then give negative values.
        return self.drop(self.bn(F.relu(self.conv(x))))


class OutConv(nn.Module):
    """Two separate 3x3 convolutions on one grid: ``k`` x (classes + 1) scores and ``k`` x 4 offsets.

    Separate layers let the classifier and the box regressor specialise a little; the class
    bias starts at ``bias`` (negative: at first every anchor says "background").
    """

    def __init__(self, k: int, nin: int, num_classes: int, bias: float = -3.0):
        super().__init__()
        self.num_classes = num_classes
        self.oconv1 = nn.Conv2d(nin, (num_classes + 1) * k, 3, padding=1)
        self.oconv2 = nn.Conv2d(nin, 4 * k, 3, padding=1)
        nn.init.constant_(self.oconv1.bias, bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (flatten_prediction(self.oconv1(x), self.num_classes + 1),
                flatten_prediction(self.oconv2(x), 4))


def body_groups() -> dict[str, list[str]]:
    """fastai's split of a ResNet (its ``lr_cut`` at ``layer3``): stem to b3, b4-b5, the rest."""
    return {"b1-b3": ["body.0", "body.1", "body.2"], "b4-b5": ["body.3", "body.4"], "head": []}


# Anchor sizes (fractions of the image) per grid, finest first; ratios are width / height.
SSD_RESNET_SIZES = ((0.12, 0.17), (0.24, 0.32), (0.42, 0.52), (0.62, 0.75))
SSD_RESNET_RATIOS = (1.0, 2.0, 0.5)


class SSDResNet(nn.Module):
    """The lesson's multi-grid SSD head on a ResNet body, sized for 96 px images.

    Grids: ``b3`` (1/8 of the input) and ``b4`` (1/16) through a stride-1 ``StdConv`` each, then
    ``b5`` (1/32) and one more stride-2 ``StdConv`` below it: 12x12, 6x6, 3x3, 2x2 at 96 px.
    ``forward`` returns ``(anchors [A, 4], class_logits [N, A, classes + 1], offsets [N, A, 4])``
    like ``ssd``.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32,
                 head_channels: int = 128, sizes=SSD_RESNET_SIZES, ratios=SSD_RESNET_RATIOS,
                 bias: float = -3.0):
        super().__init__()
        self.num_classes = num_classes
        self.sizes, self.ratios = [tuple(s) for s in sizes], tuple(ratios)
        self.body = resnet18_body(in_channels, width)
        d = head_channels
        self.drop = nn.Dropout(0.1)
        self.sconv_b3 = StdConv(2 * width, d, stride=1)
        self.sconv_b4 = StdConv(4 * width, d, stride=1)
        self.sconv_b5 = StdConv(8 * width, d, stride=1)
        self.sconv_down = StdConv(d, d)
        k = [anchors_per_cell(s, self.ratios) for s in self.sizes]
        self.outs = nn.ModuleList(OutConv(a, d, num_classes, bias) for a in k)

    def grids(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.body[:3](x)  # b1-b3
        c4 = self.body[3](c3)
        c5 = self.body[4](c4)
        g5 = self.sconv_b5(self.drop(c5))
        return [self.sconv_b3(self.drop(c3)), self.sconv_b4(self.drop(c4)), g5,
                self.sconv_down(g5)]

    def forward(self, x: torch.Tensor):
        anchors, cls_preds, box_preds = [], [], []
        for grid, sizes, out in zip(self.grids(x), self.sizes, self.outs):
            anchors.append(grid_anchors(grid.shape[2], grid.shape[3], sizes, self.ratios,
                                        device=x.device))
            c, b = out(grid)
            cls_preds.append(c)
            box_preds.append(b)
        return torch.cat(anchors), torch.cat(cls_preds, 1), torch.cat(box_preds, 1)

    def layer_groups(self) -> dict[str, list[str]]:
        return body_groups()

    def summary_notes(self, x: torch.Tensor) -> list[str]:
        names = [f"grid {k}" for k in range(1, len(self.sizes) + 1)]
        return anchor_notes(self.grids(x), self.sizes, self.ratios, names)


class SingleObject(nn.Module):
    """ResNet body and the lesson's flattened head: ``[N, 4 + classes]`` (box first)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32,
                 grid: int = 3, hidden: int = 256):
        super().__init__()
        self.body = resnet18_body(in_channels, width)
        # A fixed grid before flattening, so the head does not depend on the input size.
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.head = nn.Sequential(
            nn.Flatten(), nn.ReLU(), nn.Dropout(0.25),
            nn.Linear(8 * width * grid * grid, hidden), nn.ReLU(), nn.BatchNorm1d(hidden),
            nn.Dropout(0.25), nn.Linear(hidden, 4 + num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.body(x)))

    def layer_groups(self) -> dict[str, list[str]]:
        return body_groups()


class ConcatPool(nn.Module):
    """fast.ai's ``AdaptiveConcatPool2d``: global average and global max side by side.

    The max keeps a small object's evidence that an average over the whole image dilutes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)), 1)


class MultiLabel(nn.Module):
    """ResNet body, global pooling (``avg`` or ``concat``: average and max), one logit per
    class (sigmoid, not softmax)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32,
                 pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "concat"):
            raise ValueError(f"pool must be avg or concat, not {pool!r}")
        self.body = resnet18_body(in_channels, width)
        pooling = ConcatPool() if pool == "concat" else nn.AdaptiveAvgPool2d(1)
        features = 8 * width * (2 if pool == "concat" else 1)
        self.head = nn.Sequential(pooling, nn.Flatten(), nn.Dropout(0.25),
                                  nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def layer_groups(self) -> dict[str, list[str]]:
        return body_groups()


@register_model("ssd-resnet", task="detection", image_size=(96, 96),
                source="seeds 002: fast.ai SSD_Head on a ResNet; small images (96 px)",
                description="SSD for small images (96 px): the lesson's StdConv/OutConv heads on 4 "
                            "grids of a narrow ResNet-18 (ssd is the VGG19 one, >= 352 px)")
def ssd_resnet(in_channels: int = 1, num_classes: int = 10, width: int = 32,
               head_channels: int = 128) -> SSDResNet:
    """SSD for small images (96 px): the lesson's StdConv/OutConv head on 4 grids of a ResNet-18
    body; `ssd` is the VGG19 one for large images."""
    return SSDResNet(in_channels, num_classes, width, head_channels)


@register_model("single-object", task="single-object", image_size=(96, 96),
                source="seeds 002: fast.ai single object detection (head_reg4, detn_loss)")
def single_object(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> SingleObject:
    """The largest object's box and class from a ResNet-18 body and a flattened head."""
    return SingleObject(in_channels, num_classes, width)


@register_model("multi-label", task="multi-label", image_size=(96, 96),
                source="seeds 002: fast.ai multi-label classification")
def multi_label(in_channels: int = 1, num_classes: int = 10, width: int = 32,
                pool: str = "avg") -> MultiLabel:
    """Which classes are in the image: a ResNet-18 body with one sigmoid output per class."""
    return MultiLabel(in_channels, num_classes, width, pool)


@register_model("body-classifier", task="classification", image_size=(48, 48),
                source="seeds 002: the lesson's pretrained body (ConvLearner.pretrained)")
def body_classifier(in_channels: int = 1, num_classes: int = 10, width: int = 32,
                    pool: str = "avg") -> MultiLabel:
    """The detectors' ResNet-18 body with a pooled linear head: pretrain it, then init_from."""
    # MultiLabel's network is this one; only the task (softmax, not sigmoids) differs. 48 px:
    # an item fills the frame at about the scale it has in a 96 px scene (0.3-0.6 of it).
    return MultiLabel(in_channels, num_classes, width, pool)
