"""What the dense tasks share: their data (Fashion-MNIST scenes or Pascal VOC) and the input batch.

Targets are a dict of tensors indexed like the images: ``boxes [N, M, 4]`` (pixels of the stored
image, xyxy) with ``labels [N, M]`` (``-1`` pads), ``masks [N, H, W]`` and ``multi_hot [N, C]``.
``prepare`` augments on the device (boxes and masks move with the pixels), then hands the loss
boxes in *fractions* of the image, masks resized to the model's input and ``multi_hot`` that
reflects what is still in view.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from cnnbench.data import transforms as T
from cnnbench.data.dense_transforms import random_affine
from cnnbench.data.splits import head, holdout
from cnnbench.tasks.base import DataBundle, Split, Task

DENSE_OPTIONS = {
    "scenes": 10000,        # Fashion-MNIST scenes drawn from the training images (train + val)
    "test_scenes": 2000,    # scenes drawn from the test images
    "scene_size": 96,       # canvas side in pixels
    "augment": True,        # random affine (flip, scale, shift, rotation) with boxes and masks
    "flip": 0.5,            # probability of a horizontal flip
    "scale_min": 0.85,
    "scale_max": 1.15,
    "translate": 0.1,       # largest shift, a fraction of the image side
    "degrees": 0.0,         # largest rotation (boxes become the corners' enclosing box)
}


class DenseTask(Task):
    """Base of segmentation, detection, single-object and multi-label (not registered itself)."""

    voc_kind = "Main"  # which VOC image sets: "Main" (boxes) or "Segmentation" (masks)
    options = DENSE_OPTIONS

    def __init__(self, config: dict):
        super().__init__(config)
        self.mean, self.std = [0.5], [0.5]
        self.channels = None  # the model's input channels, fixed in model_args
        self.num_classes = None

    # -- data --

    def load_data(self) -> DataBundle:
        c = self.config
        data = c.get("data")
        val_size = int(c.get("val_size", 1000))
        if data and str(data).startswith("voc:"):
            bundle = self._load_voc(str(data)[4:], val_size)
        else:
            bundle = self._load_scenes(data, val_size)
        images = bundle.train.images[:2000].float() / 255
        self.mean = images.mean((0, 2, 3)).tolist()
        self.std = images.std((0, 2, 3)).clamp(min=1e-3).tolist()
        bundle.info.update(mean=self.mean, std=self.std)
        return bundle

    def _load_scenes(self, data_dir, val_size) -> DataBundle:
        from cnnbench.data.scenes import CLASS_NAMES, SceneParams, load_scenes

        c = self.config
        size = int(c.get("scene_size", 96))
        limit = c.get("limit")
        train_count, test_count = int(c.get("scenes", 10000)), int(c.get("test_scenes", 2000))
        if limit is not None:  # a quick run draws only what it will use
            train_count = min(train_count, 2 * limit + min(val_size, limit))
            test_count = min(test_count, limit)
        splits = []
        for split, count in (("train", train_count), ("test", test_count)):
            params = SceneParams(split=split, count=count, size=size)
            scenes = load_scenes(params, data_dir)
            targets = {k: scenes[k] for k in ("boxes", "labels", "masks", "multi_hot")}
            splits.append(Split(scenes["images"], targets))
        train, val = holdout(splits[0], val_size)
        return DataBundle(head(train, limit), head(val, limit), head(splits[1], limit),
                          list(CLASS_NAMES), info={"source": "fashion-mnist scenes",
                                                   "scene_size": size})

    def _load_voc(self, path, val_size) -> DataBundle:
        from cnnbench.data import voc

        c = self.config
        size = int(c["input_size"][-1]) if c.get("input_size") else 224
        limit = c.get("limit")
        train_set, test_set = voc.splits(path, self.voc_kind)
        load = voc.load_detection if self.voc_kind == "Main" else voc.load_segmentation
        per_split = None if limit is None else 2 * limit + min(val_size, limit)
        train = Split(*load(path, train_set, size, per_split))
        test = Split(*load(path, test_set, size, limit))
        for split in (train, test):
            split.targets["multi_hot"] = _multi_hot(split.targets, len(voc.VOC_CLASSES))
        train, val = holdout(train, val_size)
        return DataBundle(head(train, limit), head(val, limit), head(test, limit),
                          list(voc.VOC_CLASSES), info={"source": f"voc:{path}"})

    def model_args(self, info, data: DataBundle) -> dict:
        self.num_classes = len(data.class_names)
        wanted = self.config.get("input_size") or list(info.input_size)
        data_channels = data.train.images.shape[1]
        # Colour data need a colour model; grey data are repeated for a colour model.
        self.channels = data_channels if data_channels == 3 else int(wanted[0])
        args = {}
        if "in_channels" in info.options:
            args["in_channels"] = self.channels
        if "num_classes" in info.options:
            args["num_classes"] = self.model_classes()
        return args

    def model_classes(self) -> int:
        return self.num_classes

    # -- the input batch --

    def prepare(self, images, targets, train: bool):
        c = self.config
        targets = dict(targets)
        n, _, h, w = images.shape
        boxes, labels, masks = targets.get("boxes"), targets.get("labels"), targets.get("masks")
        x = images
        if train and c.get("augment", True):
            x, boxes, labels, masks = random_affine(
                images, boxes, labels, masks, flip=float(c.get("flip", 0.5)),
                scale=(float(c.get("scale_min", 0.85)), float(c.get("scale_max", 1.15))),
                translate=float(c.get("translate", 0.1)), degrees=float(c.get("degrees", 0.0)))
        x = T.to_float(x)
        size = tuple((c.get("input_size") or [None, h, w])[-2:])
        x = T.resize(x, size)
        if self.channels and x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
            mean, std = self.mean * self.channels, self.std * self.channels
        else:
            mean, std = self.mean, self.std
        x = T.normalize(x, mean[:x.shape[1]], std[:x.shape[1]])
        if boxes is not None:
            targets["boxes"] = boxes / boxes.new_tensor([w, h, w, h])
            targets["labels"] = labels
            if "multi_hot" in targets:
                targets["multi_hot"] = _multi_hot(targets, targets["multi_hot"].shape[1])
        if masks is not None:
            if tuple(masks.shape[-2:]) != size:
                masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
            targets["masks"] = masks.long()
        return x, targets


def _multi_hot(targets: dict, num_classes: int) -> torch.Tensor:
    """Which classes a scene holds: from its labels, or from its mask (VOC segmentation)."""
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

