"""Batch augmentations that move boxes and masks with the pixels (the lesson's point: the
dependent variable must be transformed with the image).

One random affine map per image (horizontal flip, scale, translation, a small rotation) is
applied with ``grid_sample`` on the training device: bilinear for the image, nearest for the
mask; box corners go through the same map and the box becomes their enclosing box, clipped to
the image. A box pushed (mostly) out of the image becomes padding (label ``-1``).
Boxes are pixel-edge xyxy. Square images are assumed for rotation.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def random_affine(images: torch.Tensor, boxes: torch.Tensor | None = None,
                  labels: torch.Tensor | None = None, masks: torch.Tensor | None = None, *,
                  flip: float = 0.5, scale=(0.8, 1.2), translate: float = 0.1,
                  degrees: float = 0.0, min_visible: float = 0.4,
                  generator: torch.Generator | None = None):
    """Augment a batch: ``images [N, C, H, W]`` (any dtype), ``boxes [N, M, 4]`` pixels with
    ``labels [N, M]``, ``masks [N, H, W]``. Returns ``(images, boxes, labels, masks)``.

    ``scale`` > 1 zooms in; ``translate`` is a fraction of the image side; ``degrees`` is the
    largest rotation either way.
    """
    n, _, h, w = images.shape
    dev = images.device

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator).to(dev)

    s = uniform(*scale)
    angle = uniform(-degrees, degrees) * math.pi / 180
    sign = torch.where(torch.rand(n, generator=generator).to(dev) < flip, -1.0, 1.0)
    t = torch.stack((uniform(-translate, translate), uniform(-translate, translate)), 1) * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    # In normalised coordinates (-1..1 across the image) an output point u reads the input at
    # v = A u + t, with A = rotation @ flip / scale.
    a = torch.stack((torch.stack((cos * sign, -sin), 1), torch.stack((sin * sign, cos), 1)), 1)
    a = a / s[:, None, None]
    theta = torch.cat((a, t[:, :, None]), 2)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    out = out.round().clamp(0, 255).to(images.dtype) if images.dtype == torch.uint8 else out
    if masks is not None:
        masks = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)[:, 0].to(masks.dtype)
    if boxes is not None:
        # inv_ex: inv's error check would wait for the device.
        boxes, labels = _move_boxes(boxes, labels, torch.linalg.inv_ex(a).inverse, t, w, h,
                                    min_visible)
    return out, boxes, labels, masks


def _move_boxes(boxes, labels, a_inv, t, w, h, min_visible):
    x0, y0, x1, y1 = boxes.unbind(-1)
    corners = torch.stack((torch.stack((x0, y0), -1), torch.stack((x1, y0), -1),
                           torch.stack((x0, y1), -1), torch.stack((x1, y1), -1)), 2)  # [N,M,4,2]
    size = boxes.new_tensor([w, h])
    v = corners / size * 2 - 1
    u = torch.einsum("nij,nmkj->nmki", a_inv, v - t[:, None, None, :])
    pix = (u + 1) / 2 * size
    moved = torch.cat((pix.min(2).values, pix.max(2).values), -1)
    clipped = torch.stack((moved[..., 0].clamp(0, w), moved[..., 1].clamp(0, h),
                           moved[..., 2].clamp(0, w), moved[..., 3].clamp(0, h)), -1)

    def area(b):
        return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)

    keep = (labels >= 0) & (area(clipped) >= min_visible * area(moved)) & (area(clipped) > 1)
    clipped = torch.where(keep[..., None], clipped, torch.zeros_like(clipped))
    return clipped, torch.where(keep, labels, torch.full_like(labels, -1))


def multi_hot(targets: dict, num_classes: int) -> torch.Tensor:
    """Which classes an image holds ``[N, num_classes]``: from its ``labels`` (``-1`` pads), or
    from its ``masks`` (0 background, 255 void) where there are no labels (VOC segmentation)."""
    if "labels" in targets:
        labels = targets["labels"]
        hot = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device)
        hot.scatter_(1, (labels + 1).clamp(min=0), 1.0)  # padding (-1) lands in column 0
        return hot[:, 1:]
    masks = targets["masks"].long()
    flat = masks.flatten(1)
    flat = torch.where(flat == 255, torch.zeros_like(flat), flat)
    hot = torch.zeros(masks.shape[0], num_classes + 1, device=masks.device)
    hot.scatter_(1, flat, 1.0)
    return hot[:, 1:]
