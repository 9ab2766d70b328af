"""Pascal VOC 2007 (the fast.ai lesson's data set) from a local ``VOCdevkit``, never downloaded.

Read through torchvision's ``VOCDetection`` / ``VOCSegmentation`` with ``download=False`` and
resized once to a square ``size`` (boxes scaled with the pixels), then kept in memory as uint8
tensors like every other cnnbench data set. ``--data voc:PATH`` points at the folder holding
``VOCdevkit``, at ``VOCdevkit`` itself or at ``VOCdevkit/VOC2007``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from cnnbench.errors import CnnbenchError

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"]
VOID = 255  # the outline label in SegmentationClass PNGs: ignored by the loss and metrics
HINT = ("unpack VOCtrainval_06-Nov-2007.tar (and VOCtest_06-Nov-2007.tar) there, so that "
        "VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets,SegmentationClass} exist")


def find_root(path: str | Path) -> Path:
    """The folder that holds ``VOCdevkit`` (what torchvision's readers take as ``root``)."""
    path = Path(path).expanduser()
    for root in (path, path.parent, path.parent.parent):
        if (root / "VOCdevkit" / "VOC2007" / "JPEGImages").is_dir():
            return root
    raise CnnbenchError(f"no Pascal VOC 2007 at {path}: {HINT}")


def _image_sets(root: Path, kind: str) -> set[str]:
    folder = root / "VOCdevkit" / "VOC2007" / "ImageSets" / kind
    return {p.stem for p in folder.glob("*.txt")}


def _resize_image(pil, size: int) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    x = pil_to_tensor(pil.convert("RGB"))[None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)[0]


def load_detection(path: str | Path, image_set: str, size: int, limit: int | None = None):
    """``(images uint8 [N, 3, size, size], {"boxes" [N, M, 4] pixels, "labels" [N, M]})``.

    Objects marked ``difficult`` are left out (VOC's evaluation ignores them); ``-1`` pads.
    """
    from torchvision.datasets import VOCDetection

    root = find_root(path)
    if image_set not in _image_sets(root, "Main"):
        raise CnnbenchError(f"{root}/VOCdevkit/VOC2007 has no ImageSets/Main/{image_set}.txt: {HINT}")
    try:
        ds = VOCDetection(str(root), year="2007", image_set=image_set, download=False)
    except RuntimeError as exc:
        raise CnnbenchError(f"cannot read Pascal VOC at {root} ({exc}): {HINT}") from None
    n = len(ds) if limit is None else min(limit, len(ds))
    images, all_boxes, all_labels = [], [], []
    for i in range(n):
        pil, target = ds[i]
        ann = target["annotation"]
        w, h = float(ann["size"]["width"]), float(ann["size"]["height"])
        boxes, labels = [], []
        for obj in ann.get("object", []):
            if obj.get("difficult", "0") == "1":
                continue
            b = obj["bndbox"]
            # VOC pixel indices are 1-based and inclusive: xmin-1 .. xmax are the pixel edges.
            x0, y0 = float(b["xmin"]) - 1, float(b["ymin"]) - 1
            x1, y1 = float(b["xmax"]), float(b["ymax"])
            boxes.append([x0 * size / w, y0 * size / h, x1 * size / w, y1 * size / h])
            labels.append(VOC_CLASSES.index(obj["name"]))
        images.append(_resize_image(pil, size))
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labels, dtype=torch.int64))
    m = max([len(lab) for lab in all_labels] + [1])
    boxes = torch.zeros(n, m, 4)
    labels = torch.full((n, m), -1, dtype=torch.int64)
    for i, (b, lab) in enumerate(zip(all_boxes, all_labels)):
        boxes[i, :len(lab)] = b
        labels[i, :len(lab)] = lab
    return torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8), \
        {"boxes": boxes, "labels": labels}


def load_segmentation(path: str | Path, image_set: str, size: int, limit: int | None = None):
    """``(images uint8 [N, 3, size, size], {"masks" uint8 [N, size, size]})``: 0 background,
    1-20 the classes, 255 void (nearest-neighbour resizing keeps the labels)."""
    import numpy as np
    from torchvision.datasets import VOCSegmentation

    root = find_root(path)
    if image_set not in _image_sets(root, "Segmentation"):
        raise CnnbenchError(f"{root}/VOCdevkit/VOC2007 has no ImageSets/Segmentation/"
                            f"{image_set}.txt: {HINT}")
    try:
        ds = VOCSegmentation(str(root), year="2007", image_set=image_set, download=False)
    except RuntimeError as exc:
        raise CnnbenchError(f"cannot read Pascal VOC at {root} ({exc}): {HINT}") from None
    n = len(ds) if limit is None else min(limit, len(ds))
    images, masks = [], []
    for i in range(n):
        pil, target = ds[i]
        images.append(_resize_image(pil, size))
        m = torch.from_numpy(np.array(target, dtype=np.uint8))[None, None].float()
        masks.append(F.interpolate(m, size=(size, size), mode="nearest")[0, 0].to(torch.uint8))
    if not images:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8), \
            {"masks": torch.zeros(0, size, size, dtype=torch.uint8)}
    return torch.stack(images), {"masks": torch.stack(masks)}


def splits(path: str | Path, kind: str) -> tuple[str, str]:
    """(training image set, test image set) for ``kind`` "Main" or "Segmentation": VOC 2007's
    test set when it is unpacked, else its val set."""
    sets = _image_sets(find_root(path), kind)
    train = "trainval" if "test" in sets and "trainval" in sets else "train"
    return train, ("test" if "test" in sets else "val")
