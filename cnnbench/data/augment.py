"""Augmentation at real sizes for classification, from ``torchvision.transforms.v2``.

The keys (classification options) name torchvision's and timm's transforms:

- ``rrc_scale: [0.08, 1.0]`` and ``rrc_ratio``: ``RandomResizedCrop`` to the input size (off
  while ``rrc_scale`` is unset: the image is fitted whole, as before);
- ``color_jitter: 0.4``: ``ColorJitter`` of brightness, contrast and saturation by that much
  (timm's ``--color-jitter``);
- ``auto_augment``: ``TrivialAugmentWide``, ``RandAugment`` (2 ops, magnitude 9) or
  ``AutoAugment`` with its ImageNet policy;
- ``crop_pct: 0.875``: evaluation resizes the shorter side to ``size / crop_pct`` and takes the
  centre ``size`` crop (timm's name; unset: the image is fitted whole).

``random_erasing``, ``crop_padding`` and MixUp/CutMix stay batched on the device
(``transforms.py``) in either data mode, and so does ``hflip`` in memory. With ``data_mode:
stream`` the v2 transforms here run in the DataLoader workers on each decoded file at its own
size, one uint8 ``[C, H, W]`` image at a time (``stream.py``, each image seeded from the run's
seed, the epoch and its place in it). With the data in memory they run on the device on the
batch the trainer took (``OnDevice``): the crop and the colour jitter batched, every image
drawing its own parameters (``transforms.random_resized_crop``, ``transforms.color_jitter``,
each image as v2 would make it from the same draws); the auto-augment policies image by image
(v2's, one op per image out of 14 with its own magnitude: no batched form in torchvision).
"""

from __future__ import annotations

import torch

from cnnbench.data import transforms as T
from cnnbench.errors import CnnbenchError
from cnnbench.keys import Key

AUTO_AUGMENT = ("none", "trivialaugment", "randaugment", "autoaugment")

KEYS = (
    Key("rrc_scale", None, list, bounds="(0, 1]",
        help="RandomResizedCrop's area range, e.g. [0.08, 1.0] (unset: no random crop)"),
    Key("rrc_ratio", [0.75, 4 / 3], list, bounds="(0, inf)",
        help="RandomResizedCrop's aspect-ratio range"),
    Key("color_jitter", 0.0, float, bounds="[0, inf)",
        help="ColorJitter brightness, contrast and saturation (timm's --color-jitter)"),
    Key("auto_augment", "none", str, AUTO_AUGMENT,
        help="TrivialAugmentWide, RandAugment (2 ops, magnitude 9) or AutoAugment (ImageNet)"),
    Key("crop_pct", None, float, bounds="(0, 1]",
        help="eval: resize to size / crop_pct, centre crop (unset: fit the whole image)"),
)


def _pair(config: dict, key: str) -> tuple[float, float]:
    value = config[key]
    if len(value) != 2 or value[0] > value[1]:
        raise CnnbenchError(f"{key} takes [low, high] with low <= high, not {value}")
    return float(value[0]), float(value[1])


def _policy(config: dict):
    """The v2 auto-augment policy ``auto_augment`` names (None for ``none``)."""
    policy = config.get("auto_augment") or "none"
    if policy == "none":
        return None
    from torchvision.transforms import v2

    if policy == "trivialaugment":
        return v2.TrivialAugmentWide()
    if policy == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=9)
    return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)


def _random_steps(config: dict, size: tuple[int, int]) -> list:
    policy = _policy(config)
    if config.get("rrc_scale") is None and not config.get("color_jitter") and policy is None:
        return []  # without importing torchvision (a Fashion-MNIST run does not need it)
    from torchvision.transforms import v2

    steps = []
    if config.get("rrc_scale") is not None:
        steps.append(v2.RandomResizedCrop(size, scale=_pair(config, "rrc_scale"),
                                          ratio=_pair(config, "rrc_ratio"), antialias=True))
    jitter = float(config.get("color_jitter") or 0.0)
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if policy is not None:
        steps.append(policy)
    return steps


def train_transform(config: dict, size: tuple[int, int]):
    """v2's per-image random training transform to ``size`` (None when no key asks for one): what
    a stream's workers run after the fit, and the reference ``OnDevice`` is tested against."""
    steps = _random_steps(config, size)
    if not steps:
        return None
    from torchvision.transforms import v2

    return v2.Compose(steps)


def eval_transform(config: dict, size: tuple[int, int]):
    """Resize + centre crop with ``crop_pct`` (None when unset)."""
    crop_pct = config.get("crop_pct")
    if crop_pct is None:
        return None
    from torchvision.transforms import v2

    shorter = int(min(size) / float(crop_pct))  # timm: scale_size = floor(img_size / crop_pct)
    return v2.Compose([v2.Resize(shorter, antialias=True), v2.CenterCrop(size)])


def stream_transform(config: dict, size: tuple[int, int], train: bool):
    """A whole decoded file (any size) -> uint8 ``[C, *size]`` in a stream's workers, or None
    when no key asks for one (then the file is fitted as in memory, through Pillow). Training:
    the random crop (or the fit), ``hflip`` (here, not on the device: a batch flip in the
    trainer's process would take a core from the workers), then the colour transforms."""
    crop = eval_transform(config, size)
    steps = _random_steps(config, size) if train else []
    flip = train and bool(config.get("hflip"))
    if not steps and not flip:
        return crop
    from torchvision.transforms import v2

    if config.get("rrc_scale") is None:
        steps.insert(0, crop or v2.Resize(size, antialias=True))
    if flip:
        steps.insert(1, v2.RandomHorizontalFlip())
    return v2.Compose(steps)


# On the CPU, batching pays while the per-image overhead dominates (5.2x at 32 px, 1.15x at
# 64 px on one thread); above, v2's per-image uint8 kernels, working in cache, beat the batch's
# full-size float passes (0.42x at 112 px, 0.28x at 224 px: benchmarks/augment_batched.py).
CPU_BATCHED_UP_TO = 64 * 64  # pixels per image


class OnDevice:
    """The training transform of a uint8 batch in memory: each image its own random crop to
    ``size`` and its own colour jitter, batched on the device (one sequence of kernels for the
    batch, no per-image loop, nothing read on the host), then the auto-augment policy image by
    image. On the CPU, images larger than ``CPU_BATCHED_UP_TO`` pixels go through v2 image by
    image (``each``), which is faster there."""

    def __init__(self, size: tuple[int, int], scale=None, ratio=(3 / 4, 4 / 3),
                 jitter: float = 0.0, policy=None, each=None):
        self.size, self.scale, self.ratio = tuple(size), scale, ratio
        self.jitter, self.policy, self.each = jitter, policy, each

    @classmethod
    def from_config(cls, config: dict, size: tuple[int, int]) -> OnDevice | None:
        """The one ``config``'s keys ask for (None when none does)."""
        scale = None if config.get("rrc_scale") is None else _pair(config, "rrc_scale")
        jitter, policy = float(config.get("color_jitter") or 0.0), _policy(config)
        if scale is None and not jitter and policy is None:
            return None
        return cls(size, scale, _pair(config, "rrc_ratio"), jitter, policy,
                   each=train_transform(config, size))

    def batched(self, images: torch.Tensor) -> bool:
        """Whether a batch like ``images`` goes the batched way."""
        return (self.each is None or images.device.type != "cpu"
                or images.shape[-2] * images.shape[-1] <= CPU_BATCHED_UP_TO)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.batched(images):
            return torch.stack([self.each(image) for image in images])
        if self.scale is not None:
            images, _ = T.random_resized_crop(images, self.size, self.scale, self.ratio)
        if self.jitter:
            images = T.color_jitter(images, self.jitter)
        if self.policy is not None:
            images = torch.stack([self.policy(image) for image in images])
        return images
