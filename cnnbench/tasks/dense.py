"""What the dense tasks share: their data sources (scenes, voc), their context, the input batch.

Targets are a dict of tensors indexed like the images: ``boxes [N, M, 4]`` (pixels of the stored
image, xyxy) with ``labels [N, M]`` (``-1`` pads), ``masks [N, H, W]`` and ``multi_hot [N, C]``.
``prepare`` augments on the device (boxes and masks move with the pixels), then hands the loss
boxes in *fractions* of the image, masks resized to the model's input and ``multi_hot`` that
reflects what is still in view.
"""

from __future__ import annotations

from torch.nn import functional as F

from cnnbench.data import transforms as T
from cnnbench.data.dense_transforms import multi_hot, random_affine
from cnnbench.keys import Key
from cnnbench.tasks.base import Context, Task, channel_stats, normalisation

DENSE_OPTIONS = (
    Key("scenes", 10000, int, bounds="[1, inf)",
        help="Fashion-MNIST scenes drawn from the training images (train + val)"),
    Key("test_scenes", 2000, int, bounds="[1, inf)", help="scenes drawn from the test images"),
    Key("scene_size", 96, int, bounds="[8, inf)", help="canvas side in pixels"),
    Key("augment", True, bool,
        help="random affine (flip, scale, shift, rotation) with boxes and masks"),
    Key("flip", 0.5, float, bounds="[0, 1]", help="probability of a horizontal flip"),
    Key("scale_min", 0.85, float, bounds="(0, inf)", help="smallest random scale"),
    Key("scale_max", 1.15, float, bounds="(0, inf)", help="largest random scale"),
    Key("translate", 0.1, float, bounds="[0, 1]",
        help="largest shift, a fraction of the image side"),
    Key("degrees", 0.0, float, bounds="[0, 180]",
        help="largest rotation (boxes become the corners' enclosing box)"),
)


class DenseTask(Task):
    """Base of segmentation, detection, single-object and multi-label (not registered itself)."""

    sources = ("scenes", "voc")
    voc_kind = "Main"  # which VOC image sets: "Main" (boxes) or "Segmentation" (masks)
    options = DENSE_OPTIONS

    @classmethod
    def setup(cls, config, data, info) -> Context:
        wanted = config["input_size"] or list(info.input_size)
        data_channels = data.train.images.shape[1]
        # Colour data need a colour model; grey data are repeated for a colour model.
        channels = data_channels if data_channels == 3 else int(wanted[0])
        args = {}
        if "in_channels" in info.options:
            args["in_channels"] = channels
        if "num_classes" in info.options:
            args["num_classes"] = cls.model_classes(len(data.class_names))
        mean, std, where = normalisation(
            config, channels, lambda: (*channel_stats(data.train.images), "the training images' own"))
        return Context(tuple(data.class_names), channels, mean, std, args, where)

    @classmethod
    def model_classes(cls, num_classes: int) -> int:
        return num_classes

    # -- the input batch --

    def prepare(self, images, targets, train: bool):
        c = self.config
        targets = dict(targets)
        n, _, h, w = images.shape
        boxes, labels, masks = targets.get("boxes"), targets.get("labels"), targets.get("masks")
        x = images
        if train and c["augment"]:
            x, boxes, labels, masks = random_affine(
                images, boxes, labels, masks, flip=float(c["flip"]),
                scale=(float(c["scale_min"]), float(c["scale_max"])),
                translate=float(c["translate"]), degrees=float(c["degrees"]))
        x = T.to_float(x)
        size = tuple((c["input_size"] or [None, h, w])[-2:])
        x = T.resize(x, size)
        channels, mean, std = self.context.channels, self.context.mean, self.context.std
        if x.shape[1] != channels:
            x = x.expand(-1, channels, -1, -1)
            mean, std = mean * channels, std * channels
        x = T.normalize(x, mean[:x.shape[1]], std[:x.shape[1]])
        if boxes is not None:
            targets["boxes"] = boxes / boxes.new_tensor([w, h, w, h])
            targets["labels"] = labels
            if "multi_hot" in targets:
                targets["multi_hot"] = multi_hot(targets, targets["multi_hot"].shape[1])
        if masks is not None:
            if tuple(masks.shape[-2:]) != size:
                masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
            targets["masks"] = masks.long()
        return x, targets

