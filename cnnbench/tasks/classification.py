"""Image classification on Fashion-MNIST: the task d2l's ``train_ch6`` trains every CNN on.

Loss: cross-entropy with optional label smoothing. Metrics: top-1 and top-5 accuracy (besides
the trainer's mean loss). The test report adds a confusion matrix; TensorBoard gets a grid of
misclassified test images each epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnbench.data import transforms as T
from cnnbench.tasks.base import Context, Task
from cnnbench.tasks.metrics import Accuracy, TopK

# Fashion-MNIST training-set pixel statistics (on the [0, 1] scale).
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


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

    @classmethod
    def setup(cls, config, data, info) -> Context:
        args = {}
        if "num_classes" in info.options or info.name.startswith("torchvision:"):
            args["num_classes"] = len(data.class_names)
        channels = (config.get("input_size") or info.input_size)[0]
        return Context(tuple(data.class_names), int(channels), (FMNIST_MEAN,), (FMNIST_STD,),
                       args)

    def prepare(self, images, targets, train: bool):
        c = self.config
        x = T.to_float(images)
        if train:
            if c.get("crop_padding", 0):
                x, _ = T.random_crop(x, int(c["crop_padding"]))
            if c.get("hflip"):
                x, _ = T.random_hflip(x)
        if c.get("input_size"):
            x = T.resize(x, tuple(c["input_size"][-2:]))
        if self.context.channels != x.shape[1]:  # e.g. a colour torchvision model, grey images
            x = x.expand(-1, self.context.channels, -1, -1)
        if c.get("normalize", True):
            x = T.normalize(x, self.context.mean, self.context.std)
        if train and c.get("random_erasing", 0.0):
            x = T.random_erasing(x, float(c["random_erasing"]))
        return x, targets

    def loss(self, output, targets):
        return F.cross_entropy(output.float(), targets,
                               label_smoothing=float(self.config.get("label_smoothing", 0.0)))

    def metrics(self):
        return {"acc": Accuracy(), "top5": TopK(5)}

    def log_images(self, writer, step, images, output, targets) -> None:
        class_names = self.context.class_names
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

    def final_report(self, output_targets) -> dict:
        class_names = self.context.class_names
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
