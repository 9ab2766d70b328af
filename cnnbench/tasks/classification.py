"""Image classification on Fashion-MNIST: the task d2l's ``train_ch6`` trains every CNN on.

Loss: cross-entropy with optional label smoothing. Metrics: loss, top-1 and top-5 accuracy,
summed on the device so that a batch costs no host sync. The test report adds a confusion matrix;
TensorBoard gets a grid of misclassified test images each epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnbench.data import transforms as T
from cnnbench.tasks.base import DataBundle, Metric, Task, register_task

# Fashion-MNIST training-set pixel statistics (on the [0, 1] scale).
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


class ClassificationMetric(Metric):
    def __init__(self, topk: int = 5):
        self.topk = topk
        self.sums = None  # [loss x n, top-1 hits, top-k hits], on the device
        self.count = 0

    def update(self, output, targets, loss) -> None:
        n = targets.shape[0]
        with torch.no_grad():
            output = output.detach()
            hit = output.argmax(dim=1) == targets
            k = min(self.topk, output.shape[1])
            hit_k = (output.topk(k, dim=1).indices == targets.unsqueeze(1)).any(dim=1)
            values = torch.stack([loss.detach().float() * n, hit.sum().float(),
                                  hit_k.sum().float()])
        self.sums = values if self.sums is None else self.sums + values
        self.count += n

    def compute(self) -> dict[str, float]:
        if not self.count:
            return {"loss": float("nan"), "acc": float("nan"), "top5": float("nan")}
        loss, correct, correct_k = (v / self.count for v in self.sums.tolist())
        return {"loss": loss, "acc": correct, f"top{self.topk}": correct_k}


@register_task
class Classification(Task):
    """One label per image; ``output`` is ``[N, num_classes]`` logits."""

    name = "classification"
    monitor = "acc"
    options = {
        "label_smoothing": 0.0,  # cross-entropy against (1 - e) one-hot + e / classes
        "normalize": True,       # subtract Fashion-MNIST's mean, divide by its std
        "crop_padding": 0,       # random crop after zero padding by this many pixels (28 px frame)
        "hflip": False,          # random horizontal flip
        "random_erasing": 0.0,   # probability of erasing one random rectangle
    }

    def load_data(self) -> DataBundle:
        from cnnbench.data.fashion_mnist import load_bundle

        return load_bundle(self.config.get("data"), val_size=self.config.get("val_size", 5000),
                           limit=self.config.get("limit"))

    def model_args(self, info, data: DataBundle) -> dict:
        if "num_classes" in info.options or info.name.startswith("torchvision:"):
            return {"num_classes": len(data.class_names)}
        return {}

    def prepare(self, images, targets, train: bool):
        c = self.config
        x = T.to_float(images)
        if train:
            if c.get("crop_padding", 0):
                x, _ = T.random_crop(x, int(c["crop_padding"]))
            if c.get("hflip"):
                x, _ = T.random_hflip(x)
        size = c.get("input_size")
        if size:
            x = T.resize(x, tuple(size[-2:]))
            if size[0] != x.shape[1]:  # e.g. a 3-channel torchvision model on grey images
                x = x.expand(-1, size[0], -1, -1)
        if c.get("normalize", True):
            x = T.normalize(x, FMNIST_MEAN, FMNIST_STD)
        if train and c.get("random_erasing", 0.0):
            x = T.random_erasing(x, float(c["random_erasing"]))
        return x, targets

    def loss(self, output, targets):
        return F.cross_entropy(output.float(), targets,
                               label_smoothing=float(self.config.get("label_smoothing", 0.0)))

    def new_metric(self) -> Metric:
        return ClassificationMetric()

    def log_images(self, writer, step, images, output, targets, class_names) -> None:
        pred = output.argmax(dim=1)
        wrong = (pred != targets).nonzero().flatten()[:32].cpu()
        if len(wrong) == 0:
            return
        pictures = images[wrong.to(images.device)].float().cpu() / 255.0
        writer.add_image("test/misclassified", T.grid(pictures, nrow=8), step)
        pred, targets = pred.cpu(), targets.cpu()
        lines = ["| # | true | predicted |", "|---|---|---|"]
        lines += [f"| {i} | {class_names[targets[j]]} | {class_names[pred[j]]} |"
                  for i, j in enumerate(wrong.tolist())]
        writer.add_text("test/misclassified", "\n".join(lines), step)

    def final_report(self, output_targets, class_names) -> dict:
        k = len(class_names)
        pred = torch.cat([o.argmax(dim=1).cpu() for o, _ in output_targets])
        true = torch.cat([t.cpu() for _, t in output_targets])
        confusion = torch.bincount(true * k + pred, minlength=k * k).reshape(k, k)
        per_class = confusion.diag().float() / confusion.sum(dim=1).clamp(min=1).float()
        return {
            "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted
            "per_class_acc": {name: round(acc, 4)
                              for name, acc in zip(class_names, per_class.tolist())},
        }
