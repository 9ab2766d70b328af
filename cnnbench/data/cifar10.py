"""CIFAR-10, python version: the unpacked ``cifar-10-python.tar.gz``, never downloaded.

``cifar10:PATH`` points at ``cifar-10-batches-py`` or at the folder holding it, the ``root``
torchvision's ``CIFAR10(root, download=False)`` takes. The five ``data_batch_N`` files are the
training set (``val_size`` of it held out with the fixed split seed), ``test_batch`` the test
set, ``batches.meta`` the class names. Images are 3x32x32 RGB; they are fitted to the model's
input (``images.py``) only when it asks another size or grey, and that result is cached.

The batches are pickles, read as torchvision reads them (``encoding="latin1"``), but through an
unpickler that builds only dicts, lists, strings, numbers and numpy arrays: a pickle that asks for
anything else (code) is refused, so a tampered file cannot run code.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
import numpy as np
import torch

from cnnbench.data import cache, images
from cnnbench.data.splits import DataBundle, Split, holdout, sample
from cnnbench.errors import CnnbenchError, shown

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH, META = "test_batch", "batches.meta"
SIDE, CLASSES = 32, 10
HINT = (f"unpack cifar-10-python.tar.gz (the python version) so that {FOLDER}/ holds "
        "data_batch_1..5, test_batch and batches.meta")
CACHE_VERSION = 1


def find_folder(path: str | os.PathLike) -> Path:
    """The ``cifar-10-batches-py`` folder: ``path`` itself or inside it."""
    path = Path(path).expanduser()
    for folder in (path / FOLDER, path):
        if (folder / META).is_file():
            return folder
    raise CnnbenchError(f"no CIFAR-10 batches at {path}: {HINT}")


@functools.cache
def _numpy_globals() -> dict[tuple[str, str], object]:
    """What a pickled numpy array may name: numpy 1's and numpy 2's spellings of the same few."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("_codecs", "encode")] = __import__("codecs").encode  # bytes pickled by Python 3
    return allowed


class BatchUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the names a numpy array needs."""

    def find_class(self, module: str, name: str):
        allowed = _numpy_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which is refused")
        return allowed[(module, name)]


def read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise CnnbenchError(f"{path.parent} lacks {path.name}: {HINT}")
    try:
        with path.open("rb") as f:
            value = BatchUnpickler(f, encoding="latin1").load()
    except OSError as exc:
        raise CnnbenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # damaged or foreign pickles raise many kinds
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CnnbenchError(f"{path} is not a CIFAR-10 python batch ({reason}); {HINT}") from None
    if not isinstance(value, dict):
        raise CnnbenchError(f"{path} is not a CIFAR-10 python batch (no dict); {HINT}")
    return value


def read_split(folder: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 ``[N, 3, 32, 32]`` and labels int64 ``[N]`` of the named batches."""
    all_images, all_labels = [], []
    for name in names:
        path = folder / name
        batch = read_pickle(path)
        data, labels = batch.get("data"), batch.get("labels")
        shape = getattr(data, "shape", None)
        if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
                or shape[1] != 3 * SIDE * SIDE or not isinstance(labels, list)
                or len(labels) != shape[0]):
            raise CnnbenchError(f"{path} is not a CIFAR-10 python batch (expected 'data' uint8 "
                                f"[N, 3072] and N 'labels'); {HINT}")
        bad = next((v for v in labels if not isinstance(v, (int, np.integer))
                    or isinstance(v, bool) or not 0 <= v < CLASSES), None)
        if bad is not None:  # a string, a float, a number past 64 bits: before any tensor
            raise CnnbenchError(f"{path} has label {shown(bad)}, not a whole number in 0..9; "
                                f"{HINT}")
        labels = torch.tensor(labels, dtype=torch.int64)
        all_images.append(torch.from_numpy(data.reshape(-1, 3, SIDE, SIDE).copy()))
        all_labels.append(labels)
    return torch.cat(all_images), torch.cat(all_labels)


def class_names(folder: Path) -> list[str]:
    names = read_pickle(folder / META).get("label_names")
    if not (isinstance(names, list) and len(names) == CLASSES
            and all(isinstance(n, str) for n in names)):
        raise CnnbenchError(f"{folder / META} has no list of {CLASSES} label_names; {HINT}")
    return names


def fit_all(pixels: torch.Tensor, size: tuple[int, int], channels: int) -> torch.Tensor:
    """uint8 ``[N, 3, 32, 32]`` -> ``[N, channels, H, W]`` through Pillow like any image file."""
    from PIL import Image

    arrays = (images.fit(Image.fromarray(p.permute(1, 2, 0).numpy()), size, channels)
              for p in pixels)
    return images.stack(images.progress(enumerate(arrays), len(pixels),
                                        f"fitting {len(pixels)} CIFAR-10 images"),
                        len(pixels), size, channels)


def load_bundle(path: str | os.PathLike, config: dict) -> DataBundle:
    """Train (less the held-out val), val and test, fitted to ``config``'s model and size."""
    folder = find_folder(path)
    size, channels = images.target_size(config), images.channel_request(config) or 3
    limit, val_size = config.get("limit"), int(config.get("val_size", 5000))
    names = class_names(folder)
    train, val = holdout(Split(*read_split(folder, TRAIN_BATCHES)), val_size)
    test = Split(*read_split(folder, (TEST_BATCH,)))
    splits = {s: sample(p, limit) for s, p in (("train", train), ("val", val), ("test", test))}
    if channels != 3 or size != (SIDE, SIDE):
        entry = entry_path = None
        if limit is None:  # the whole set takes seconds to fit: cached
            files = [folder / n for n in (*TRAIN_BATCHES, TEST_BATCH)]
            key = {"version": CACHE_VERSION, "files": cache.file_stamps(files, folder),
                   "size": list(size), "channels": channels, "val_size": val_size}
            entry_path = cache.entry_path("cifar10", folder, key)
            entry = cache.load_entry(entry_path)
        if not (isinstance(entry, dict) and set(splits) <= entry.keys()):
            entry = {k: fit_all(s.images, size, channels) for k, s in splits.items()}
            if entry_path is not None:
                cache.save_entry(entry, entry_path)
        splits = {k: Split(entry[k], s.targets) for k, s in splits.items()}
    return DataBundle(splits["train"], splits["val"], splits["test"], names,
                      info={"source": f"cifar10:{folder}", "channels": channels})
