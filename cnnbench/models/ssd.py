"""SSD on the notes' VGG19 feature extractor with its five extra layers (six feature maps)."""

import itertools

import torch
from torch import nn

from cnnbench.anchors import anchor_notes, anchors_per_cell, grid_anchors
from cnnbench.checkpoints import read_checkpoint
from cnnbench.errors import CnnbenchError
from cnnbench.models.vgg import VGG19_ARCH, vgg_features
from cnnbench.registry import register_model

# Anchor scales grow linearly from the finest map to the coarsest (SSD paper: 0.2-0.9, with a
# smaller first scale); each map also gets the geometric mean with the next scale.
SCALES = (0.1, 0.26, 0.42, 0.58, 0.74, 0.9, 1.06)
DEFAULT_SIZES = tuple((s, round((s * t) ** 0.5, 3)) for s, t in zip(SCALES, SCALES[1:]))
DEFAULT_RATIOS = (1.0, 2.0, 0.5)


def _reduce_then_conv(in_channels: int, mid: int, out_channels: int) -> nn.Sequential:
    """A 1x1 channel reduction followed by an unpadded 3x3 convolution (shrinks the map by 2)."""
    return nn.Sequential(nn.Conv2d(in_channels, mid, 1), nn.Conv2d(mid, out_channels, 3))


class SSD(nn.Module):
    """Feature maps from VGG19 ``features`` and ``conv1``-``conv6``, class and box heads per map.

    ``forward`` returns ``(anchors [A, 4], class_logits [N, A, classes + 1], box_offsets [N, A, 4])``
    with class 0 the background; every unpadded 3x3 layer needs at least a 3x3 map, so the input
    must be at least 352 px (11 px after VGG's five halvings).
    """

    map_channels = (512, 1024, 512, 256, 256, 256)

    def __init__(self, in_channels: int, num_classes: int, sizes=DEFAULT_SIZES,
                 ratios=DEFAULT_RATIOS):
        super().__init__()
        self.num_classes = num_classes
        self.sizes, self.ratios = [tuple(s) for s in sizes], tuple(ratios)
        # Flat, like torchvision's vgg19().features, so its state dict keys match.
        self.features = nn.Sequential(*itertools.chain(*vgg_features(VGG19_ARCH, in_channels)))
        self.conv1 = nn.Conv2d(512, 1024, 3)
        self.conv2 = nn.Conv2d(1024, 1024, 1)
        self.conv3 = _reduce_then_conv(1024, 256, 512)
        self.conv4 = _reduce_then_conv(512, 128, 256)
        self.conv5 = _reduce_then_conv(256, 128, 256)
        self.conv6 = _reduce_then_conv(256, 128, 256)
        per_cell = [anchors_per_cell(s, self.ratios) for s in self.sizes]
        self.cls_heads = nn.ModuleList(nn.Conv2d(c, a * (num_classes + 1), 3, padding=1)
                                       for c, a in zip(self.map_channels, per_cell))
        self.box_heads = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1)
                                       for c, a in zip(self.map_channels, per_cell))

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six feature maps, finest first."""
        feat_1 = self.features(x)
        feat_2 = self.conv2(self.conv1(feat_1))
        feat_3 = self.conv3(feat_2)
        feat_4 = self.conv4(feat_3)
        feat_5 = self.conv5(feat_4)
        feat_6 = self.conv6(feat_5)
        return [feat_1, feat_2, feat_3, feat_4, feat_5, feat_6]

    def forward(self, x: torch.Tensor):
        anchors, cls_preds, box_preds = [], [], []
        for feat, sizes, cls_head, box_head in zip(self.extract(x), self.sizes, self.cls_heads,
                                                   self.box_heads):
            anchors.append(grid_anchors(feat.shape[2], feat.shape[3], sizes, self.ratios,
                                        device=x.device))
            cls_preds.append(flatten_prediction(cls_head(feat), self.num_classes + 1))
            box_preds.append(flatten_prediction(box_head(feat), 4))
        return torch.cat(anchors), torch.cat(cls_preds, dim=1), torch.cat(box_preds, dim=1)

    def summary_notes(self, x: torch.Tensor) -> list[str]:
        names = [f"map {k}" for k in range(1, len(self.sizes) + 1)]
        return anchor_notes(self.extract(x), self.sizes, self.ratios, names)

    def load_backbone(self, path: str) -> None:
        """Load VGG19 ``features`` weights from a local file (a torchvision ``vgg19`` state dict)."""
        state = read_checkpoint(path)
        state = {k.removeprefix("features."): v for k, v in state.items()
                 if k.startswith("features.") or k[0].isdigit()}
        try:
            self.features.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CnnbenchError(f"{path} is not a VGG19 feature state dict: {first}") from None


def flatten_prediction(pred: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """``[N, A*k, H, W]`` -> ``[N, H*W*A, k]``, matching the order of ``grid_anchors``."""
    n = pred.shape[0]
    return pred.permute(0, 2, 3, 1).reshape(n, -1, per_anchor)


@register_model("ssd", task="detection", image_size=(352, 352),
                source="seeds 000: SSD, VGG19 + extra layers; large images (>= 352 px)",
                description="SSD for large images (>= 352 px): the notes' VGG19 extractor and 5 "
                            "extra layers (ssd-resnet is the one for 96 px)")
def ssd(in_channels: int = 3, num_classes: int = 20, backbone_weights: str | None = None) -> SSD:
    """SSD with the notes' VGG19 extractor (for large images, >= 352 px); random weights unless
    ``backbone_weights`` names a local VGG19 state dict."""
    model = SSD(in_channels, num_classes)
    if backbone_weights:
        model.load_backbone(backbone_weights)
    return model
