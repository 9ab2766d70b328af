"""Boxes for detection: match ground truth to anchors, encode/decode offsets, detect, mAP.

Boxes are (xmin, ymin, xmax, ymax). Anchors and the detection targets use image fractions;
``mean_average_precision`` works in whatever unit its inputs share. Ground truth comes padded:
``boxes [N, M, 4]`` with ``labels [N, M]`` where ``-1`` marks padding.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

# torchvision.ops is imported where it is used (NMS, mAP): importing it imports torch._dynamo,
# seconds of start-up that a classification run, whose metrics import this module, never needs.

# SSD's "variances": offsets are divided by these so that they have about unit spread.
CENTER_VARIANCE, SIZE_VARIANCE = 0.1, 0.2


def to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), -1)


def to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)


def batched_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a [..., P, 4]`` with every box in ``b [..., Q, 4]``: ``[..., P, Q]``
    (the leading dimensions broadcast: ``a [P, 4]`` against ``b [N, Q, 4]`` gives ``[N, P, Q]``)."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    # One coordinate at a time: far faster on the CPU than on [..., P, Q, 2] views.
    ax0, ay0, ax1, ay1 = (a[..., :, None, k] for k in range(4))
    bx0, by0, bx1, by1 = (b[..., None, :, k] for k in range(4))
    inter = ((torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0)
             * (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0))
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return inter / union.clamp(min=1e-9)


def paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a[i]`` with ``b[i]``; a box with x1 < x0 (or y1 < y0) has no area."""
    return batched_box_iou(a[..., None, :], b[..., None, :])[..., 0, 0]


def match(anchors: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
          threshold: float = 0.5) -> torch.Tensor:
    """For each anchor, the index of the ground-truth box it must predict, or -1 (background).

    ``anchors [A, 4]``, ``gt_boxes [N, M, 4]``, ``gt_labels [N, M]`` (``-1`` = padding) ->
    ``[N, A]``. First every object gets an anchor of its own: repeatedly take the largest IoU
    left in the (anchor, object) table and retire its row and column (so two objects never
    compete for one anchor); then every other anchor whose best IoU reaches ``threshold`` takes
    that object (SSD's matching, as in the fast.ai lesson and d2l).

    The whole batch at once on the device, with no host synchronisation: the greedy step runs
    ``M`` times (the padded object count), each on every image; among equal IoUs the first
    (anchor, object) pair in row-major order wins.
    """
    n, m = gt_labels.shape
    valid = gt_labels >= 0
    iou = batched_box_iou(anchors, gt_boxes)  # [N, A, M]
    iou = iou.masked_fill(~valid[:, None, :], -1.0)
    best_iou, best_gt = iou.max(dim=2)
    matched = torch.where(best_iou >= threshold, best_gt, torch.full_like(best_gt, -1))

    table = iou.clone()
    rows = torch.arange(n, device=anchors.device)
    for _ in range(m):
        flat = table.flatten(1).argmax(1)
        a, j = flat // m, flat % m
        ok = table[rows, a, j] >= 0  # padding columns hold -1; retired entries hold -2
        matched[rows, a] = torch.where(ok, j, matched[rows, a])
        table[rows, a, :] = -2.0
        table[rows, :, j] = -2.0
    return matched


def encode(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Offsets that move ``anchors`` onto ``boxes`` (both ``[..., 4]`` xyxy): SSD's encoding."""
    a, b = to_cxcywh(anchors), to_cxcywh(boxes)
    return torch.cat(((b[..., :2] - a[..., :2]) / (a[..., 2:] * CENTER_VARIANCE),
                      torch.log(b[..., 2:].clamp(min=1e-6) / a[..., 2:]) / SIZE_VARIANCE), -1)


def decode(anchors: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`encode`: predicted offsets -> xyxy boxes."""
    a = to_cxcywh(anchors)
    centre = a[..., :2] + offsets[..., :2] * CENTER_VARIANCE * a[..., 2:]
    size = a[..., 2:] * torch.exp((offsets[..., 2:] * SIZE_VARIANCE).clamp(max=8.0))
    return to_xyxy(torch.cat((centre, size), -1))


def detection_targets(anchors, gt_boxes, gt_labels, threshold: float = 0.5):
    """Per anchor: class target ``[N, A]`` (0 background, 1..C objects) and offsets ``[N, A, 4]``."""
    matched = match(anchors, gt_boxes, gt_labels, threshold)
    pos = matched >= 0
    idx = matched.clamp(min=0)
    rows = torch.arange(len(idx), device=idx.device)[:, None]
    cls_target = torch.where(pos, gt_labels[rows, idx] + 1, 0)
    boxes = gt_boxes[rows, idx]
    return cls_target, encode(anchors, boxes)  # anchors [A, 4] broadcast over the images


def scores_from_logits(cls_logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class scores ``[N, A, C]``: with ``C + 1`` columns the logits are SSD's softmax over
    background (column 0) and the classes; with ``C`` columns, RetinaNet's sigmoid per class."""
    if cls_logits.shape[-1] == num_classes + 1:
        return cls_logits.softmax(-1)[..., 1:]
    return cls_logits.sigmoid()


def detect(anchors: torch.Tensor, scores: torch.Tensor, box_offsets: torch.Tensor,
           score_threshold: float = 0.05, nms_iou: float = 0.45, max_detections: int = 100,
           pre_nms: int = 1000) -> list[dict[str, torch.Tensor]]:
    """Decode, drop low scores, run per-class NMS; one dict (boxes, scores, labels 0..C-1) per image.

    ``scores [N, A, C]`` are probabilities per object class (no background column).
    """
    from torchvision.ops import batched_nms

    boxes = decode(anchors, box_offsets).clamp(0, 1)
    num_classes = scores.shape[-1]
    results = []
    for img_boxes, img_scores in zip(boxes, scores):
        flat = img_scores.flatten()
        keep = flat > score_threshold
        cand = torch.nonzero(keep).squeeze(1)
        if cand.numel() > pre_nms:
            cand = cand[flat[cand].topk(pre_nms).indices]
        anchor_idx, labels = cand // num_classes, cand % num_classes
        b, s = img_boxes[anchor_idx], flat[cand]
        kept = batched_nms(b, s, labels, nms_iou)[:max_detections]
        results.append({"boxes": b[kept], "scores": s[kept], "labels": labels[kept]})
    return results


# COCO's 101 recall points exactly as pycocotools makes them: torch.linspace(0, 1, 101) differs in
# the last bit at 10 of them (its 0.7 is 7/10, COCO's is one bit above), which moves a point past
# a detection reaching recall exactly 0.7 and changes that class's AP by up to 1/101.
COCO_RECALL_POINTS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)


def _float64(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def average_precision(tp, scores, num_gt: int, method: str = "coco") -> float:
    """AP of one class from its detections (``tp`` 1/0 per detection) and their ``scores``.

    ``coco``: mean of the interpolated precision at COCO's 101 recall points 0, 0.01, ..., 1,
    computed as pycocotools' ``COCOeval.accumulate`` does (same points, same ``eps`` in the
    precision, same search, same summation), so the figures agree to the last bit;
    ``voc``: area under the interpolated precision-recall curve (all points, VOC 2010+).
    Interpolated precision at recall r is the best precision at any recall >= r.
    Takes tensors or arrays.
    """
    if num_gt == 0:
        return float("nan")
    tp, scores = _float64(tp), _float64(scores)
    tp = tp[np.argsort(-scores, kind="mergesort")]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / num_gt
    if method == "voc":
        precision = ctp / (ctp + cfp)  # never 0/0: the k-th detection makes k in the sum
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        return float(np.sum(np.diff(recall, prepend=0.0) * envelope))
    precision = ctp / (ctp + cfp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    # For each recall point, the first detection reaching it (or none: precision 0).
    idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    q = np.zeros(len(COCO_RECALL_POINTS))
    found = idx < len(recall)
    q[found] = envelope[idx[found]]
    return float(np.mean(q))


def mean_average_precision(predictions: list[dict], ground_truth: list[dict], num_classes: int,
                           iou_thresholds=(0.5,), method: str = "coco") -> dict:
    """mAP over classes (those with ground truth) and the given IoU thresholds.

    ``predictions[i]``: boxes ``[P, 4]``, scores ``[P]``, labels ``[P]``; ``ground_truth[i]``:
    boxes ``[G, 4]``, labels ``[G]``. In each image, the detections of a class, by falling
    score, each take the not yet taken ground truth of that class with the highest IoU if that
    IoU reaches the threshold (true positive), else count as false positives (COCO's greedy
    matching). The precision-recall curve of a class then runs over all images by score.
    Returns ``{"map": ..., "per_class": [...], "per_threshold": {"0.50": ...}}``.
    """
    from torchvision.ops import box_iou

    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    tps = [[[] for _ in range(num_classes)] for _ in thresholds]
    scores = [[] for _ in range(num_classes)]
    num_gt = np.zeros(num_classes, dtype=np.int64)
    for pred, gt in zip(predictions, ground_truth):
        p_labels, g_labels = pred["labels"].cpu().numpy(), gt["labels"].cpu().numpy()
        p_scores = pred["scores"].detach().cpu().double().numpy()
        for c in np.union1d(np.unique(p_labels), np.unique(g_labels)):
            c = int(c)
            if c < 0 or c >= num_classes:
                continue
            pi, gi = np.nonzero(p_labels == c)[0], np.nonzero(g_labels == c)[0]
            num_gt[c] += len(gi)
            if len(pi) == 0:
                continue
            pi = pi[np.argsort(-p_scores[pi], kind="stable")]
            scores[c].append(p_scores[pi])
            iou = (box_iou(pred["boxes"][pi].double().cpu(), gt["boxes"][gi].double().cpu())
                   .numpy() if len(gi) else np.zeros((len(pi), 0)))
            for t, thr in enumerate(thresholds):
                taken = np.zeros(len(gi), dtype=bool)
                tp = np.zeros(len(pi))
                for k in range(len(pi)):
                    row = np.where(taken, -1.0, iou[k])
                    if len(row) and row.max() >= thr:
                        # Among equal IoUs the last object wins, as in COCOeval.evaluateImg.
                        taken[len(row) - 1 - row[::-1].argmax()] = True
                        tp[k] = 1
                tps[t][c].append(tp)
    table = np.full((len(thresholds), num_classes), np.nan)
    for c in range(num_classes):
        s = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        for t in range(len(thresholds)):
            tp = np.concatenate(tps[t][c]) if tps[t][c] else np.zeros(0)
            table[t, c] = average_precision(tp, s, int(num_gt[c]), method)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an all-NaN column
        per_class = np.nanmean(table, 0)
        per_threshold = {f"{thr:.2f}": float(np.nanmean(table[t]))
                         for t, thr in enumerate(thresholds)}
        overall = float(np.nanmean(table))
    return {"map": overall, "per_class": [float(v) for v in per_class],
            "per_threshold": per_threshold}


COCO_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
