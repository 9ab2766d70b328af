"""Your own segmentation masks: ``masks:PATH`` with ``images/``, ``masks/`` and ``classes.txt``.

``PATH/images/NAME.<ext>`` (any image format ``imagefolder`` reads) goes with
``PATH/masks/NAME.png``, a grey PNG of class indices: 0 the background, 1..K the classes named
one per line in ``PATH/classes.txt`` (the background not listed), 255 void (ignored by the loss
and the metrics), as Pascal VOC's ``SegmentationClass`` PNGs hold them. Validation and test
images are held out of them as an image folder's are.

Refused in one line, before anything is decoded into the splits: an image without its mask (or
a mask without its image), a mask of another size than its image, a mask with a class index
beyond ``classes.txt``. Images are fitted to the input as an image folder's (Pillow's bilinear),
masks with the nearest pixel; the splits are kept in memory (a stream of image and mask pairs
is not built yet).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cnnbench.data import images
from cnnbench.data.dense_transforms import multi_hot
from cnnbench.data.imagefolder import HELD_OUT_FRACTION
from cnnbench.data.splits import DataBundle, Split, holdout, sample
from cnnbench.errors import CnnbenchError

VOID = 255
HINT = ("masks:PATH holds images/NAME.<ext>, masks/NAME.png (class indices: 0 background, "
        "255 void) and classes.txt (one class per line)")


def pairs(root: Path) -> tuple[list[str], list[Path], list[Path]]:
    """``(class names, image files, mask files)``, matched by name, sorted."""
    for part in ("images", "masks"):
        if not (root / part).is_dir():
            raise CnnbenchError(f"{root} has no {part}/ folder: {HINT}")
    if not (root / "classes.txt").is_file():
        raise CnnbenchError(f"{root} has no classes.txt: {HINT}")
    names = [line.strip() for line in (root / "classes.txt").read_text().splitlines()
             if line.strip()]
    found = {p.stem: p for p in (root / "images").iterdir()
             if p.suffix.lower() in images.EXTENSIONS and not p.name.startswith(".")}
    masks = {p.stem: p for p in (root / "masks").iterdir() if p.suffix.lower() == ".png"}
    for stem in sorted(found.keys() ^ masks.keys()):
        lacking, has = ("masks", found) if stem in found else ("images", masks)
        raise CnnbenchError(f"{has[stem]} has no counterpart in {root / lacking}/")
    if not found:
        raise CnnbenchError(f"{root / 'images'} has no images: {HINT}")
    stems = sorted(found)
    return names, [found[s] for s in stems], [masks[s] for s in stems]


def read_masks(image_files: list[Path], mask_files: list[Path], classes: int,
               size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[N, H, W]`` masks at ``size`` (nearest pixel), each checked against its image's
    size (from its header) and the class count."""
    from PIL import Image

    out = torch.zeros(len(mask_files), *size, dtype=torch.uint8)
    for i, (image_file, mask_file) in enumerate(zip(image_files, mask_files)):
        with Image.open(image_file) as image:
            image_size = image.size
        with Image.open(mask_file) as mask:
            if mask.size != image_size:
                raise CnnbenchError(f"mask {mask_file} is {mask.size[0]}x{mask.size[1]}, its "
                                    f"image {image_size[0]}x{image_size[1]}")
            values = np.array(mask.convert("L") if mask.mode not in ("L", "P") else mask)
        bad = values[(values > classes) & (values != VOID)]
        if bad.size:
            raise CnnbenchError(f"mask {mask_file} has class index {int(bad.max())}, beyond the "
                                f"{classes} classes of classes.txt (0 background, {VOID} void)")
        m = torch.from_numpy(values)[None, None].float()
        out[i] = F.interpolate(m, size=size, mode="nearest")[0, 0].to(torch.uint8)
    return out


def load_bundle(path: str | None, config: dict,
                say: Callable[[str], None] | None = None) -> DataBundle:
    """Train (less val and test, held out), val and test of the pairs under ``path``."""
    if not path:
        raise CnnbenchError(f"--data masks needs the folder: {HINT}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CnnbenchError(f"no masks folder at {root}: {HINT}")
    names, image_files, mask_files = pairs(root)
    size, channels = images.target_size(config), images.channel_request(config)
    masks = read_masks(image_files, mask_files, len(names), size)  # every check, first
    limit, val_size = config.get("limit"), int(config.get("val_size", 5000))
    everything = Split(torch.arange(len(image_files)), {"masks": masks})
    cap = max(1, len(everything) // HELD_OUT_FRACTION)
    train, val = holdout(everything, min(val_size, cap))
    train, test = holdout(train, min(val_size, cap) or cap)
    chosen = {s: sample(p, limit) for s, p in (("train", train), ("val", val), ("test", test))}
    rows = torch.cat([p.images for p in chosen.values()]).tolist()
    files = [str(image_files[i]) for i in rows]
    pixels, ok = images.decode_files(files, size, channels,  # at once: one channel count
                                     bool(config.get("skip_bad_images")), say)
    parts, start = {}, 0
    for split, part in chosen.items():
        at = slice(start, start + len(part))
        start += len(part)
        good = ok[at]
        targets = {"masks": part.targets["masks"][good]}
        targets["multi_hot"] = multi_hot(targets, len(names))
        parts[split] = Split(pixels[at][good], targets,
                             [f for f, g in zip(files[at], good.tolist()) if g])
    return DataBundle(parts["train"], parts["val"], parts["test"], names,
                      info={"source": f"masks:{path}", "channels": parts["train"].images.shape[1],
                            "files": len(image_files), "root": os.fspath(root)})
