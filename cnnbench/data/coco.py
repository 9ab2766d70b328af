"""COCO JSON boxes: ``coco:ANNOTATIONS.json[,IMAGES_DIR]`` for the box tasks.

The file is COCO's object-detection layout (``instances_train2017.json``): ``images`` (``id``,
``file_name`` under ``IMAGES_DIR``, default the JSON's own folder, ``width``, ``height``),
``annotations`` (``image_id``, ``category_id``, ``bbox`` ``[x, y, width, height]`` in pixels of
the original image, optional ``iscrowd``) and ``categories`` (``id``, ``name``). Detection gets
every box, single-object the largest (``largest_object``, as for VOC and the scenes),
multi-label the classes present; the targets are VOC's (``voc.py``): ``boxes [N, M, 4]`` xyxy
pixels of the stored image, ``labels [N, M]`` (``-1`` pads), ``multi_hot [N, C]``.

* Classes: ``categories`` sorted by id (ids need not be contiguous: they are mapped to 0..C-1).
* Images: sorted by id (as torchvision's ``CocoDetection``), fitted to the model's input as an
  image folder's (``images.py``: Pillow's bilinear, no crop), boxes scaled with them; in memory
  (decoded once and cached from ``CACHE_FROM`` images) or streamed from the files in DataLoader
  workers, as ``data_mode`` decides for an image folder (``imagefolder.files_bundle``; the boxes
  stay in memory, the dense augmentation runs on the device in both modes).
* Splits: COCO ships a JSON per split. The file named trains; the test split is a sibling JSON
  whose name has ``test`` (else ``val``) for the last ``train`` (``instances_val2017.json``
  beside ``instances_train2017.json``), its images in ``IMAGES_DIR`` named the same way when
  that folder exists (``val2017/`` beside ``train2017/``), else in ``IMAGES_DIR``; or the
  ``coco_test`` key's ``TEST.json[,IMAGES_DIR]``. Where both a ``test`` and a ``val`` sibling
  exist, the ``val`` one is the validation split. What is missing is held out of the training
  images as an image folder's is (``val_size``, at most a fifth; said on one line for a test
  split), so that scenes exported with ``scenes_export.py`` give back the built-in source's own
  train / val / test images whenever ``val_size`` is at most a fifth of ``scenes``.
* ``iscrowd: 1`` annotations are ignored, as torchvision's detection references do; so are
  boxes of zero width or height (the references keep only ``x1 > x0`` and ``y1 > y0``); each is
  counted on one line. An image with no box is kept (an image of background for detection, no
  class for multi-label) except for single-object, which needs one (left out, counted).

Refused in one line, before any image is decoded: a file that is not JSON, or lacks
``images``, ``annotations`` or ``categories``; an entry without its fields or with fields of the
wrong kind; an image id or category id given twice; an image whose file is missing or whose
file is not the size the JSON says; an annotation naming an image id not in ``images`` or a
category id not in ``categories``; a box with a negative width or height, or reaching outside
its image (by more than ``EDGE_SLACK`` pixels: real COCO boxes pass the edge by a rounding,
which is clamped); a test JSON whose categories differ from the training JSON's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from cnnbench.data import imagefolder
from cnnbench.data.dense_transforms import multi_hot
from cnnbench.data.images import target_size
from cnnbench.data.splits import DataBundle, Split
from cnnbench.errors import CnnbenchError, shown
from cnnbench.keys import Key, declare

KEYS = declare(
    Key("coco_test", None, str, help="coco: the test split's TEST.json[,IMAGES_DIR] (default: "
                                     "the training JSON's name with test or val for train)"),
)

HINT = ("coco:ANNOTATIONS.json[,IMAGES_DIR]: COCO's instances JSON with images (id, file_name, "
        "width, height), annotations (image_id, category_id, bbox [x, y, width, height] in "
        "pixels) and categories (id, name)")
EDGE_SLACK = 1.0  # pixels a box may pass its image's edge (then clamped): COCO's own rounding


@dataclass
class Annotations:
    """One COCO JSON, checked: per image (sorted by id) its file and xyxy boxes in its pixels."""

    path: Path
    categories: dict[int, str]  # id -> name, sorted by id
    files: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height)
    boxes: list[list[list[float]]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)  # indices into the sorted categories
    crowd: int = 0  # iscrowd annotations ignored
    empty: int = 0  # zero-area boxes ignored

    @property
    def class_names(self) -> list[str]:
        return list(self.categories.values())


def parse_argument(argument: str | None, what: str = "--data coco") -> tuple[Path, Path]:
    """``(JSON file, images folder)`` from ``ANNOTATIONS.json[,IMAGES_DIR]``."""
    return imagefolder.labels_and_images(argument, what, "COCO JSON", HINT)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entries(path: Path, data: dict, key: str, fields: dict[str, tuple]) -> list[dict]:
    """``data[key]``, a list of objects each holding ``fields`` (name -> accepted types)."""
    entries = data.get(key)
    if not isinstance(entries, list):
        raise CnnbenchError(f"{path} has no {key!r} list ({HINT})")
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CnnbenchError(f"{path}: {key}[{n}] is {shown(entry)}, not an object")
        for name, kinds in fields.items():
            value = entry.get(name)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise CnnbenchError(f"{path}: {key}[{n}] has {name} {shown(value)}"
                                    f"{'' if name in entry else ' (missing)'}; {HINT}")
    return entries


def _unique_ids(path: Path, entries: list[dict], key: str) -> dict[int, dict]:
    by_id = {}
    for entry in entries:
        if entry["id"] in by_id:
            raise CnnbenchError(f"{path}: {key} id {entry['id']} is given twice")
        by_id[entry["id"]] = entry
    return by_id


def read(path: Path, images_dir: Path) -> Annotations:
    """The checked annotations of one COCO JSON (see the module's list of refusals)."""
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise CnnbenchError(f"{path} is not valid JSON (line {exc.lineno} column {exc.colno}: "
                            f"{exc.msg})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CnnbenchError(f"{path} is not valid JSON ({str(exc)[:160]})") from None
    except OSError as exc:
        raise CnnbenchError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise CnnbenchError(f"{path} holds a JSON {type(data).__name__}, not an object: {HINT}")
    categories = _unique_ids(path, _entries(path, data, "categories", {"id": int, "name": str}),
                             "category")
    if not categories:
        raise CnnbenchError(f"{path} has no categories ({HINT})")
    names = [categories[i]["name"] for i in sorted(categories)]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise CnnbenchError(f"{path}: category name {twice!r} is given to several ids")
    found = _unique_ids(path, _entries(path, data, "images", {"id": int, "file_name": str,
                                                             "width": int, "height": int}),
                        "image")
    if not found:
        raise CnnbenchError(f"{path} has no images ({HINT})")
    ann = Annotations(path, {i: categories[i]["name"] for i in sorted(categories)})
    row = {image_id: k for k, image_id in enumerate(sorted(found))}
    index = {category_id: k for k, category_id in enumerate(ann.categories)}
    for image_id in sorted(found):
        image = found[image_id]
        if image["width"] <= 0 or image["height"] <= 0:
            raise CnnbenchError(f"{path}: image id {image_id} is {image['width']}x"
                                f"{image['height']} pixels")
        ann.files.append(os.path.join(images_dir, image["file_name"]))
        ann.sizes.append((image["width"], image["height"]))
        ann.boxes.append([])
        ann.labels.append([])
    for n, a in enumerate(_entries(path, data, "annotations",
                                   {"image_id": int, "category_id": int, "bbox": list})):
        where = f"{path}: annotations[{n}]" + (f" (id {a['id']})" if "id" in a else "")
        if a["image_id"] not in row:
            raise CnnbenchError(f"{where} names image id {a['image_id']}, which is not in images")
        if a["category_id"] not in index:
            raise CnnbenchError(f"{where} names category id {a['category_id']}, which is not in "
                                f"categories (ids {', '.join(map(str, ann.categories))})")
        box = a["bbox"]
        if len(box) != 4 or not all(map(_number, box)):
            raise CnnbenchError(f"{where} has bbox {shown(box)}: four numbers [x, y, width, "
                                "height] are needed")
        x, y, w, h = map(float, box)
        if w < 0 or h < 0:
            raise CnnbenchError(f"{where} has bbox {shown(box)} with a negative "
                                f"{'width' if w < 0 else 'height'}")
        k = row[a["image_id"]]
        width, height = ann.sizes[k]
        if x < -EDGE_SLACK or y < -EDGE_SLACK or x + w > width + EDGE_SLACK \
                or y + h > height + EDGE_SLACK:
            raise CnnbenchError(f"{where} has bbox {shown(box)} outside its image (image id "
                                f"{a['image_id']}, {width}x{height} pixels)")
        if a.get("iscrowd", 0):
            ann.crowd += 1
            continue
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(x + w, width), min(y + h, height)
        if x1 <= x0 or y1 <= y0:
            ann.empty += 1
            continue
        ann.boxes[k].append([x0, y0, x1, y1])
        ann.labels[k].append(index[a["category_id"]])
    return ann


def check_files(ann: Annotations) -> list[tuple[str, int, int]]:
    """``(path, size, mtime in ns)`` of each image; a missing file or one of another size than
    the JSON says is an error (the boxes are in the JSON's pixels). Headers only."""
    from PIL import Image

    stamped = []
    for file, (width, height) in zip(ann.files, ann.sizes):
        try:
            st = os.stat(file)
        except OSError:
            raise CnnbenchError(f"{ann.path}: no image file {file}") from None
        try:
            with Image.open(file) as image:
                size = image.size
        except Exception:  # noqa: BLE001 - an unreadable file is reported when it is decoded
            size = (width, height)
        if size != (width, height):
            raise CnnbenchError(f"{ann.path}: {file} is {size[0]}x{size[1]} pixels, the JSON "
                                f"says {width}x{height}")
        stamped.append((file, st.st_size, st.st_mtime_ns))
    return stamped


def targets(ann: Annotations, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """``boxes [N, M, 4]`` (xyxy, pixels of the image fitted to ``size`` = ``(H, W)``),
    ``labels [N, M]`` (``-1`` pads) and ``multi_hot [N, C]``."""
    n, m = len(ann.files), max([len(lab) for lab in ann.labels] + [1])
    boxes = torch.zeros(n, m, 4)
    labels = torch.full((n, m), -1, dtype=torch.int64)
    for i, (b, lab, (width, height)) in enumerate(zip(ann.boxes, ann.labels, ann.sizes)):
        if lab:
            scale = torch.tensor([size[1] / width, size[0] / height] * 2)
            boxes[i, :len(lab)] = torch.tensor(b) * scale
            labels[i, :len(lab)] = torch.tensor(lab)
    out = {"boxes": boxes, "labels": labels}
    out["multi_hot"] = multi_hot(out, len(ann.categories))
    return out


def siblings(path: Path, images_dir: Path) -> dict[str, tuple[Path, Path]]:
    """``{"test": ..., "val": ...}``: the JSON files beside ``path`` named with ``test`` or
    ``val`` for its last ``train``, each with its images folder (named the same way when that
    folder exists, else ``images_dir``)."""
    found = {}
    stem, at = path.name, path.name.rfind("train")
    if at < 0:
        return found
    for split in ("test", "val"):
        candidate = path.with_name(stem[:at] + split + stem[at + len("train"):])
        if candidate.is_file():
            folder, j = images_dir.name, images_dir.name.rfind("train")
            other = images_dir.with_name(folder[:j] + split + folder[j + len("train"):])
            found[split] = (candidate, other if j >= 0 and other.is_dir() else images_dir)
    return found


def load_bundle(argument: str | None, config: dict, one_object: bool,
                say: Callable[[str], None] | None = None) -> DataBundle:
    """The splits the JSON files describe, every check done before an image is decoded;
    ``one_object``: images without a box are left out (single-object)."""
    say = say or (lambda message: None)
    path, images_dir = parse_argument(argument)
    others = siblings(path, images_dir)
    if config.get("coco_test"):
        others = {"test": parse_argument(config["coco_test"], "coco_test")}
    elif "test" not in others and "val" in others:  # COCO's own: val2017 is what is tested on
        others = {"test": others["val"]}
    read_splits = {"train": read(path, images_dir)}
    for split, (other, folder) in others.items():
        read_splits[split] = read(other, folder)
        if read_splits[split].categories != read_splits["train"].categories:
            raise CnnbenchError(f"{other}'s categories differ from {path}'s: the splits must "
                                "share one list of ids and names")
    train = read_splits["train"]
    crowd = sum(a.crowd for a in read_splits.values())
    empty = sum(a.empty for a in read_splits.values())
    if crowd:
        say(f"coco: {crowd} crowd annotations (iscrowd 1) ignored, as torchvision's references do")
    if empty:
        say(f"coco: {empty} boxes of zero width or height ignored")
    size = target_size(config)
    files, parts = [], {}
    for split, ann in read_splits.items():
        stamped = check_files(ann)
        keep = torch.tensor([bool(lab) or not one_object for lab in ann.labels], dtype=torch.bool)
        if not keep.all():
            say(f"coco: {int((~keep).sum())} images of {ann.path.name} without a box left out "
                "(single-object needs one)")
        if not keep.any():
            raise CnnbenchError(f"{ann.path} has no image with a box")
        rows = torch.arange(len(files), len(files) + int(keep.sum()))
        files += [s for s, k in zip(stamped, keep.tolist()) if k]
        parts[split] = Split(rows, {k: v[keep] for k, v in targets(ann, size).items()})
    if "test" not in parts:
        say(f"coco: no test JSON beside {path} (nor coco_test): a test split is held out of "
            "its images")
    root = Path(os.path.commonpath([f[0] for f in files])) if len(files) > 1 else images_dir
    bundle = imagefolder.files_bundle(root if root.is_dir() else root.parent, files, parts,
                                      train.class_names, config,
                                      f"coco:{argument}", say)
    bundle.info["splits"] = {s: os.fspath(a.path) for s, a in read_splits.items()}
    return bundle
