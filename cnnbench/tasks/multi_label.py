"""The fast.ai lesson's multi-label classification: every class in the image, not just one.

``output`` is ``[N, classes]`` logits, one independent sigmoid each; loss: binary cross-entropy.
Metrics: F1 per class at a 0.5 threshold (and their mean), and on evaluation passes the mean
over classes of the average precision of ranking the images by that class's score.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from cnnbench.tasks.base import Metric, register_task
from cnnbench.tasks.dense import DENSE_OPTIONS, DenseTask


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


class MultiLabelMetric(Metric):
    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.sums, self.loss_sum, self.count = None, None, 0
        self.scores, self.truth = [], []

    def update(self, output, targets, loss) -> None:
        truth = targets["multi_hot"]
        with torch.no_grad():
            pred = (output.detach().float().sigmoid() > self.threshold).float()
            counts = torch.stack([(pred * truth).sum(0), (pred * (1 - truth)).sum(0),
                                  ((1 - pred) * truth).sum(0)])
            n = truth.shape[0]
            lsum = loss.detach().float() * n
        self.sums = counts if self.sums is None else self.sums + counts
        self.loss_sum = lsum if self.loss_sum is None else self.loss_sum + lsum
        self.count += n
        if not output.requires_grad:  # the ranking metric only on evaluation passes
            self.scores.append(output.detach().float().cpu())
            self.truth.append(truth.cpu())

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {"loss": float("nan"), "f1": float("nan")}
        tp, fp, fn = self.sums.cpu()
        out = {"loss": float(self.loss_sum) / self.count,
               "f1": float(f1_per_class(tp, fp, fn).mean())}
        if self.scores:
            out["map"] = float(label_average_precision(torch.cat(self.scores),
                                                       torch.cat(self.truth)).nanmean())
        return out


@register_task
class MultiLabel(DenseTask):
    name = "multi-label"
    monitor = "f1"
    options = {**DENSE_OPTIONS, "threshold": 0.5}

    def prepare(self, images, targets, train: bool):
        x, targets = super().prepare(images, targets, train)
        return x, {"multi_hot": targets["multi_hot"]}

    def loss(self, output, targets):
        return F.binary_cross_entropy_with_logits(output.float(), targets["multi_hot"])

    def new_metric(self) -> Metric:
        return MultiLabelMetric(float(self.config.get("threshold", 0.5)))

    def log_images(self, writer, step, images, output, targets, class_names) -> None:
        from torchvision.utils import make_grid

        n = min(16, images.shape[0])
        writer.add_image("test/images", make_grid(images[:n].float().cpu() / 255, nrow=8), step)
        probs = output[:n].float().sigmoid().cpu()
        lines = ["| # | true | predicted (p > 0.5) |", "|---|---|---|"]
        for i in range(n):
            true = [class_names[j] for j in targets["multi_hot"][i].nonzero().flatten().tolist()]
            pred = [f"{class_names[j]} {probs[i, j]:.2f}"
                    for j in (probs[i] > 0.5).nonzero().flatten().tolist()]
            lines.append(f"| {i} | {', '.join(true)} | {', '.join(pred)} |")
        writer.add_text("test/labels", "\n".join(lines), step)

    def final_report(self, output_targets, class_names) -> dict:
        scores = torch.cat([o.float() for o, _ in output_targets])
        truth = torch.cat([t["multi_hot"] for _, t in output_targets])
        pred = (scores.sigmoid() > float(self.config.get("threshold", 0.5))).float()
        f1 = f1_per_class((pred * truth).sum(0), (pred * (1 - truth)).sum(0),
                          ((1 - pred) * truth).sum(0))
        ap = label_average_precision(scores, truth)
        return {"per_class_f1": {n: round(float(v), 4) for n, v in zip(class_names, f1)},
                "per_class_ap": {n: round(float(v), 4) for n, v in zip(class_names, ap)},
                "mean_f1": float(f1.mean()), "map": float(ap.nanmean())}
