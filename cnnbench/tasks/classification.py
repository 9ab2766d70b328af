"""Image classification on Fashion-MNIST: the task d2l's ``train_ch6`` trains every CNN on.

Loss: cross-entropy with optional label smoothing; with ``mixup``/``cutmix`` the training
targets are the two images' mixed one-hot rows (soft targets). Metrics: top-1 and top-5
accuracy (besides the trainer's mean loss). The test report adds a confusion matrix; TensorBoard gets a grid of
the misclassified test images, the true and predicted class written under each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnbench.data import augment
from cnnbench.data import transforms as T
from cnnbench.keys import Key
from cnnbench.tasks.base import Context, Task, channel_stats, normalisation
from cnnbench.tasks.metrics import Accuracy, TopK

# Fashion-MNIST training-set pixel statistics (on the [0, 1] scale).
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


class Classification(Task):
    """One label per image; ``output`` is ``[N, num_classes]`` logits."""

    name = "classification"
    monitor = "acc"
    sources = ("fashion-mnist", "imagefolder", "csv", "cifar10")
    options = (
        Key("label_smoothing", 0.0, float, bounds="[0, 1]",
            help="cross-entropy against (1 - e) one-hot + e / classes"),
        Key("normalize", True, bool, help="subtract the mean, divide by the std (per channel; see setup)"),
        Key("crop_padding", 0, int, bounds="[0, inf)",
            help="random crop after zero padding by this many pixels (28 px frame)"),
        Key("hflip", False, bool, help="random horizontal flip"),
        Key("random_erasing", 0.0, float, bounds="[0, 1]",
            help="probability of erasing one random rectangle"),
        *augment.KEYS,  # RandomResizedCrop, ColorJitter, auto-augment, crop_pct (v2)
    )

    @classmethod
    def setup(cls, config, data, info) -> Context:
        args = {}
        if "num_classes" in info.options or info.name.startswith("torchvision:"):
            args["num_classes"] = len(data.class_names)
        channels = int((config["input_size"] or info.input_size)[0])

        def own():
            if "channels" in data.info:  # the user's images (imagefolder, cifar10): their own
                return (*channel_stats(data.train.images), "the training images' own")
            # Fashion-MNIST: the published statistics, as the book's recipes use them
            return (FMNIST_MEAN,), (FMNIST_STD,), "Fashion-MNIST's published"

        mean, std, where = normalisation(config, channels, own)
        return Context(tuple(data.class_names), channels, mean, std, args, where)

    def __init__(self, config: dict, context: Context):
        super().__init__(config, context)
        # ``augment``'s transforms of a batch in memory, at the input size: {train: random, on
        # the device; eval: crop}; made here, not on the first batch, so that a compiled step
        # traces no lazy attribute (a cached_property's lock is a graph break).
        size = tuple((config.get("input_size") or (0, 0, 0))[-2:])
        self.transforms = {True: augment.OnDevice.from_config(config, size),
                           False: augment.eval_transform(config, size)}

    def prepare(self, images, targets, train: bool):
        c = self.config
        transform = self.transforms[train]
        if transform is not None and not self.streamed:  # a stream's workers ran these
            images = transform(images)
        x = T.to_float(images)
        if train:
            if c["crop_padding"]:
                x, _ = T.random_crop(x, int(c["crop_padding"]))
            if c["hflip"] and not self.streamed:  # a stream's workers flipped them
                x, _ = T.random_hflip(x)
        if c["input_size"]:
            x = T.resize(x, tuple(c["input_size"][-2:]))
        if self.context.channels != x.shape[1]:  # e.g. a colour torchvision model, grey images
            x = x.expand(-1, self.context.channels, -1, -1)
        if c["normalize"]:
            x = T.normalize(x, self.context.mean, self.context.std)
        if train and c["random_erasing"]:
            x = T.random_erasing(x, float(c["random_erasing"]))
        if train and (c["mixup"] or c["cutmix"]):
            soft = T.one_hot(targets, self.context.num_classes, x.dtype)
            x, targets = T.mix(x, soft, c["mixup"], c["cutmix"])
        return x, targets

    def loss(self, output, targets):
        return F.cross_entropy(output.float(), targets,
                               label_smoothing=float(self.config["label_smoothing"]))

    def metrics(self):
        return {"acc": Accuracy(), "top5": TopK(5)}

    def log_images(self, writer, step, images, output, targets) -> None:
        class_names = self.context.class_names
        pred = output.argmax(dim=1)
        wrong = (pred != targets).nonzero().flatten()[:32].cpu()
        if len(wrong) == 0:
            return
        pred, true = pred.cpu()[wrong].tolist(), targets.cpu()[wrong].tolist()
        captions = [[(f"true: {class_names[t]}", TRUE_COLOUR),
                     (f"pred: {class_names[p]}", PRED_COLOUR)] for t, p in zip(true, pred)]
        pictures = images[wrong.to(images.device)].cpu()
        writer.add_image("test/misclassified", labelled_grid(pictures, captions, nrow=8), step)
        lines = ["| # | true | predicted |", "|---|---|---|"]
        lines += [f"| {i} | {class_names[t]} | {class_names[p]} |"
                  for i, (t, p) in enumerate(zip(true, pred))]
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


TRUE_COLOUR, PRED_COLOUR = (0, 120, 0), (210, 0, 0)
TILE_PX, CAPTION_PX = 112, 12  # a 28 px image enlarged 4 times; 12 px text fits 17 characters


def labelled_grid(images: torch.Tensor, captions: list[list[tuple[str, tuple]]],
                  nrow: int = 8) -> torch.Tensor:
    """uint8 images ``[N, C, h, w]`` enlarged to about ``TILE_PX`` (nearest pixel), each with its
    caption lines ``(text, RGB colour)`` written under it; one float RGB picture (``T.grid``)."""
    scale = max(1, round(TILE_PX / images.shape[-1]))
    tiles = [captioned(image, lines, scale) for image, lines in zip(images, captions)]
    return T.grid(torch.stack(tiles), nrow=min(nrow, len(tiles)))


def captioned(image: torch.Tensor, lines: list[tuple[str, tuple]], scale: int) -> torch.Tensor:
    """One uint8 ``[C, h, w]`` image, ``scale`` times larger, over its caption lines on white:
    float ``[3, h*scale + lines, w*scale]`` in [0, 1]. Text wider than the tile ends in …"""
    from PIL import Image, ImageDraw, ImageFont  # Pillow comes with torchvision and matplotlib

    font = ImageFont.load_default(size=CAPTION_PX)  # Pillow's scalable font (FreeType)
    tile = image.expand(3, -1, -1).repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    width, height = tile.shape[2], tile.shape[1]
    line_px = CAPTION_PX + 3
    picture = Image.new("RGB", (width, height + line_px * len(lines) + 2), "white")
    picture.paste(Image.fromarray(tile.permute(1, 2, 0).contiguous().numpy()), (0, 0))
    draw = ImageDraw.Draw(picture)
    for i, (text, colour) in enumerate(lines):
        while draw.textlength(text, font=font) > width - 2 and len(text) > 1:
            text = text[:-2] + "…"
        draw.text((1, height + 1 + i * line_px), text, fill=colour, font=font)
    pixels = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8)
    return pixels.reshape(picture.height, picture.width, 3).permute(2, 0, 1).float() / 255
