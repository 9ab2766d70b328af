"""Tiny Fashion-MNIST-shaped IDX files for tests, written the way the real ones are laid out."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray) -> bytes:
    """Big-endian header: magic 0x0000 08 <ndim>, one uint32 per dimension, then the bytes."""
    header = (0x800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, n_train: int = 64, n_test: int = 32, gz: bool = True,
                        seed: int = 0) -> dict:
    """Random images whose mean brightness depends on the label, so a model can learn a little."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 80, (n, 28, 28)) + labels[:, None, None] * 17
        arrays[split] = (images.astype(np.uint8), labels)
        for name, array in zip(NAMES[split], arrays[split]):
            data = idx_bytes(array)
            path = folder / (name + (".gz" if gz else ""))
            path.write_bytes(gzip.compress(data) if gz else data)
    return arrays
