"""Object detection with anchors (SSD, ssd-resnet, RetinaNet on FPN).

``output`` is ``(anchors [A, 4], class_logits [N, A, K], box_offsets [N, A, 4])``, anchors in
image fractions. With K = classes + 1 the logits are SSD's softmax over background (column 0) and
the classes, trained with cross-entropy and hard negative mining (3 negatives per positive); with
K = classes they are RetinaNet's sigmoids, trained with the focal loss. Boxes: smooth-L1 on the
encoded offsets of the matched anchors (``boxes.match``/``boxes.encode``). Evaluation decodes,
runs per-class NMS and scores mAP@0.5 and COCO's mAP@[.5:.95].
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from cnnbench import boxes as B
from cnnbench.keys import Key
from cnnbench.tasks.dense import DENSE_OPTIONS, DenseTask
from cnnbench.tasks.metrics import MeanAP


def ssd_loss(cls_logits, box_offsets, cls_target, box_target, neg_ratio: float = 3.0,
             box_loss: str = "smooth_l1"):
    """(box loss, class loss), each summed and divided by the number of matched anchors."""
    pos = cls_target > 0
    num_pos = pos.sum().clamp(min=1).float()
    loc = _box_loss(box_offsets, box_target, pos, box_loss) / num_pos
    ce = F.cross_entropy(cls_logits.flatten(0, 1), cls_target.flatten(),
                         reduction="none").view_as(cls_target)
    # Hard negative mining: only the background anchors the model gets most wrong count, at most
    # neg_ratio per object in the image (at least a few when an image has none).
    neg_ce = ce.detach().masked_fill(pos, -1.0)
    rank = neg_ce.argsort(1, descending=True).argsort(1)
    num_neg = (neg_ratio * pos.sum(1, keepdim=True)).clamp(min=8)
    neg = (rank < num_neg) & ~pos
    cls = (ce * (pos | neg)).sum() / num_pos
    return loc, cls


def focal_loss(cls_logits, box_offsets, cls_target, box_target, box_loss: str = "smooth_l1",
               alpha: float = 0.25, gamma: float = 2.0):
    """RetinaNet: sigmoid focal loss over every anchor and class, smooth-L1 on matched anchors."""
    pos = cls_target > 0
    num_pos = pos.sum().clamp(min=1).float()
    # One-hot of the object classes (1..C; background 0 matches none) by comparison: unlike
    # F.one_hot, no range check that reads the device.
    classes = torch.arange(1, cls_logits.shape[-1] + 1, device=cls_target.device)
    one_hot = (cls_target[..., None] == classes).to(cls_logits.dtype)
    cls = sigmoid_focal_loss(cls_logits, one_hot, alpha, gamma, reduction="sum") / num_pos
    loc = _box_loss(box_offsets, box_target, pos, box_loss) / num_pos
    return loc, cls


def _box_loss(pred, target, pos, kind: str):
    """Summed over the anchors where ``pos``: a mask, not an index, so the host never waits."""
    if kind == "l1":
        per_anchor = F.l1_loss(pred, target, reduction="none")
    else:
        per_anchor = F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)
    return torch.where(pos[..., None], per_anchor, 0.0).sum()


class Detection(DenseTask):
    name = "detection"
    monitor = "map50"
    voc_kind = "Main"
    sources = (*DenseTask.sources, "coco")  # your own boxes: a COCO JSON per split
    options = (
        *DENSE_OPTIONS,
        Key("match_iou", 0.5, float, bounds="(0, 1]",
            help="an anchor with IoU >= this also predicts that object"),
        Key("neg_ratio", 3.0, float, bounds="[0, inf)",
            help="hard negative mining: negatives per positive (softmax)"),
        Key("box_loss", "smooth_l1", str, ("smooth_l1", "l1"), help="the box regression loss"),
        Key("box_weight", 1.0, float, bounds="[0, inf)", help="box loss weight beside the class"),
        Key("score_threshold", 0.05, float, bounds="[0, 1]", help="detections kept for mAP"),
        Key("nms_iou", 0.45, float, bounds="(0, 1]", help="non-maximum suppression IoU"),
        Key("max_detections", 100, int, bounds="[1, inf)", help="detections kept per image"),
        Key("draw_threshold", 0.3, float, bounds="[0, 1]",
            help="detections drawn in TensorBoard and by predict"),
    )

    def loss(self, output, targets):
        anchors, cls_logits, box_offsets = output
        cls_target, box_target = B.detection_targets(anchors, targets["boxes"],
                                                     targets["labels"],
                                                     float(self.config["match_iou"]))
        box_loss = self.config["box_loss"]
        if cls_logits.shape[-1] == self.context.num_classes + 1:
            loc, cls = ssd_loss(cls_logits.float(), box_offsets.float(), cls_target, box_target,
                                float(self.config["neg_ratio"]), box_loss)
        else:
            loc, cls = focal_loss(cls_logits.float(), box_offsets.float(), cls_target,
                                  box_target, box_loss)
        return cls + float(self.config["box_weight"]) * loc

    def detect(self, output) -> list[dict]:
        anchors, cls_logits, box_offsets = output
        scores = B.scores_from_logits(cls_logits.float(), self.context.num_classes)
        c = self.config
        return B.detect(anchors, scores, box_offsets.float(),
                        float(c["score_threshold"]), float(c["nms_iou"]),
                        int(c["max_detections"]))

    def metrics(self):
        return {"map": MeanAP(self.detect, self.context.num_classes)}  # map50 and map

    def boxes_drawn(self, output, targets, n: int = 8) -> list[tuple]:
        """Of the first ``n`` images: ``(true boxes, their classes, the detections scoring at
        least draw_threshold, "class score")``, boxes in fractions of the image."""
        class_names = self.context.class_names
        dets = self.detect(tuple(o if i == 0 else o[:n] for i, o in enumerate(output)))
        threshold = float(self.config["draw_threshold"])
        drawn = []
        for i, d in enumerate(dets):
            d = {k: v.cpu() for k, v in d.items()}
            keep = d["scores"] >= threshold
            lab = targets["labels"][i].cpu()
            drawn.append((targets["boxes"][i].cpu()[lab >= 0],
                          [class_names[j] for j in lab[lab >= 0]], d["boxes"][keep],
                          [f"{class_names[j]} {s:.2f}" for j, s in
                           zip(d["labels"][keep], d["scores"][keep])]))
        return drawn

    def draw(self, images, output, targets, n: int = 8) -> list[torch.Tensor]:
        """uint8 pictures of the first ``n`` images: the true boxes (green, with the class) and
        the detections scoring at least ``draw_threshold`` (red, with class and score)."""
        n = min(n, images.shape[0])
        return [draw_boxes(images[i].cpu(), *drawn)
                for i, drawn in enumerate(self.boxes_drawn(output, targets, n))]

    def log_images(self, writer, step, images, output, targets) -> None:
        from torchvision.utils import make_grid

        writer.add_image("test/boxes", make_grid(torch.stack(self.draw(images, output, targets)),
                                                 nrow=4), step)

    def final_report(self, output_targets) -> dict:
        class_names = self.context.class_names
        predictions, truth = [], []
        for output, targets in output_targets:
            predictions += self.detect(output)
            for b, lab in zip(targets["boxes"], targets["labels"]):
                truth.append({"boxes": b[lab >= 0], "labels": lab[lab >= 0]})
        m = B.mean_average_precision(predictions, truth, self.context.num_classes,
                                     B.COCO_THRESHOLDS)
        ap50 = B.mean_average_precision(predictions, truth, self.context.num_classes, (0.5,))
        return {"map50": m["per_threshold"]["0.50"], "map": m["map"],
                "map75": m["per_threshold"]["0.75"],
                "per_class_ap50": {n: round(v, 4) for n, v in zip(class_names,
                                                                   ap50["per_class"])}}


def draw_boxes(image: torch.Tensor, true_boxes, true_names, pred_boxes, pred_names,
               scale: int = 2) -> torch.Tensor:
    """True boxes in green, predicted in red, on a ``scale``-times enlarged uint8 picture."""
    from torchvision.utils import draw_bounding_boxes

    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    h, w = image.shape[-2:]
    image = F.interpolate(image[None].float(), scale_factor=scale, mode="nearest")[0]
    image = image.to(torch.uint8)
    size = torch.tensor([w, h, w, h], dtype=torch.float32) * scale
    for boxes, names, colour in ((true_boxes, true_names, "lime"), (pred_boxes, pred_names, "red")):
        if len(boxes):
            boxes = boxes.float() * size
            # A raw prediction may have x1 < x0: draw the rectangle it spans.
            boxes = torch.cat((torch.minimum(boxes[:, :2], boxes[:, 2:]),
                               torch.maximum(boxes[:, :2], boxes[:, 2:])), 1)
            image = draw_bounding_boxes(image, boxes, names, colors=colour)
    return image
