"""Generated JPEG image folders for the streaming figures (``stream_memory.py``,
``stream_throughput.py``): ``ROOT/train/<class>/NNNNNN.jpg``, 224x224 RGB, 10 classes.

Each picture is a Fashion-MNIST item (the class is its label) scaled up to 224 px, tinted and
laid on a smooth random background with a little noise, then saved as JPEG (quality 90): about
the size and decode cost of a photo at 224 px, unlike pure noise. Deterministic per index, so a
folder can be grown (``--files 100000`` after ``--files 10000`` adds the rest).

    .venv/bin/python benchmarks/stream_data.py /tmp/stream10k --files 10000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIDE = 224
CLASSES = 10


def picture(item: np.ndarray, index: int) -> np.ndarray:
    """A 224 px RGB uint8 picture of a 28 px grey ``item``."""
    from PIL import Image

    rng = np.random.default_rng(index)
    big = np.asarray(Image.fromarray(item).resize((SIDE, SIDE), Image.Resampling.BILINEAR),
                     dtype=np.float32)[..., None] / 255
    corners = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
    t = np.linspace(0, 1, SIDE, dtype=np.float32)
    top = corners[0, 0] + (corners[0, 1] - corners[0, 0]) * t[:, None]
    bottom = corners[1, 0] + (corners[1, 1] - corners[1, 0]) * t[:, None]
    background = top[None] + (bottom - top)[None] * t[:, None, None]
    tint = rng.uniform(64, 255, 3).astype(np.float32)
    out = background * (1 - big) + tint * big + rng.normal(0, 6, (SIDE, SIDE, 3))
    return out.clip(0, 255).astype(np.uint8)


def generate(root: Path, files: int) -> None:
    from PIL import Image

    from cnnbench.data.fashion_mnist import load_split

    items, labels = load_split("train")
    items, labels = items.squeeze(1).numpy(), labels.numpy()
    for c in range(CLASSES):
        (root / "train" / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        k = i % len(items)
        path = root / "train" / f"class{labels[k]}" / f"{i:06d}.jpg"
        if not path.exists():
            Image.fromarray(picture(items[k], i)).save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    generate(args.root, args.files)


if __name__ == "__main__":
    main()
