"""Semantic segmentation: one class per pixel (U-Net, FPN with a segmentation head).

``output`` is ``[N, K, H, W]`` logits at the input size, with K = classes + 1 (0 = background);
targets carry ``masks [N, H, W]`` (255 = void, ignored). Loss: cross-entropy, plus
``dice_weight`` x soft Dice. Metrics from a confusion matrix summed on the device: mean IoU over
the classes that occur, pixel accuracy; the test report adds the IoU of every class.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from cnnbench.tasks.base import Metric, register_task
from cnnbench.tasks.dense import DENSE_OPTIONS, DenseTask

IGNORE = 255


def confusion_matrix(pred: torch.Tensor, true: torch.Tensor, k: int) -> torch.Tensor:
    """``[k, k]`` counts, rows the true class, columns the predicted; void pixels are skipped."""
    keep = true != IGNORE
    return torch.bincount(true[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """IoU per class (NaN where a class is neither present nor predicted)."""
    confusion = confusion.double()
    inter = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


def dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, averaged over classes (the V-Net/U-Net overlap loss)."""
    k = logits.shape[1]
    valid = (masks != IGNORE)[:, None]
    probs = logits.softmax(1) * valid
    one_hot = F.one_hot(masks.clamp(max=k - 1) * (masks != IGNORE), k).permute(0, 3, 1, 2)
    one_hot = one_hot * valid
    inter = (probs * one_hot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + one_hot.sum((0, 2, 3))
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


class SegmentationMetric(Metric):
    def __init__(self, num_classes: int):
        self.k = num_classes
        self.confusion = None
        self.loss_sum, self.count = None, 0

    def update(self, output, targets, loss) -> None:
        with torch.no_grad():
            cm = confusion_matrix(output.detach().argmax(1).flatten(),
                                  targets["masks"].flatten(), self.k)
            n = targets["masks"].shape[0]
            lsum = loss.detach().float() * n
        self.confusion = cm if self.confusion is None else self.confusion + cm
        self.loss_sum = lsum if self.loss_sum is None else self.loss_sum + lsum
        self.count += n

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {"loss": float("nan"), "miou": float("nan"), "pixel_acc": float("nan")}
        cm = self.confusion.cpu()
        iou = iou_from_confusion(cm)
        return {"loss": float(self.loss_sum) / self.count, "miou": float(iou.nanmean()),
                "pixel_acc": float(cm.diag().sum() / cm.sum().clamp(min=1))}


@register_task
class Segmentation(DenseTask):
    name = "segmentation"
    monitor = "miou"
    voc_kind = "Segmentation"
    options = {**DENSE_OPTIONS, "dice_weight": 0.0}

    def model_classes(self) -> int:
        return self.num_classes + 1  # the background is class 0

    def loss(self, output, targets):
        masks = targets["masks"]
        loss = F.cross_entropy(output.float(), masks, ignore_index=IGNORE)
        if self.config.get("dice_weight", 0.0):
            loss = loss + float(self.config["dice_weight"]) * dice_loss(output.float(), masks)
        return loss

    def new_metric(self) -> Metric:
        return SegmentationMetric(self.num_classes + 1)

    def log_images(self, writer, step, images, output, targets, class_names) -> None:
        pictures = overlay_masks(images[:8], output[:8].argmax(1), self.num_classes + 1)
        truth = overlay_masks(images[:8], targets["masks"][:8], self.num_classes + 1)
        from torchvision.utils import make_grid

        writer.add_image("test/predicted_masks", make_grid(pictures, nrow=8), step)
        writer.add_image("test/true_masks", make_grid(truth, nrow=8), step)

    def final_report(self, output_targets, class_names) -> dict:
        k = self.num_classes + 1
        cm = sum(confusion_matrix(o.argmax(1).flatten(), t["masks"].flatten(), k)
                 for o, t in output_targets)
        iou = iou_from_confusion(cm)
        names = ["background", *class_names]
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
    colours = _palette(k)
    out = []
    for img, m in zip(images, masks):
        per_class = torch.stack([m == c for c in range(1, k)])
        out.append(draw_segmentation_masks(img.contiguous(), per_class, alpha=0.5,
                                           colors=colours[1:]))
    return torch.stack(out)


def _palette(k: int) -> list[tuple[int, int, int]]:
    import colorsys

    return [(0, 0, 0)] + [tuple(int(255 * v) for v in colorsys.hsv_to_rgb(i / max(1, k - 1), 0.9, 1))
                          for i in range(k - 1)]
