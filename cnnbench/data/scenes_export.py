"""The built-in scenes written as a user's own data: JPEG + COCO JSON, PNG images + masks.

``export(ROOT, ...)`` draws the scenes exactly as the ``scenes`` source does (``scenes.load_scenes``
with the same parameters, so the same cache) and writes

* ``ROOT/coco/``: ``train.json`` and ``test.json`` (COCO's instances layout: image ids from 1 in
  the scenes' order, category ids 1-10 for the Fashion-MNIST classes, ``bbox`` the tight box as
  ``[x, y, width, height]`` in pixels, ``iscrowd`` 0) and the images ``train/NNNNNN.jpg``,
  ``test/NNNNNN.jpg`` (grey JPEG at ``quality``, or PNG with ``image_format="png"``);
  ``--data coco:ROOT/coco/train.json`` reads it (``test.json`` is its sibling);
* ``ROOT/masks/``: ``classes.txt`` and ``train/`` and ``test/``, each with ``images/NNNNNN.png``
  and ``masks/NNNNNN.png`` (class indices, 0 the background); ``--data masks:ROOT/masks``.

Read back, both give the built-in source's own train / val / test images (the training scenes,
the validation split held out of them with the same seed, the test scenes) whenever ``val_size``
is at most a fifth of ``scenes`` (the file sources hold out at most a fifth) and no ``--limit``
is set (a quick run of the built-in source draws fewer scenes). Each format is written into a
hidden folder beside its place and renamed into place once whole; an existing ``ROOT/coco`` or
``ROOT/masks`` is refused before anything is drawn.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from cnnbench import files
from cnnbench.data import scenes
from cnnbench.errors import CnnbenchError

FORMATS = ("coco", "masks")
IMAGE_FORMATS = {"jpeg": ".jpg", "png": ".png"}
SPLITS = ("train", "test")


def coco_json(drawn: dict[str, torch.Tensor], split: str, suffix: str) -> dict:
    """One split's scenes as a COCO instances object (file names ``split/NNNNNN<suffix>``)."""
    n, _, height, width = drawn["images"].shape
    images, annotations = [], []
    for i in range(n):
        images.append({"id": i + 1, "file_name": f"{split}/{i:06d}{suffix}", "width": width,
                       "height": height})
        for box, label in zip(drawn["boxes"][i].tolist(), drawn["labels"][i].tolist()):
            if label < 0:
                continue
            x0, y0, x1, y1 = (round(v) for v in box)  # the scenes' boxes are pixel edges
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    categories = [{"id": k + 1, "name": name, "supercategory": "fashion-mnist"}
                  for k, name in enumerate(scenes.CLASS_NAMES)]
    return {"info": {"description": f"cnnbench Fashion-MNIST scenes, {split} split"},
            "images": images, "annotations": annotations, "categories": categories}


def _save_image(array, path: Path, quality: int) -> None:
    from PIL import Image

    with files.guarded(path):
        Image.fromarray(array).save(path, quality=quality) if path.suffix == ".jpg" \
            else Image.fromarray(array).save(path)


def _write_coco(drawn: dict[str, dict], folder: Path, image_format: str, quality: int) -> None:
    suffix = IMAGE_FORMATS[image_format]
    for split, scenes_of_split in drawn.items():
        (folder / split).mkdir()
        for i, image in enumerate(scenes_of_split["images"]):
            _save_image(image[0].numpy(), folder / split / f"{i:06d}{suffix}", quality)
        files.write_json(folder / f"{split}.json", coco_json(scenes_of_split, split, suffix),
                         indent=None)


def _write_masks(drawn: dict[str, dict], folder: Path, quality: int) -> None:
    files.write_text(folder / "classes.txt", "\n".join(scenes.CLASS_NAMES) + "\n")
    for split, scenes_of_split in drawn.items():
        for part in ("images", "masks"):
            (folder / split / part).mkdir(parents=True)
        for i, (image, mask) in enumerate(zip(scenes_of_split["images"],
                                              scenes_of_split["masks"])):
            _save_image(image[0].numpy(), folder / split / "images" / f"{i:06d}.png", quality)
            _save_image(mask.numpy(), folder / split / "masks" / f"{i:06d}.png", quality)


def export(root: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
           scenes_count: int = 10000, test_scenes: int = 2000, size: int = 96,
           formats: tuple[str, ...] = FORMATS, image_format: str = "jpeg",
           quality: int = 95) -> dict:
    """Write the scenes under ``root`` in each of ``formats``; what was written: per format
    its folder and the ``--data`` value that reads it."""
    root = Path(root).expanduser()
    for name in formats:
        if name not in FORMATS:
            raise CnnbenchError(f"export format {name!r} is not one of {', '.join(FORMATS)}")
    if image_format not in IMAGE_FORMATS:
        raise CnnbenchError(f"image format {image_format!r} is not one of "
                            f"{', '.join(IMAGE_FORMATS)}")
    if not 1 <= quality <= 100:
        raise CnnbenchError(f"JPEG quality {quality} is not within 1-100")
    if scenes_count < 1 or test_scenes < 1 or size < 8:
        raise CnnbenchError(f"{scenes_count} training and {test_scenes} test scenes of {size} "
                            "pixels: at least 1, 1 and 8 are needed")
    files.check_folder(root)
    for name in formats:
        if (root / name).exists():
            raise CnnbenchError(f"{root / name} exists: remove it or export to another folder")
    drawn = {split: scenes.load_scenes(scenes.SceneParams(split=split, count=count, size=size),
                                       data_dir, strict_count=False)
             for split, count in zip(SPLITS, (scenes_count, test_scenes))}
    written = {"scenes": scenes_count, "test_scenes": test_scenes, "size": size}
    with files.guarded(root):
        root.mkdir(parents=True, exist_ok=True)
    for name in formats:
        aside = root / f".{name}.tmp-{os.getpid()}"
        try:
            with files.guarded(aside):
                shutil.rmtree(aside, ignore_errors=True)
                aside.mkdir()
                if name == "coco":
                    _write_coco(drawn, aside, image_format, quality)
                else:
                    _write_masks(drawn, aside, quality)
                os.replace(aside, root / name)
        finally:
            shutil.rmtree(aside, ignore_errors=True)
        data = root / name / "train.json" if name == "coco" else root / name
        written[name] = {"folder": os.fspath(root / name), "data": f"{name}:{data}"}
    return written
