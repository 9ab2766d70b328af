"""Data sources: the table the ``data`` key chooses from.

``data`` is ``NAME``, ``NAME:ARGUMENT`` or a bare folder: one laid out as a source's (a Pascal
VOC tree, CIFAR-10 batches, a folder per class) is read by that source, any other by the task's
first source. Every source reads local files only and returns a :class:`DataBundle` of uint8
images. A task lists the sources it can train on (``Task.sources``); the first is its default.
A source whose images decide the model's input channels says so in ``info["channels"]``.

To add a source: one function ``load(argument, config, task) -> DataBundle`` and one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pathlib import Path

from cnnbench.data import cifar10, coco, csv_labels, fashion_mnist, imagefolder, masks, scenes, voc
from cnnbench.data.dense_transforms import multi_hot
from cnnbench.data.splits import DataBundle, Split, holdout, sample
from cnnbench.errors import CnnbenchError, did_you_mean, say
from cnnbench.keys import Key, declare

KEYS = declare(
    Key("data", None, str, help="NAME, NAME:ARGUMENT or a folder (default: the task's first source)"),
    Key("limit", None, int, bounds="[1, inf)", help="at most this many images per split"),
    Key("val_size", 5000, int, bounds="[0, inf)", help="hold-out from the training set (fixed seed)"),
    Key("skip_bad_images", False, bool, help="imagefolder: warn and skip undecodable files"),
)


@dataclass(frozen=True)
class Source:
    load: Callable[..., DataBundle]  # (argument or None, config, task class) -> DataBundle
    description: str
    streams: bool = False  # reads image files one by one: data_mode stream (stream.py)


def _fashion_mnist(folder: str | None, config: dict, task) -> DataBundle:
    return fashion_mnist.load_bundle(folder, val_size=config["val_size"],
                                     limit=config["limit"])


def _scenes(folder: str | None, config: dict, task) -> DataBundle:
    size = int(config["scene_size"])
    limit, val_size = config["limit"], int(config["val_size"])
    counts = {"train": int(config["scenes"]), "test": int(config["test_scenes"])}
    if limit is not None:  # a quick run draws only what it will use
        counts = {"train": min(counts["train"], 2 * limit + min(val_size, limit)),
                  "test": min(counts["test"], limit)}
    splits = {}
    for split, count in counts.items():
        drawn = scenes.load_scenes(scenes.SceneParams(split=split, count=count, size=size),
                                   folder, strict_count=limit is None)
        targets = {k: drawn[k] for k in ("boxes", "labels", "masks", "multi_hot")}
        splits[split] = Split(drawn["images"], targets)
    train, val = holdout(splits["train"], val_size)
    return DataBundle(sample(train, limit), sample(val, limit), sample(splits["test"], limit),
                      list(scenes.CLASS_NAMES),
                      info={"source": "fashion-mnist scenes", "scene_size": size})


def _voc(path: str | None, config: dict, task) -> DataBundle:
    if not path:
        raise CnnbenchError(f"--data voc needs the folder: voc:PATH ({voc.HINT})")
    size = int(config["input_size"][-1]) if config["input_size"] else 224
    limit, val_size = config["limit"], int(config["val_size"])
    train_set, test_set = voc.splits(path, task.voc_kind)
    load = voc.load_detection if task.voc_kind == "Main" else voc.load_segmentation
    per_split = None if limit is None else 2 * limit + min(val_size, limit)
    train = Split(*load(path, train_set, size, per_split))
    test = Split(*load(path, test_set, size, limit))
    for split in (train, test):
        split.targets["multi_hot"] = multi_hot(split.targets, len(voc.VOC_CLASSES))
    train, val = holdout(train, val_size)
    return DataBundle(sample(train, limit), sample(val, limit), sample(test, limit),
                      list(voc.VOC_CLASSES), info={"source": f"voc:{path}"})


def _imagefolder(path: str | None, config: dict, task) -> DataBundle:
    if not path:
        raise CnnbenchError(f"--data imagefolder needs the folder: imagefolder:PATH "
                            f"({imagefolder.LAYOUT})")
    return imagefolder.load_bundle(path, config, say)


def _csv(argument: str | None, config: dict, task) -> DataBundle:
    return csv_labels.load_bundle(argument, config, task.name == "multi-label", say)


def _coco(argument: str | None, config: dict, task) -> DataBundle:
    return coco.load_bundle(argument, config, task.name == "single-object", say)


def _masks(path: str | None, config: dict, task) -> DataBundle:
    return masks.load_bundle(path, config, say)


def _cifar10(path: str | None, config: dict, task) -> DataBundle:
    if not path:
        raise CnnbenchError(f"--data cifar10 needs the folder: cifar10:PATH ({cifar10.HINT})")
    return cifar10.load_bundle(path, config)


SOURCES: dict[str, Source] = {
    "fashion-mnist": Source(_fashion_mnist, "Fashion-MNIST's IDX files (fashion-mnist:FOLDER)"),
    "scenes": Source(_scenes, "1-4 Fashion-MNIST items on a canvas, with boxes, masks and "
                              "labels (scenes:FOLDER of the IDX files)"),
    "voc": Source(_voc, "Pascal VOC 2007 from a local VOCdevkit (voc:PATH)"),
    "imagefolder": Source(_imagefolder, "your pictures, a folder per class, torchvision's "
                                        "ImageFolder layout (imagefolder:PATH)",
                          streams=True),
    "csv": Source(_csv, "your pictures and a CSV of file names and labels, fast.ai's from_csv "
                        "layout (csv:LABELS.csv[,IMAGES_DIR])", streams=True),
    "coco": Source(_coco, "your pictures and a COCO JSON of boxes per split, for detection, "
                          "single-object and multi-label (coco:ANNOTATIONS.json[,IMAGES_DIR])",
                  streams=True),
    "masks": Source(_masks, "your pictures and PNG masks of class indices: images/, masks/, "
                            "classes.txt (masks:PATH)", streams=True),
    "cifar10": Source(_cifar10, "CIFAR-10's python batches (cifar10:PATH)"),
}


def _layout_of(folder: str) -> str | None:
    """The source whose layout an existing folder has, if one does (for a bare ``--data``)."""
    for name, find in (("voc", voc.find_root), ("cifar10", cifar10.find_folder)):
        try:
            find(folder)
            return name
        except CnnbenchError:
            pass
    return "imagefolder" if imagefolder.looks_like_one(folder) else None


def parse_data(value: str | None, default: str) -> tuple[str, str | None]:
    """``(source name, argument)`` for a ``data`` value; a bare folder goes to the source whose
    layout it has, else to ``default``. An unknown ``NAME:...`` is an error naming the table."""
    if not value:
        return default, None
    value = str(value)
    name, sep, argument = value.partition(":")
    if name in SOURCES:
        return name, argument if sep else None
    if sep and not Path(value).expanduser().exists():
        raise CnnbenchError(f"--data {value}: {name!r} is not a data source"
                            f"{did_you_mean(name, SOURCES)}; the sources are "
                            f"{', '.join(SOURCES)} (SOURCE or SOURCE:PATH, or a folder)")
    return _layout_of(value) or default, value


def load_data(config: dict, task) -> DataBundle:
    """The bundle the ``data`` key names, for a task class that lists its ``sources``."""
    name, argument = parse_data(config["data"], task.sources[0])
    if name not in task.sources:
        raise CnnbenchError(f"the {task.name} task cannot train on {name} data; it takes "
                            f"{', '.join(task.sources)}")
    if config.get("data_mode") == "stream" and not SOURCES[name].streams:
        raise CnnbenchError(f"data_mode stream reads image files one by one: "
                            f"{', '.join(n for n, s in SOURCES.items() if s.streams)} data; "
                            f"{name} is read into memory (data_mode memory or auto)")
    bundle = SOURCES[name].load(argument, config, task)
    channels, size = bundle.info.get("channels"), config.get("input_size")
    if channels and size and channels != size[0]:  # the data decided: the model is built so
        config["input_size"] = [channels, *size[1:]]  # as config.yaml and the header say
    return bundle
