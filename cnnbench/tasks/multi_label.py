"""The fast.ai lesson's multi-label classification: every class in the image, not just one.

``output`` is ``[N, classes]`` logits, one independent sigmoid each; loss: binary cross-entropy.
Metrics: F1 per class at a 0.5 threshold (and their mean), and on evaluation passes the mean
over classes of the average precision of ranking the images by that class's score.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from cnnbench.keys import Key
from cnnbench.tasks.dense import DENSE_OPTIONS, DenseTask
from cnnbench.tasks.metrics import F1, LabelAP, f1_per_class, label_average_precision


class MultiLabel(DenseTask):
    name = "multi-label"
    monitor = "f1"
    # The lesson's planet layout (space-separated tags); a COCO JSON's classes present.
    sources = (*DenseTask.sources, "coco", "csv")
    options = (*DENSE_OPTIONS, Key("threshold", 0.5, float, bounds="[0, 1]",
                                   help="a label is predicted above this probability"))

    def prepare(self, images, targets, train: bool):
        x, targets = super().prepare(images, targets, train)
        return x, {"multi_hot": targets["multi_hot"]}

    def loss(self, output, targets):
        return F.binary_cross_entropy_with_logits(output.float(), targets["multi_hot"])

    def metrics(self):
        return {"f1": F1(float(self.config["threshold"])), "map": LabelAP()}

    def log_images(self, writer, step, images, output, targets) -> None:
        class_names = self.context.class_names
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

    def final_report(self, output_targets) -> dict:
        class_names = self.context.class_names
        scores = torch.cat([o.float() for o, _ in output_targets])
        truth = torch.cat([t["multi_hot"] for _, t in output_targets])
        pred = (scores.sigmoid() > float(self.config["threshold"])).float()
        f1 = f1_per_class((pred * truth).sum(0), (pred * (1 - truth)).sum(0),
                          ((1 - pred) * truth).sum(0))
        ap = label_average_precision(scores, truth)
        return {"per_class_f1": {n: round(float(v), 4) for n, v in zip(class_names, f1)},
                "per_class_ap": {n: round(float(v), 4) for n, v in zip(class_names, ap)},
                "mean_f1": float(f1.mean()), "map": float(ap.nanmean())}
