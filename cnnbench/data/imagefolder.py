"""Your own pictures: a folder per class, torchvision's ``ImageFolder`` layout.

``imagefolder:PATH`` reads either ``PATH/train/<class>/...`` with optional ``PATH/val/`` (or
``valid/``) and ``PATH/test/``, or ``PATH/<class>/...`` alone (all of it is the training set).
Class names are the sorted folder names under ``train/``; ``val/`` and ``test/`` may hold only
those. Files with torchvision's image extensions are read (in sub-folders too, in sorted order);
any other file is ignored, as ``ImageFolder`` does. What is missing is held out of ``train/``
with the fixed split seed: a validation set of ``val_size`` images and a test set of the same
size, each at most a fifth of ``train/`` and at least one image (the test set: a fifth when
``val_size`` is 0).

Images are fitted to the model's input (``images.py``: channels, Pillow's bilinear resize) and
kept in memory as uint8, or, with ``data_mode: stream`` (``auto``: data over
``data_budget_gb``), read batch by batch in DataLoader workers (``stream.py``). In memory, a
folder of ``CACHE_FROM`` images or more is cached once decoded (``cache.py``), keyed by every
file's name, size and modification time and by the target size, channels and
``skip_bad_images``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from cnnbench.data import cache, images, stream
from cnnbench.data.splits import DataBundle, Split, holdout, index_targets, sample
from cnnbench.errors import CnnbenchError

LAYOUT = ("expected PATH/train/<class>/*.png (optional PATH/val/ and PATH/test/ alike) or "
          "PATH/<class>/*.png")
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}
HELD_OUT_FRACTION = 5  # a missing val/ or test/ takes at most 1/5 of train/ each
CACHE_FROM = 1000  # folders with at least this many images are cached once decoded
CACHE_VERSION = 1  # bump when decoding changes, so that old entries are not reused


def find_layout(path: str | os.PathLike) -> dict[str, Path]:
    """``{"train": folder, ["val": folder], ["test": folder]}``, each holding class folders."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CnnbenchError(f"no image folder at {root}: {LAYOUT}")
    if not (root / "train").is_dir():
        return {"train": root}
    layout = {}
    for split, names in SPLIT_FOLDERS.items():
        found = [root / n for n in names if (root / n).is_dir()]
        if len(found) > 1:
            raise CnnbenchError(f"{root} has both {found[0].name}/ and {found[1].name}/: keep one")
        if found:
            layout[split] = found[0]
    return layout


def looks_like_one(path: str | os.PathLike) -> bool:
    """Whether ``path`` seems to be a class-per-folder tree (for a bare ``--data PATH``)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return False
    top = root / "train" if (root / "train").is_dir() else root
    for folder in (d for d in top.iterdir() if d.is_dir()):
        if any(p.suffix.lower() in images.EXTENSIONS for p in folder.iterdir()):
            return True
    return False


def scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple],
                                                                  torch.Tensor]:
    """``(class names, files, labels)`` of one split folder, each file ``(path, size, mtime in
    ns)``, class by class; ``classes``: train's names, which the folder's must be among
    (the labels index them)."""
    names = sorted(d.name for d in os.scandir(folder) if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise CnnbenchError(f"{folder} has no class folders: {LAYOUT}")
    if classes is not None:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise CnnbenchError(f"{folder} has class folder {unknown[0]!r}, which "
                                f"{folder.parent / 'train'} lacks: the classes are train/'s")
    odd = next((n for n in names if not n.isprintable()), None)  # a newline, undecodable bytes
    if odd is not None:
        raise CnnbenchError(f"class folder {odd!r} in {folder} is not a printable name (it would "
                            f"label tables and pictures): rename it")
    classes = classes or names
    files, labels = [], []
    for name in names:
        found = _image_files(os.path.join(folder, name))
        if not found:
            raise CnnbenchError(f"class folder {folder / name} has no images "
                                f"({', '.join(images.EXTENSIONS)})")
        files += found
        labels += [classes.index(name)] * len(found)
    return classes, files, torch.tensor(labels, dtype=torch.int64)


def _image_files(folder: str, seen: set | None = None) -> list[tuple[str, int, int]]:
    """``(path, size, mtime in ns)`` of the image files under ``folder``: its own files by name,
    then each sub-folder's the same way, by name. Hidden files and folders are skipped, and so
    is a folder already read (a link back up the tree would loop)."""
    try:
        st = os.stat(folder)
    except OSError as exc:
        raise CnnbenchError(f"cannot read {folder}: {exc.strerror}") from None
    seen = set() if seen is None else seen
    if (st.st_dev, st.st_ino) in seen:
        return []
    seen.add((st.st_dev, st.st_ino))
    files, folders = [], []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name[0] == ".":
                continue
            if entry.is_dir():
                folders.append(entry.path)
            elif entry.name.lower().endswith(images.EXTENSIONS) and entry.is_file():
                st = entry.stat()  # the cache key notices an edited file by these
                files.append((entry.path, st.st_size, st.st_mtime_ns))
    for sub in folders:
        files += _image_files(sub, seen)
    return files


def labels_and_images(argument: str | None, what: str, kind: str,
                      hint: str) -> tuple[Path, Path]:
    """``(labels file, images folder)`` from a source's ``FILE[,IMAGES_DIR]`` argument (the
    images default to the file's own folder): ``csv:`` and ``coco:``. ``what`` names the
    option and ``kind`` the file in the one-line refusals."""
    if not argument:
        raise CnnbenchError(f"{what} needs the file: {hint}")
    table, _, folder = str(argument).partition(",")
    path = Path(table).expanduser()
    if not path.is_file():
        raise CnnbenchError(f"no {kind} file at {path} ({hint})")
    images = Path(folder).expanduser() if folder else path.parent
    if not images.is_dir():
        raise CnnbenchError(f"no images folder at {images} ({hint})")
    return path, images


def load_bundle(path: str | os.PathLike, config: dict,
                say: Callable[[str], None] | None = None) -> DataBundle:
    """The three splits of the tree at ``path``, fitted to ``config``'s model and input size."""
    layout = find_layout(path)
    # Splits of file indices first, so that a quick run (--limit) decodes only what it uses.
    files: list[tuple] = []
    parts: dict[str, Split] = {}
    class_names = None
    for split, folder in layout.items():
        class_names, found, labels = scan(folder, class_names)
        parts[split] = Split(torch.arange(len(files), len(files) + len(found)), labels)
        files += found
    return files_bundle(Path(path).expanduser(), files, parts, class_names, config,
                        f"imagefolder:{path}", say)


def files_bundle(root: Path, files: list[tuple], parts: dict[str, Split], class_names: list[str],
                 config: dict, source: str, say: Callable[[str], None] | None = None
                 ) -> DataBundle:
    """The bundle of image ``files`` (``(path, size, mtime in ns)``, under ``root``) split as
    ``parts`` (``Split(file indices, targets)``: ``train`` and any of ``val``, ``test``): what
    is missing held out of train, ``--limit`` sampled, then decoded into memory (cached) or
    streamed (``data_mode``). Shared by every source of image files (``csv_labels.py``)."""
    say = say or (lambda message: None)
    size, channels = images.target_size(config), images.channel_request(config)
    limit, val_size = config.get("limit"), int(config.get("val_size", 5000))
    skip = bool(config.get("skip_bad_images", False))
    train = parts["train"]
    cap = max(1, len(train) // HELD_OUT_FRACTION)
    n_held = {"val": min(val_size, cap), "test": min(val_size, cap) or cap}  # never no test
    held = []
    for split in ("val", "test"):
        if split not in parts:
            train, parts[split] = holdout(train, n_held[split])
            held.append(split)
    chosen = {s: sample(p, limit) for s, p in (("train", train), ("val", parts["val"]),
                                             ("test", parts["test"]))}
    count = sum(len(p) for p in chosen.values())
    if stream.choose_mode(config, count, size, channels, say) == "stream":
        return _streamed(source, files, chosen, size, channels, config, held, class_names, say)

    rows, pixels, ok = _decode(files, root, chosen if limit is not None else None, size,
                               channels, skip, say)
    fitted = {}
    for split, part in chosen.items():
        # The file indices' rows in pixels.
        at = part.images if len(rows) == len(files) else torch.searchsorted(rows, part.images)
        keep = ok[at]
        fitted[split] = Split(pixels[at[keep]], index_targets(part.targets, keep),
                              [files[i][0] for i in part.images[keep].tolist()])
    return DataBundle(fitted["train"], fitted["val"], fitted["test"], list(class_names),
                      info={"source": source, "channels": pixels.shape[1], "held_out": held})


def _streamed(source: str, files: list[tuple], chosen: dict[str, Split], size: tuple[int, int],
              channels: int | None, config: dict, held: list[str], class_names: list[str],
              say: Callable[[str], None]) -> DataBundle:
    """The splits as ``stream.FileSplit``s: nothing decoded until a batch is read."""
    paths = {s: [files[i][0] for i in p.images.tolist()] for s, p in chosen.items()}
    channels = stream.data_channels([p for s in paths.values() for p in s], channels)
    split = {s: stream.file_split(paths[s], p.targets, size, channels, config,
                                  train=s == "train", say=say) for s, p in chosen.items()}
    return DataBundle(split["train"], split["val"], split["test"], list(class_names),
                      info={"source": source, "channels": channels, "held_out": held,
                            "data_mode": "stream"})


def _decode(files: list[tuple], root: Path, chosen: dict[str, Split] | None,
            size: tuple[int, int], channels: int | None, skip: bool,
            say: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, uint8 [len(rows), C, H, W], ok [len(rows)])``: the file indices ``rows``
    (sorted) decoded or read from the cache; every file, or only those ``chosen`` uses."""
    paths = [f[0] for f in files]
    everything = torch.arange(len(paths))
    cached = len(paths) >= CACHE_FROM
    if cached:
        start = len(str(root)) + 1  # names under root, so that a moved tree keeps its key
        key = {"version": CACHE_VERSION,
               "files": cache.stamps_digest((p[start:], n, t) for p, n, t in files),
               "size": list(size), "channels": channels, "skip_bad_images": skip}
        entry_path = cache.entry_path("imagefolder", root, key)
        entry = cache.load_entry(entry_path)
        if isinstance(entry, dict) and {"images", "ok"} <= entry.keys():
            for i in (~entry["ok"]).nonzero().flatten().tolist():
                say(f"warning: skipped {paths[i]} (unreadable when the cache was made)")
            return everything, entry["images"], entry["ok"]
    # A quick run decodes only its images (whose colours then decide the channels alone).
    rows = everything if chosen is None else torch.cat([p.images for p in chosen.values()]
                                                        ).unique()  # sorted
    pixels, ok = images.decode_files([paths[i] for i in rows.tolist()], size, channels, skip,
                                     say, f"reading {len(rows)} images")
    if cached and chosen is None:
        cache.save_entry({"images": pixels, "ok": ok}, entry_path)
    return rows, pixels, ok
