"""Fashion-MNIST from local IDX files (gzip or plain), kept in memory as uint8 tensors.

Looked for, in order: an explicit directory, ``$CNNBENCH_DATA``, Debian's
``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``) and
``~/.cache/cnnbench/fashion-mnist``. Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from cnnbench.data.splits import DataBundle, Split, holdout, sample
from cnnbench.errors import CnnbenchError

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path("~/.cache/cnnbench/fashion-mnist").expanduser()
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
INSTALL_HINT = ("install it with `apt-get update && apt-get install -y dataset-fashion-mnist` "
                "or point --data / $CNNBENCH_DATA at a folder with the four IDX files")
# IDX magic numbers: 0x0000 08 (unsigned byte) and the number of dimensions.
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
MAX_IDX_BYTES = 256 * 2**20  # the largest real file holds 47 MB (60,000 images of 28 x 28)


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    if data_dir:
        return [Path(data_dir).expanduser()]
    env = os.environ.get("CNNBENCH_DATA")
    return ([Path(env).expanduser()] if env else []) + [DEBIAN_DIR, CACHE_DIR]


def find_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The first candidate folder holding the training images; a clear error if none does."""
    dirs = candidate_dirs(data_dir)
    for d in dirs:
        if _find_file(d, FILES["train"][0]) is not None:
            return d
    where = ", ".join(str(d) for d in dirs)
    raise CnnbenchError(f"Fashion-MNIST not found in {where}: {INSTALL_HINT}")


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path, magic: int, count: int | None = None) -> np.ndarray:
    """Read one IDX file, checking its magic number and that its size matches its header.
    A ``.gz`` file is decompressed as a stream, never past the size its header declares (at
    most ``MAX_IDX_BYTES``): a small file that inflates without end is refused, not read."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    try:
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
            head_bytes = f.read(header)
            if len(head_bytes) < header or int.from_bytes(head_bytes[:4], "big") != magic:
                raise CnnbenchError(f"{path} is not an IDX file of the expected kind (bad magic "
                                    f"number); {INSTALL_HINT}")
            dims = [int.from_bytes(head_bytes[4 + 4 * i: 8 + 4 * i], "big")
                    for i in range(ndim)]
            expected = header + math.prod(dims)
            if expected - header > MAX_IDX_BYTES:
                raise CnnbenchError(f"{path} declares {expected - header:,} bytes of data, more "
                                    f"than any Fashion-MNIST file ({MAX_IDX_BYTES:,} at most); "
                                    f"{INSTALL_HINT}")
            body = f.read(expected - header)
            extra = len(f.read(1))  # one byte past the declared size is enough to refuse it
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CnnbenchError(f"cannot read {path} ({exc}): the file is damaged; "
                            f"{INSTALL_HINT}") from None
    size = header + len(body) + extra
    if size == expected and count is not None and dims[0] != count:
        raise CnnbenchError(f"{path} holds {dims[0]:,} images, not Fashion-MNIST's {count:,} "
                            f"(a smaller copy trains with --limit); {INSTALL_HINT}")
    if size != expected:
        more = "+" if extra else ""
        raise CnnbenchError(f"{path} is truncated or the wrong size ({size}{more} bytes, header "
                            f"says {expected}); {INSTALL_HINT}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def load_split(split: str, data_dir: str | os.PathLike | None = None,
               strict_count: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``("train"|"test")`` -> images uint8 ``[N, 1, 28, 28]`` and labels int64 ``[N]``."""
    images_stem, labels_stem, count = FILES[split]
    folder = find_dir(data_dir)
    paths = [_find_file(folder, stem) for stem in (images_stem, labels_stem)]
    missing = [stem for stem, p in zip((images_stem, labels_stem), paths) if p is None]
    if missing:
        raise CnnbenchError(f"{folder} lacks {missing[0]}[.gz]; {INSTALL_HINT}")
    n = count if strict_count else None
    images = read_idx(paths[0], IMAGES_MAGIC, n)
    labels = read_idx(paths[1], LABELS_MAGIC, n)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise CnnbenchError(f"{folder}: images {images.shape} and labels {labels.shape} "
                            f"do not match; {INSTALL_HINT}")
    return (torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)))


def load_bundle(data_dir: str | os.PathLike | None = None, val_size: int = 5000,
                limit: int | None = None) -> DataBundle:
    """Train/val/test splits: val is a fixed hold-out of the training set, test the official
    10,000; ``limit`` keeps a stratified sample of at most that many images of each split (for quick
    runs and tests)."""
    folder = find_dir(data_dir)
    full = Split(*load_split("train", folder, strict_count=limit is None))
    test = Split(*load_split("test", folder, strict_count=limit is None))
    train, val = holdout(full, val_size)
    return DataBundle(sample(train, limit), sample(val, limit), sample(test, limit),
                      list(CLASS_NAMES),
                      info={"source": str(folder), "val_size": len(val)})
