"""Your own segmentation masks: ``masks:PATH`` with ``images/``, ``masks/`` and ``classes.txt``.

``PATH/images/NAME.<ext>`` (any image format ``imagefolder`` reads) goes with
``PATH/masks/NAME.png``, a grey PNG of class indices: 0 the background, 1..K the classes named
one per line in ``PATH/classes.txt`` (the background not listed), 255 void (ignored by the loss
and the metrics), as Pascal VOC's ``SegmentationClass`` PNGs hold them. Validation and test
images are held out of them as an image folder's are. Split folders as an image folder's are
taken too: ``PATH/train/{images,masks}/`` with optional ``PATH/val/`` (or ``valid/``) and
``PATH/test/`` alike, ``classes.txt`` in ``PATH``; what is missing is held out of ``train/``.
``--limit`` samples each split stratified by the first class present, as for the scenes.

Refused in one line, before anything is decoded into the splits: an image without its mask (or
a mask without its image), a mask of another size than its image, a mask with a class index
beyond ``classes.txt``. Images are fitted to the input as an image folder's (Pillow's bilinear),
masks with the nearest pixel. ``data_mode`` decides as for an image folder: in memory, or
streamed (``stream.FileSplit``): the pairs are read batch by batch in the DataLoader workers, only
each image's class-presence vector stays in memory, and the batches are the same pixels and
masks as in memory (the dense augmentation runs batched on the device in both modes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cnnbench.data import images, stream
from cnnbench.data.dense_transforms import multi_hot
from cnnbench.data.imagefolder import HELD_OUT_FRACTION, SPLIT_FOLDERS
from cnnbench.data.splits import DataBundle, Split, holdout, sample
from cnnbench.errors import CnnbenchError

VOID = 255
HINT = ("masks:PATH holds images/NAME.<ext>, masks/NAME.png (class indices: 0 background, "
        "255 void) and classes.txt (one class per line), or classes.txt and train/ (val/, "
        "test/) each with images/ and masks/")


def class_names(root: Path) -> list[str]:
    if not (root / "classes.txt").is_file():
        raise CnnbenchError(f"{root} has no classes.txt: {HINT}")
    return [line.strip() for line in (root / "classes.txt").read_text().splitlines()
            if line.strip()]


def layout(root: Path) -> dict[str, Path]:
    """``{"train": folder[, "val": folder][, "test": folder]}``, each holding ``images/`` and
    ``masks/``: ``root`` itself, or its split folders (``imagefolder.SPLIT_FOLDERS``)."""
    if not (root / "train").is_dir():
        return {"train": root}
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                found.setdefault(split, root / name)
    return found


def pairs(folder: Path) -> tuple[list[Path], list[Path]]:
    """``(image files, mask files)`` of one folder, matched by name, sorted."""
    for part in ("images", "masks"):
        if not (folder / part).is_dir():
            raise CnnbenchError(f"{folder} has no {part}/ folder: {HINT}")
    found = {p.stem: p for p in (folder / "images").iterdir()
             if p.suffix.lower() in images.EXTENSIONS and not p.name.startswith(".")}
    masks = {p.stem: p for p in (folder / "masks").iterdir() if p.suffix.lower() == ".png"}
    for stem in sorted(found.keys() ^ masks.keys()):
        lacking, has = ("masks", found) if stem in found else ("images", masks)
        raise CnnbenchError(f"{has[stem]} has no counterpart in {folder / lacking}/")
    if not found:
        raise CnnbenchError(f"{folder / 'images'} has no images: {HINT}")
    stems = sorted(found)
    return [found[s] for s in stems], [masks[s] for s in stems]


def read_mask(mask_file: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """One mask PNG as uint8 ``[H, W]`` class indices at ``size`` (the nearest pixel)."""
    from PIL import Image

    with Image.open(mask_file) as mask:
        return _resized(_values(mask), size)


def _values(mask) -> np.ndarray:
    """A mask image's class indices (a palette PNG's indices as they are)."""
    return np.array(mask.convert("L") if mask.mode not in ("L", "P") else mask)


def _resized(values: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    m = torch.from_numpy(values)[None, None].float()
    return F.interpolate(m, size=size, mode="nearest")[0, 0].to(torch.uint8)


def read_masks(image_files: list[Path], mask_files: list[Path], classes: int,
               size: tuple[int, int], keep: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(uint8 [N, H, W] masks at size or None unless keep, float multi_hot [N, classes])``:
    every mask read once and checked against its image's size (from its header) and the class
    count; the class-presence vector is taken from the mask at ``size``, as the loss sees it."""
    from PIL import Image

    out = torch.zeros(len(mask_files), *size, dtype=torch.uint8) if keep else None
    present = torch.zeros(len(mask_files), classes)
    for i, (image_file, mask_file) in enumerate(zip(image_files, mask_files)):
        with Image.open(image_file) as image:
            image_size = image.size
        with Image.open(mask_file) as mask:
            if mask.size != image_size:
                raise CnnbenchError(f"mask {mask_file} is {mask.size[0]}x{mask.size[1]}, its "
                                    f"image {image_size[0]}x{image_size[1]}")
            values = _values(mask)
        bad = values[(values > classes) & (values != VOID)]
        if bad.size:
            raise CnnbenchError(f"mask {mask_file} has class index {int(bad.max())}, beyond the "
                                f"{classes} classes of classes.txt (0 background, {VOID} void)")
        resized = _resized(values, size)
        present[i] = multi_hot({"masks": resized[None]}, classes)[0]
        if keep:
            out[i] = resized
    return out, present


def load_bundle(path: str | None, config: dict,
                say: Callable[[str], None] | None = None) -> DataBundle:
    """Train (less val and test, held out), val and test of the pairs under ``path``."""
    if not path:
        raise CnnbenchError(f"--data masks needs the folder: {HINT}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CnnbenchError(f"no masks folder at {root}: {HINT}")
    names = class_names(root)
    size, channels = images.target_size(config), images.channel_request(config)
    image_files, mask_files, parts = [], [], {}
    for split, folder in layout(root).items():
        found, masks_here = pairs(folder)
        parts[split] = Split(torch.arange(len(image_files), len(image_files) + len(found)), {})
        image_files += found
        mask_files += masks_here
    limit, val_size = config.get("limit"), int(config.get("val_size", 5000))
    train = parts["train"]
    cap = max(1, len(train) // HELD_OUT_FRACTION)
    if "val" not in parts:
        train, parts["val"] = holdout(train, min(val_size, cap))
    if "test" not in parts:
        train, parts["test"] = holdout(train, min(val_size, cap) or cap)
    parts = {"train": train, "val": parts["val"], "test": parts["test"]}
    count = sum(len(p) if limit is None else min(limit, len(p)) for p in parts.values())
    keep = stream.choose_mode(config, count, size, channels, say or (lambda m: None)) == "memory"
    masks, present = read_masks(image_files, mask_files, len(names), size, keep)  # every check
    # --limit: stratified by the first class each image holds, as the other sources sample
    chosen = {s: sample(Split(p.images, {"multi_hot": present[p.images]}), limit)
              for s, p in parts.items()}
    info = {"source": f"masks:{path}", "files": len(image_files), "root": os.fspath(root)}
    if not keep:
        return _streamed(chosen, image_files, mask_files, present, names, size, channels,
                         config, info, say)
    rows = torch.cat([p.images for p in chosen.values()]).tolist()
    files = [str(image_files[i]) for i in rows]
    pixels, ok = images.decode_files(files, size, channels,  # at once: one channel count
                                     bool(config.get("skip_bad_images")), say)
    parts, start = {}, 0
    for split, part in chosen.items():
        at = slice(start, start + len(part))
        start += len(part)
        good = ok[at]
        kept = part.images[good]
        parts[split] = Split(pixels[at][good], {"masks": masks[kept], "multi_hot": present[kept]},
                             [f for f, g in zip(files[at], good.tolist()) if g])
    return DataBundle(parts["train"], parts["val"], parts["test"], names,
                      info={**info, "channels": parts["train"].images.shape[1]})


def _streamed(chosen: dict[str, Split], image_files: list[Path], mask_files: list[Path],
              present: torch.Tensor, names: list[str], size: tuple[int, int],
              channels: int | None, config: dict, info: dict,
              say: Callable[[str], None] | None) -> DataBundle:
    """The pairs as ``stream.FileSplit``s: images and masks read batch by batch in the workers,
    each image's class-presence vector (``multi_hot``) kept here."""
    paths = {s: [str(image_files[i]) for i in p.images.tolist()] for s, p in chosen.items()}
    channels = stream.data_channels([p for s in paths.values() for p in s], channels)
    parts = {s: stream.file_split(paths[s], {"multi_hot": present[p.images]}, size, channels,
                                  config, train=s == "train", say=say,
                                  masks=[str(mask_files[i]) for i in p.images.tolist()],
                                  read_mask=read_mask)
             for s, p in chosen.items()}
    return DataBundle(parts["train"], parts["val"], parts["test"], names,
                      info={**info, "channels": channels, "data_mode": "stream"})
