"""Metrics: sums kept on the device over one pass, read once at its end.

A metric's ``update(output, targets)`` adds a batch's sums (no host sync, so a training step never
waits for the device); ``compute()`` turns them into a float once per pass (the epoch's one
read). A task declares its metrics by name, e.g. ``{"acc": Accuracy(), "top5": TopK(5)}``; the
trainer adds the mean loss. A metric whose ``compute`` returns a dict contributes those names
(as torchmetrics' ``MetricCollection`` does): ``MeanAP`` gives ``map50`` and ``map``.

To add a metric: one class here and one entry in the task's ``metrics()``.
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar

import torch

from cnnbench import boxes as B

IGNORE = 255  # void pixels in a mask: not counted


class Metric:
    """Base: ``add`` sums a value on the device and counts images on the host."""

    on_train: ClassVar[bool] = True  # False: measured on evaluation passes only (e.g. mAP)
    names: ClassVar[tuple[str, ...]] = ()  # the names of a dict from compute(), if it gives one

    def __init__(self):
        self.total = None  # the running sum, a tensor on the device
        self.count = 0  # images seen: batch sizes are known without reading the device

    def add(self, value: torch.Tensor, n: int) -> None:
        self.total = value if self.total is None else self.total + value
        self.count += n

    def update(self, output, targets) -> None:
        raise NotImplementedError

    def compute(self) -> float | dict[str, float]:
        """The mean per image of the summed value; NaN after an empty pass."""
        return float(self.total) / self.count if self.count else math.nan


class Mean(Metric):
    """A per-image mean of per-batch means (the trainer's loss): ``add(mean * n, n)``."""


class Accuracy(Metric):
    """Top-1 accuracy of ``[N, classes]`` scores against ``[N]`` labels, or against the
    heaviest class of ``[N, classes]`` soft targets (MixUp, CutMix)."""

    def scores_and_labels(self, output, targets) -> tuple[torch.Tensor, torch.Tensor]:
        return output, targets.argmax(dim=1) if targets.dim() == 2 else targets

    def update(self, output, targets) -> None:
        scores, labels = self.scores_and_labels(output, targets)
        self.add((scores.argmax(dim=1) == labels).sum().float(), labels.shape[0])


class TopK(Accuracy):
    """The label is among the ``k`` highest scores."""

    def __init__(self, k: int = 5):
        super().__init__()
        self.k = k

    def update(self, output, targets) -> None:
        scores, labels = self.scores_and_labels(output, targets)
        top = scores.topk(min(self.k, scores.shape[1]), dim=1).indices
        self.add((top == labels.unsqueeze(1)).any(dim=1).sum().float(), labels.shape[0])


class ClassAccuracy(Accuracy):
    """Single object: accuracy of the class scores that follow the four box numbers."""

    def scores_and_labels(self, output, targets):
        return output[:, 4:], targets["label"]


class BoxIoU(Metric):
    """Single object: mean IoU of the predicted box (sigmoid of the first four numbers, image
    fractions) with the true one."""

    def update(self, output, targets) -> None:
        pred = output[:, :4].float().sigmoid()
        self.add(B.paired_iou(pred, targets["box"]).sum(), pred.shape[0])


class BoxL1(Metric):
    """Single object: mean absolute error of the box, in fractions of the image side."""

    def update(self, output, targets) -> None:
        pred = output[:, :4].float().sigmoid()
        self.add((pred - targets["box"]).abs().mean(1).sum(), pred.shape[0])


def confusion_matrix(pred: torch.Tensor, true: torch.Tensor, k: int) -> torch.Tensor:
    """``[k, k]`` counts, rows the true class, columns the predicted; void pixels are skipped.

    Void pixels go to one extra bin that is dropped; ``scatter_add_`` into a fixed number of
    bins, not ``bincount`` or a boolean mask, so that the host never waits for the device.
    """
    cells = torch.where(true == IGNORE, k * k, true.long() * k + pred.long()).flatten()
    counts = torch.zeros(k * k + 1, dtype=torch.long, device=cells.device)
    counts.scatter_add_(0, cells, torch.ones_like(cells))
    return counts[:k * k].reshape(k, k)


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """IoU per class (NaN where a class is neither present nor predicted)."""
    confusion = confusion.double()
    inter = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


class _Confusion(Metric):
    """Segmentation: a pixel confusion matrix of ``[N, k, H, W]`` logits against ``masks``."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.k = num_classes

    def update(self, output, targets) -> None:
        masks = targets["masks"]
        self.add(confusion_matrix(output.argmax(1).flatten(), masks.flatten(), self.k),
                 masks.shape[0])


class MeanIoU(_Confusion):
    """Mean over the classes that occur of intersection over union."""

    def compute(self) -> float:
        return float(iou_from_confusion(self.total.cpu()).nanmean()) if self.count else math.nan


class PixelAccuracy(_Confusion):
    def compute(self) -> float:
        if not self.count:
            return math.nan
        cm = self.total.cpu()
        return float(cm.diag().sum() / cm.sum().clamp(min=1))


def f1_per_class(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    return 2 * tp / (2 * tp + fp + fn).clamp(min=1)


def label_average_precision(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """AP per class ``[C]``: mean precision at each positive when images are ranked by score
    (NaN for a class with no positive image)."""
    order = scores.argsort(0, descending=True)
    hits = truth.gather(0, order).double()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)[:, None]
    positives = hits.sum(0)
    ap = (precision * hits).sum(0) / positives.clamp(min=1)
    return torch.where(positives > 0, ap, torch.full_like(ap, float("nan")))


class F1(Metric):
    """Multi-label: F1 of each class at ``threshold`` on the sigmoid, averaged over classes."""

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold

    def update(self, output, targets) -> None:
        truth = targets["multi_hot"]
        pred = (output.float().sigmoid() > self.threshold).float()
        self.add(torch.stack([(pred * truth).sum(0), (pred * (1 - truth)).sum(0),
                              ((1 - pred) * truth).sum(0)]), truth.shape[0])

    def compute(self) -> float:
        return float(f1_per_class(*self.total.cpu()).mean()) if self.count else math.nan


class LabelAP(Metric):
    """Multi-label: mean over classes of the AP of ranking the images by that class's score."""

    on_train = False  # the ranking needs every score of the pass on the host

    def __init__(self):
        super().__init__()
        self.scores, self.truth = [], []

    def update(self, output, targets) -> None:
        self.scores.append(output.float().cpu())
        self.truth.append(targets["multi_hot"].cpu())
        self.count += output.shape[0]

    def compute(self) -> float:
        if not self.count:
            return math.nan
        return float(label_average_precision(torch.cat(self.scores),
                                             torch.cat(self.truth)).nanmean())


class MeanAP(Metric):
    """Detection: ``map50`` (VOC's mAP at IoU 0.5) and ``map`` (COCO's mean over 0.50:0.95) of
    the detections ``detect(output)`` gives, against the boxes with a label (``-1`` pads)."""

    on_train = False  # decoding and NMS per image: evaluation passes only
    names = ("map50", "map")

    def __init__(self, detect: Callable, num_classes: int):
        super().__init__()
        self.detect, self.num_classes = detect, num_classes
        self.predictions, self.ground_truth = [], []

    def update(self, output, targets) -> None:
        self.predictions += [{k: v.cpu() for k, v in d.items()} for d in self.detect(output)]
        for boxes, labels in zip(targets["boxes"].cpu(), targets["labels"].cpu()):
            keep = labels >= 0
            self.ground_truth.append({"boxes": boxes[keep], "labels": labels[keep]})
        self.count += targets["labels"].shape[0]

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {"map50": math.nan, "map": math.nan}
        m = B.mean_average_precision(self.predictions, self.ground_truth, self.num_classes,
                                     B.COCO_THRESHOLDS)
        return {"map50": m["per_threshold"]["0.50"], "map": m["map"]}


class Meter:
    """One pass's mean loss (the trainer's) and the task's metrics, read together at the end."""

    def __init__(self, metrics: dict[str, Metric], train: bool):
        self.loss = Mean()
        self.metrics = {k: m for k, m in metrics.items() if m.on_train or not train}

    @torch.no_grad()
    def update(self, output, targets, loss: torch.Tensor, n: int) -> None:
        self.loss.add(loss.detach().float() * n, n)
        for metric in self.metrics.values():
            metric.update(output, targets)

    def state_dict(self) -> dict:
        """The running sums (a mid-epoch checkpoint keeps them)."""
        return {name: {"total": m.total, "count": m.count}
                for name, m in {"loss": self.loss, **self.metrics}.items()}

    def load_state_dict(self, state: dict, device) -> None:
        for name, m in {"loss": self.loss, **self.metrics}.items():
            total = state[name]["total"]
            m.total = total.to(device) if isinstance(total, torch.Tensor) else total
            m.count = state[name]["count"]

    def compute(self) -> dict[str, float]:
        values = {"loss": self.loss.compute()}
        for name, metric in self.metrics.items():
            value = metric.compute()
            values.update(value if isinstance(value, dict) else {name: value})
        return values
