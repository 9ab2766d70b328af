"""Semantic segmentation: one class per pixel (U-Net, FPN with a segmentation head).

``output`` is ``[N, K, H, W]`` logits at the input size, with K = classes + 1 (0 = background);
targets carry ``masks [N, H, W]`` (255 = void, ignored). Loss: cross-entropy, plus
``dice_weight`` x soft Dice. Metrics from a confusion matrix summed on the device: mean IoU over
the classes that occur, pixel accuracy; the test report adds the IoU of every class.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from cnnbench.keys import Key
from cnnbench.plots import Swatch
from cnnbench.tasks.dense import DENSE_OPTIONS, DenseTask
from cnnbench.tasks.metrics import (IGNORE, MeanIoU, PixelAccuracy, confusion_matrix,
                                    iou_from_confusion)


def dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, averaged over classes (the V-Net/U-Net overlap loss)."""
    k = logits.shape[1]
    valid = (masks != IGNORE)[:, None]
    probs = logits.softmax(1) * valid
    # One-hot by comparison (no host read, unlike F.one_hot's range checks): void matches none.
    one_hot = masks[:, None] == torch.arange(k, device=masks.device).view(1, k, 1, 1)
    inter = (probs * one_hot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3))
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


class Segmentation(DenseTask):
    name = "segmentation"
    monitor = "miou"
    voc_kind = "Segmentation"
    sources = (*DenseTask.sources, "masks")  # your own: images/, masks/, classes.txt
    options = (*DENSE_OPTIONS, Key("dice_weight", 0.0, float, bounds="[0, inf)",
                                   help="weight of a soft Dice loss added to cross-entropy"))

    @classmethod
    def model_classes(cls, num_classes: int) -> int:
        return num_classes + 1  # the background is class 0

    def loss(self, output, targets):
        masks = targets["masks"]
        loss = F.cross_entropy(output.float(), masks, ignore_index=IGNORE)
        if self.config["dice_weight"]:
            loss = loss + float(self.config["dice_weight"]) * dice_loss(output.float(), masks)
        return loss

    def metrics(self):
        k = self.model_classes(self.context.num_classes)
        return {"miou": MeanIoU(k), "pixel_acc": PixelAccuracy(k)}

    def log_images(self, writer, step, images, output, targets) -> None:
        k = self.model_classes(self.context.num_classes)
        pictures = overlay_masks(images[:8], output[:8].argmax(1), k)
        truth = overlay_masks(images[:8], targets["masks"][:8], k)
        from torchvision.utils import make_grid

        writer.add_image("test/predicted_masks", make_grid(pictures, nrow=8), step)
        writer.add_image("test/true_masks", make_grid(truth, nrow=8), step)

    def final_report(self, output_targets) -> dict:
        k = self.model_classes(self.context.num_classes)
        cm = sum(confusion_matrix(o.argmax(1).flatten(), t["masks"].flatten(), k)
                 for o, t in output_targets)
        iou = iou_from_confusion(cm)
        names = ["background", *self.context.class_names]
        return {"per_class_iou": {n: round(float(v), 4) for n, v in zip(names, iou)},
                "miou": float(iou.nanmean()),
                "pixel_acc": float(cm.diag().sum() / cm.sum().clamp(min=1))}


def overlay_masks(images: torch.Tensor, masks: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 pictures with each class's pixels tinted (``draw_segmentation_masks``)."""
    from torchvision.utils import draw_segmentation_masks

    images = images.cpu()
    masks = masks.cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if masks.shape[-2:] != images.shape[-2:]:
        masks = F.interpolate(masks[:, None].float(), size=images.shape[-2:],
                              mode="nearest")[:, 0].long()
    colours = palette(k)
    out = []
    for img, m in zip(images, masks):
        per_class = torch.stack([m == c for c in range(1, k)])
        out.append(draw_segmentation_masks(img.contiguous(), per_class, alpha=0.5,
                                           colors=colours[1:]))
    return torch.stack(out)


def palette(k: int) -> list[tuple[int, int, int]]:
    import colorsys

    return [(0, 0, 0)] + [tuple(int(255 * v) for v in colorsys.hsv_to_rgb(i / max(1, k - 1), 0.9, 1))
                          for i in range(k - 1)]


def colour_key(class_names) -> tuple:
    """The legend of :func:`overlay_masks`: each class's tint (the background is not tinted)."""
    return tuple(Swatch(name, colour)
                 for name, colour in zip(class_names, palette(len(class_names) + 1)[1:]))
