"""Image files to uint8 tensors: the channels a model takes, Pillow decoding, one resize rule.

Shared by the ``imagefolder`` and ``cifar10`` sources. Every image goes through Pillow the way
torchvision's ``ImageFolder`` + ``Resize`` pipeline takes it: converted to RGB or grey (``L``,
ITU-R 601-2 luma) by Pillow, then resized to the model's ``(H, W)`` with Pillow's bilinear
filter (antialiased when it shrinks). Nothing is cropped: the aspect ratio is not kept.

Channels (:func:`channel_request`): a model whose ``in_channels`` the user set (``-m
in_channels=N`` or an ``--input-size`` whose channels differ from the model's default), or that
cannot change them (``torchvision:`` models), gets images converted to those channels. Otherwise
colour data stay in colour: a model that is grey by default (LeNet, as the notes train it on
Fashion-MNIST) is built with ``in_channels=3`` for a colour folder, and grey images go to a
colour model as three equal channels.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from cnnbench.errors import CnnbenchError

# torchvision's IMG_EXTENSIONS: the files ImageFolder reads (others are ignored, as there).
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
PROGRESS_AFTER_S = 1.0  # a load that takes longer shows a bar (on a terminal)
THREADS_FROM_BYTES = 64 * 1024  # mean file size from which decoding runs in threads
TORCHVISION_DECODES = (".jpg", ".jpeg", ".png")  # decode(): decode_image is faster for these


def channel_request(config: dict) -> int | None:
    """The channels the images must have, or None when the data decide (1 if all are grey)."""
    from cnnbench.models import get_model_info

    info = get_model_info(config["model"])
    wanted = (config.get("model_args") or {}).get("in_channels")
    size = config.get("input_size") or info.input_size
    if "in_channels" not in info.options:
        wanted = info.in_channels  # the builder cannot change them
    elif wanted is None and size[0] != info.in_channels:
        wanted = size[0]  # the user's --input-size
    elif wanted is None:
        wanted = None if info.in_channels == 1 else info.in_channels
    if wanted not in (None, 1, 3):
        raise CnnbenchError(f"{info.name} takes {wanted}-channel input: images give 1 (grey) "
                            "or 3 (RGB) channels")
    return wanted


def target_size(config: dict) -> tuple[int, int]:
    from cnnbench.models import get_model_info

    size = config.get("input_size") or get_model_info(config["model"]).input_size
    return int(size[-2]), int(size[-1])


def fit(image, size: tuple[int, int], channels: int | None) -> np.ndarray:
    """A Pillow image as uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` at ``size`` = ``(H, W)``;
    ``channels`` None keeps grey images grey and turns every other mode into RGB."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: keep the top byte
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8))
    mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if image.mode in GREY_MODES else "RGB")
    if image.mode != mode:
        image = image.convert(mode)  # RGBA and LA drop their alpha, as ImageFolder's loader does
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.array(image)  # writable, for torch.from_numpy


def read_image(path: str | Path, size: tuple[int, int], channels: int | None) -> np.ndarray:
    """One file through :func:`fit`; a file Pillow cannot decode raises ``BadImage``."""
    return read_with_size(path, size, channels)[0]


def read_with_size(path: str | Path, size: tuple[int, int],
                   channels: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image`'s array and the file's own ``(width, height)``: the decoder of
    training (in memory), ``eval`` and ``predict``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return fit(image, size, channels), image.size
    except Exception as exc:  # Pillow raises many kinds for a damaged file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise BadImage(path, reason) from None


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """:func:`fit`'s ``[H, W]`` or ``[H, W, 3]`` array as uint8 ``[C, H, W]``."""
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def decode(path: str | Path, channels: int) -> torch.Tensor:
    """One file as uint8 ``[channels, H, W]`` at its own size: JPEG and PNG through
    ``torchvision.io.decode_image`` (libjpeg-turbo, libpng: faster than Pillow,
    ``benchmarks/stream_throughput.py``), other formats and anything it refuses through
    Pillow as :func:`read_image` converts them. An undecodable file raises ``BadImage``."""
    if str(path).lower().endswith(TORCHVISION_DECODES):
        from torchvision.io import ImageReadMode, decode_image, read_file

        try:
            with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec (README)
                warnings.simplefilter("ignore", DeprecationWarning)
                image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB
                                     if channels == 3 else ImageReadMode.GRAY)
            if image.dtype == torch.uint8:
                return image
        except (RuntimeError, ValueError):
            pass  # Pillow decides, and names the problem if there is one
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = fit(image, (image.height, image.width), channels)
    except Exception as exc:  # Pillow raises many kinds for a damaged file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise BadImage(path, reason) from None
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


class BadImage(Exception):
    """An image file that cannot be decoded, and why."""

    def __init__(self, path, reason: str):
        super().__init__(f"cannot read image {path} ({reason})")
        self.path, self.reason = path, reason


def stack(arrays: Iterable[tuple[int, np.ndarray]], n: int, size: tuple[int, int],
          channels: int | None) -> torch.Tensor:
    """uint8 ``[n, C, H, W]`` from ``(index, array)`` pairs (``fit``'s output); rows not given
    stay zero. ``channels`` None: 1 when every array is grey, else 3 (grey repeated)."""
    h, w = size
    out = np.zeros((n, channels or 3, h, w), dtype=np.uint8)  # numpy: a row costs 1-2 us
    colour = False
    for i, array in arrays:
        if array.ndim == 3:
            out[i] = array.transpose(2, 0, 1)
            colour = True
        else:
            out[i] = array  # broadcast over the channels
    return torch.from_numpy(out if channels or colour else out[:, :1].copy())


def decode_files(paths: list[str] | list[Path], size: tuple[int, int], channels: int | None,
                 skip_bad: bool = False, say: Callable[[str], None] | None = None,
                 label: str = "reading images") -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 [N, C, H, W], ok bool [N])``: every file read, fitted and stacked.

    A file that cannot be decoded is a one-line ``CnnbenchError`` naming it, unless
    ``skip_bad``: then its row stays zero, ``ok`` is False and ``say`` names it. Large files
    are decoded in threads (Pillow releases the GIL while it decodes and resizes); small ones in
    this thread, where the per-file Python work, not decoding, is the cost.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        try:
            return i, read_image(paths[i], size, channels)
        except BadImage as exc:
            return i, exc

    ok = torch.ones(len(paths), dtype=torch.bool)
    sample = paths[:: max(1, len(paths) // 64)]
    mean_bytes = sum(map(os.path.getsize, sample)) / max(1, len(sample))
    workers = min(8, os.cpu_count() or 1) if mean_bytes >= THREADS_FROM_BYTES else 1
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    results = pool.map(one, range(len(paths))) if pool else map(one, range(len(paths)))

    def good(results):
        for i, result in progress(results, len(paths), label):
            if isinstance(result, BadImage):
                if not skip_bad:
                    raise CnnbenchError(f"{result}: fix or delete it, or set "
                                        "skip_bad_images: true to skip such files")
                ok[i] = False
                if say:
                    say(f"warning: skipped {result.path} ({result.reason})")
                continue
            yield i, result

    try:
        images = stack(good(results), len(paths), size, channels)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return images, ok


def progress(items: Iterable, total: int, label: str) -> Iterable:
    """``items`` as they come, with a transient rich bar on stderr once ``PROGRESS_AFTER_S``
    has passed (a quick load shows nothing; a pipe never shows a bar)."""
    start, bar, asked = time.perf_counter(), None, False
    try:
        for done, item in enumerate(items, 1):
            yield item
            if not asked and done % 64 == 0 and time.perf_counter() - start > PROGRESS_AFTER_S:
                asked, bar = True, _start_bar(total, label)
            if bar is not None and (done % 64 == 0 or done == total):
                bar.update(bar.task_ids[0], completed=done)
    finally:
        if bar is not None:
            bar.stop()


def _start_bar(total: int, label: str):
    """A started rich bar on stderr, or None when stderr is not a terminal."""
    from rich.console import Console

    err = Console(stderr=True)
    if not err.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=err, transient=True)
    bar.add_task(label, total=total)
    bar.start()
    return bar
