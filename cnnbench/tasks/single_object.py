"""The fast.ai lesson's first step to detection: the largest object's box and class.

``output`` is ``[N, 4 + classes]``: four box numbers, squashed into the image by a sigmoid and
scaled to pixels, then class scores. Loss as in the lesson's ``detn_loss``: L1 on the box plus
``ce_weight`` (20) x cross-entropy, the weight that brings the two to about the same scale.
Metrics: class accuracy and the mean IoU of the predicted box with the true one.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from cnnbench.keys import Key
from cnnbench.tasks.dense import DENSE_OPTIONS, DenseTask
from cnnbench.tasks.metrics import BoxIoU, BoxL1, ClassAccuracy


def largest_object(boxes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The box ``[N, 4]`` and label ``[N]`` of each image's largest object (by box area)."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    area = area.masked_fill(labels < 0, -1.0)
    k = area.argmax(1)
    rows = torch.arange(boxes.shape[0], device=boxes.device)
    return boxes[rows, k], labels[rows, k]


class SingleObject(DenseTask):
    name = "single-object"
    monitor = "box_iou"
    sources = (*DenseTask.sources, "coco")  # the largest of a COCO JSON's boxes
    options = (*DENSE_OPTIONS, Key("ce_weight", 20.0, float, bounds="[0, inf)",
                                   help="weight of the class loss beside the box loss"))

    def prepare(self, images, targets, train: bool):
        x, targets = super().prepare(images, targets, train)
        box, label = largest_object(targets["boxes"], targets["labels"])
        return x, {"box": box, "label": label}  # box in fractions of the image

    def loss(self, output, targets):
        size = float(self.config["input_size"][-1]) if self.config["input_size"] else 96.0
        # As in the lesson: sigmoid into the image, in pixels, L1 + 20 x cross-entropy.
        pred_box = output[:, :4].float().sigmoid() * size
        return (F.l1_loss(pred_box, targets["box"] * size)
                + float(self.config["ce_weight"])
                * F.cross_entropy(output[:, 4:].float(), targets["label"].clamp(min=0)))

    def metrics(self):
        return {"acc": ClassAccuracy(), "box_iou": BoxIoU(), "box_l1": BoxL1()}

    def boxes_drawn(self, output, targets, n: int = 8) -> list[tuple]:
        """Of the first ``n`` images: ``(true box, its class, predicted box, its class)``,
        boxes ``[1, 4]`` in fractions of the image."""
        class_names = self.context.class_names
        drawn = []
        for i in range(min(n, output.shape[0])):
            true_box, true_label = targets["box"][i].cpu(), int(targets["label"][i])
            pred_box = output[i, :4].float().sigmoid().cpu()
            pred_label = int(output[i, 4:].argmax())
            drawn.append((true_box[None], [class_names[true_label]], pred_box[None],
                          [class_names[pred_label]]))
        return drawn

    def draw(self, images, output, targets, n: int = 8) -> list[torch.Tensor]:
        """uint8 pictures of the first ``n`` images: the true box and class (green) and the
        predicted ones (red)."""
        from cnnbench.tasks.detection import draw_boxes

        n = min(n, images.shape[0])
        return [draw_boxes(images[i].cpu(), *drawn)
                for i, drawn in enumerate(self.boxes_drawn(output, targets, n))]

    def log_images(self, writer, step, images, output, targets) -> None:
        from torchvision.utils import make_grid

        writer.add_image("test/largest_object",
                         make_grid(torch.stack(self.draw(images, output, targets)), nrow=4), step)
