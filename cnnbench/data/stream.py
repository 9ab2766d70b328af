"""Streaming splits: image files read batch by batch in ``DataLoader`` workers.

``data_mode`` chooses how a source of image files (``imagefolder``, ``csv``, ``masks``) feeds
the trainer:

- ``memory``: every image decoded once and the whole split kept as one uint8 tensor on the
  device (``splits.Split``); the fastest, for data that fit.
- ``stream``: a :class:`FileSplit` that decodes each batch's files when it is needed, in
  ``workers`` processes (``torch.utils.data.DataLoader``: ``prefetch`` batches ahead per worker,
  pinned memory on CUDA, persistent workers for the training split). Memory stays flat however
  many files there are.
- ``auto`` (default): ``memory`` when the decoded images fit ``data_budget_gb``, else ``stream``;
  one line on stderr says which, with the figure (from ``ANNOUNCE_FROM`` bytes: a tiny folder
  goes to memory quietly).

A :class:`FileSplit` answers what a ``Split`` answers (``len``, ``take``, ``batches``, ``to``,
``images[...]``) and gives the same uint8 pixels: each file goes through the same
``images.read_image`` as the in-memory path, and a batch through the same ``images.stack``.
The order is the trainer's (its seeded permutation, sent to the workers as index lists), and
nothing here draws from the process's random generators, so a run trains bitwise alike in
both modes (on the CPU) and resumes mid-epoch from the checkpoint's position, as in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from cnnbench.data import augment, images
from cnnbench.data.splits import Targets, index_targets, targets_to
from cnnbench.errors import CnnbenchError
from cnnbench.keys import Key, declare

KEYS = declare(
    Key("data_mode", "auto", str, ("auto", "memory", "stream"),
        help="image files: decode all into memory, or stream them in workers (auto: by size)"),
    Key("data_budget_gb", 4.0, float, bounds="(0, inf)",
        help="data_mode auto: memory when the decoded images fit in this many GiB"),
    Key("workers", None, int, bounds="[0, inf)",
        help="data_mode stream: DataLoader worker processes (default: CPU cores, at most 8)"),
    Key("prefetch", 2, int, bounds="[1, inf)",
        help="data_mode stream: batches each worker prepares ahead"),
)


ANNOUNCE_FROM = 64 * 2 ** 20  # auto names its choice for data this large (decoded)


class WorkerDied(RuntimeError):
    """A DataLoader worker stopped (killed, out of memory): the run can stop cleanly."""


def decoded_bytes(count: int, size: tuple[int, int], channels: int | None) -> int:
    """What ``count`` images take decoded as uint8 at ``size`` (3 channels when undecided)."""
    return count * (channels or 3) * size[0] * size[1]


def choose_mode(config: dict, count: int, size: tuple[int, int], channels: int | None,
                say: Callable[[str], None]) -> str:
    """``memory`` or ``stream`` for ``count`` images; ``auto`` says what it chose and why."""
    mode = config.get("data_mode", "auto")
    if mode != "auto":
        return mode
    need, budget = decoded_bytes(count, size, channels), float(config["data_budget_gb"])
    mode = "memory" if need <= budget * 2 ** 30 else "stream"
    if need >= ANNOUNCE_FROM:
            say(f"data_mode auto: {count:,} images at {channels or 3}x{size[0]}x{size[1]} are "
            f"{need / 2 ** 30:.2f} GiB decoded, {'within' if mode == 'memory' else 'over'} "
            f"data_budget_gb {budget:g}: {mode}")
    return mode


def data_channels(paths: Sequence[str], channels: int | None) -> int:
    """The channels a streamed split decodes to: ``channels`` when set, else 3 once one file is
    in colour and 1 when all are grey, as the in-memory path decides (headers only)."""
    if channels:
        return channels
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as image:
                if image.mode not in images.GREY_MODES:
                    return 3
        except Exception:  # noqa: BLE001 - an unreadable file is reported when it is read
            continue
    return 1


class FileDataset(Dataset):
    """Files by index; ``__getitems__`` reads a whole batch in one worker call.

    Without a ``transform`` each file is fitted to ``size`` as the in-memory path fits it
    (``images.read_image``); with one, it is decoded whole (``images.decode``) and the
    transform (``augment.stream_transform``) brings it to ``size``, seeded per image. With
    ``masks`` (segmentation: a mask file per image) each batch comes with its masks at ``size``
    (``read_mask(path, size)``, a picklable function: ``masks.read_mask``)."""

    def __init__(self, files: Sequence[str], size: tuple[int, int], channels: int,
                 transform=None, masks: Sequence[str] | None = None,
                 read_mask: Callable | None = None):
        self.files, self.size, self.channels = list(files), tuple(size), channels
        self.transform = transform
        self.masks, self.read_mask = (list(masks), read_mask) if masks is not None else (None, None)

    def __len__(self) -> int:
        return len(self.files)

    def __getitems__(self, items: list):
        """``(uint8 [n, C, H, W], ok bool [n], indices, problems, masks)`` for ``items``:
        indices, or ``(index, seed)`` pairs for a random transform. A file that cannot be
        decoded keeps a zero row, ``ok`` False and its message in ``problems``; ``masks`` is
        uint8 ``[n, H, W]`` or None."""
        problems: list[str] = []
        ok = torch.ones(len(items), dtype=torch.bool)
        indices = [item[0] if isinstance(item, tuple) else item for item in items]

        def read():
            for k, item in enumerate(items):
                try:
                    yield k, self._one(item)
                except images.BadImage as exc:
                    ok[k] = False
                    problems.append(str(exc))

        if self.transform is None:
            batch = images.stack(read(), len(items), self.size, self.channels)
        else:
            batch = torch.zeros((len(items), self.channels, *self.size), dtype=torch.uint8)
            with _own_rng():
                for k, image in read():
                    batch[k] = image
        masks = None
        if self.masks is not None:
            masks = torch.stack([self.read_mask(self.masks[i], self.size) for i in indices])
        return batch, ok, torch.as_tensor(indices, dtype=torch.int64), problems, masks

    def _one(self, item):
        if self.transform is None:
            return images.read_image(self.files[item], self.size, self.channels)
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = images.decode(self.files[index], self.channels)
        if seed is not None:  # the CPU generator alone: torch.manual_seed takes ~0.6 ms
            torch.default_generator.manual_seed(seed)
        return self.transform(image)


def _own_rng():
    """In a worker, nothing; in the trainer's process (``workers: 0``), the random state is
    put back afterwards, so that per-image seeds leave dropout's draws alone."""
    if torch.utils.data.get_worker_info() is not None:
        return contextlib.nullcontext()
    return torch.random.fork_rng(devices=[])


def item_seed(seed, position: int) -> int:
    """The seed of the image at ``position`` in a pass seeded ``seed`` (the run's seed and the
    epoch): the same whichever worker reads it, and after a resume."""
    return hash((*seed, position)) & (2 ** 63 - 1)  # an int tuple hashes the same everywhere


def _as_is(batch):
    return batch  # __getitems__ already made the batch


class _Lists:
    """A batch sampler whose index lists the trainer sets before each pass (so that persistent
    workers serve every epoch's order)."""

    def __init__(self):
        self.lists: list[list[int]] = []

    def __iter__(self):
        return iter(self.lists)

    def __len__(self) -> int:
        return len(self.lists)


class LazyImages:
    """``split.images`` of a :class:`FileSplit`: indexing decodes those rows (uint8)."""

    def __init__(self, split: "FileSplit"):
        self.split = split

    @property
    def shape(self) -> torch.Size:
        s = self.split
        return torch.Size((len(s), s.channels, *s.size))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, int):  # one image [C, H, W], as a tensor's row
            return self.split.take([idx])[0][0]
        return self.split.take(idx)[0]


@dataclasses.dataclass
class FileSplit:
    """One split read from its files: ``files[i]`` goes with ``index_targets(targets, i)``."""

    files: list[str]
    targets: Targets  # on the CPU; each batch's go to the device with its images
    size: tuple[int, int]
    channels: int
    workers: int = 0
    prefetch: int = 2
    persistent: bool = False  # keep the workers between passes (the training split)
    skip_bad: bool = False
    say: Callable[[str], None] | None = None
    transform: Callable | None = None  # augment.stream_transform's, run in the workers
    masks: list[str] | None = None  # segmentation: each file's mask, read with read_mask
    read_mask: Callable | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self):
        self.dataset = FileDataset(self.files, self.size, self.channels, self.transform,
                                   self.masks, self.read_mask)
        self._sampler = _Lists()
        self._loader: DataLoader | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def images(self) -> LazyImages:
        return LazyImages(self)

    def to(self, device) -> "FileSplit":
        return dataclasses.replace(self, device=torch.device(device))

    def take(self, idx) -> tuple[torch.Tensor, Targets]:
        """The images and targets at ``idx`` (a slice, an index tensor or list), decoded here."""
        rows = torch.arange(len(self))[idx] if isinstance(idx, slice) else torch.as_tensor(idx)
        rows = rows.reshape(-1).cpu().tolist()
        return self._deliver(self.dataset.__getitems__(rows))

    def batches(self, order: torch.Tensor | None, starts: Sequence[int], size: int,
                seed: tuple | None = None) -> Iterator[tuple[torch.Tensor, Targets]]:
        """Batch ``k`` is ``order[starts[k]:starts[k] + size]`` (``order`` None: the split's
        own order), read ahead in the workers; each comes on the device. ``seed`` (the run's
        and the epoch) seeds a random transform, image by image (:func:`item_seed`)."""
        rows = list(range(len(self))) if order is None else order.cpu().tolist()
        if seed is not None and self.transform is not None:
            rows = [(row, item_seed(seed, p)) for p, row in enumerate(rows)]
        self._sampler.lists = [rows[s:s + size] for s in starts]
        if not self._sampler.lists:
            return
        loader = self._loader or self._make_loader()
        try:
            for batch in _checked_iter(loader):
                yield self._deliver(batch)
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):  # not: killed, or exited unexpectedly
                raise
            self._loader = None
            raise WorkerDied(str(exc).splitlines()[0]) from None
        except (ConnectionError, EOFError) as exc:  # a batch whose sender died as it was taken
            self._loader = None
            raise WorkerDied(f"a batch from a worker that stopped could not be read: "
                             f"{type(exc).__name__}") from None

    def close(self) -> None:
        """Let the persistent workers go (a later pass starts new ones)."""
        self._loader = None  # its iterator, unreferenced, shuts the workers down

    def _make_loader(self) -> DataLoader:
        workers = self.workers
        loader = DataLoader(
            self.dataset, batch_sampler=self._sampler, collate_fn=_as_is,
            num_workers=workers, pin_memory=self.device.type == "cuda",
            prefetch_factor=self.prefetch if workers else None,
            persistent_workers=self.persistent and workers > 0,
            # its own generator: making an iterator draws worker seeds from it, not from the
            # process's generator that dropout and augmentation draw from
            generator=torch.Generator().manual_seed(0))
        if self.persistent:
            self._loader = loader
        return loader

    def _deliver(self, batch) -> tuple[torch.Tensor, Targets]:
        pixels, ok, rows, problems, masks = batch
        if problems and not self.skip_bad:
            raise CnnbenchError(f"{problems[0]}: fix or delete it, or set skip_bad_images: "
                                "true to skip such files")
        for message in problems:
            if self.say:
                self.say(f"warning: skipped {message.removeprefix('cannot read image ')}")
        if problems:
            pixels, rows = pixels[ok], rows[ok]
            masks = masks[ok] if masks is not None else None
        targets = index_targets(self.targets, rows)
        if masks is not None:  # first, as the in-memory split holds them
            targets = {"masks": masks, **targets}
        targets = targets_to(targets, self.device)
        return pixels.to(self.device, non_blocking=True), targets


def _checked_iter(loader: DataLoader):
    """``iter(loader)`` without torch's SIGCHLD handler: that one raises wherever the main
    thread is when a worker dies (inside an optimizer step, say), leaving a half-stepped model.
    Without it the iterator notices a dead worker while it waits for a batch (within
    ``MP_STATUS_CHECK_INTERVAL``, 5 s), where the last step is whole and can be checkpointed."""
    if threading.current_thread() is not threading.main_thread():
        return iter(loader)  # torch sets no handler there either
    previous = signal.getsignal(signal.SIGCHLD)
    try:
        return iter(loader)
    finally:
        signal.signal(signal.SIGCHLD, previous)


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def file_split(files: Sequence[str], targets: Targets, size: tuple[int, int], channels: int,
               config: dict, train: bool, say: Callable[[str], None] | None = None,
               masks: Sequence[str] | None = None,
               read_mask: Callable | None = None) -> FileSplit:
    """A :class:`FileSplit` with the configuration's workers, prefetch and augmentation (the
    per-image transforms are classification's: a split with ``masks`` has none, its dense
    augmentation runs on the device on image and mask together)."""
    workers = config.get("workers")
    return FileSplit(list(files), targets, tuple(size), channels,
                     workers=default_workers() if workers is None else int(workers),
                     prefetch=int(config.get("prefetch") or 2), persistent=train,
                     skip_bad=bool(config.get("skip_bad_images", False)), say=say,
                     transform=None if masks is not None
                     else augment.stream_transform(config, size, train),
                     masks=None if masks is None else list(masks), read_mask=read_mask)
