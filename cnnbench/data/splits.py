"""In-memory splits: ``Split`` and ``DataBundle``, the validation hold-out and ``--limit``.

(A split read from its files batch by batch, ``data_mode: stream``, is ``stream.FileSplit``.)

Data stay in memory as tensors (images uint8 ``[N, C, H, W]``) and are batched by indexing.
Targets are a tensor or any pytree of tensors (a dict of boxes, labels, masks...) indexed along
dim 0 like the images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_map

Targets = Any  # a tensor, or a pytree of tensors indexed along dim 0 like the images

SPLIT_SEED = 0  # the validation split never changes with the run's seed


def index_targets(targets: Targets, idx) -> Targets:
    return tree_map(lambda t: t[idx], targets)


def targets_to(targets: Targets, device) -> Targets:
    return tree_map(lambda t: t.to(device, non_blocking=True), targets)


@dataclass
class Split:
    """One split held in memory: ``images[i]`` goes with ``index_targets(targets, i)``."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    targets: Targets

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, idx) -> tuple[torch.Tensor, Targets]:
        return self.images[idx], index_targets(self.targets, idx)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), targets_to(self.targets, device))

    def batches(self, order: torch.Tensor | None, starts, size: int, seed=None):
        """Batch ``k`` is ``order[starts[k]:starts[k] + size]`` (``order`` None: the split's
        own order); ``stream.FileSplit`` answers the same from files (and uses ``seed``)."""
        for s in starts:
            yield self.take(slice(s, s + size) if order is None else order[s:s + size])


@dataclass
class DataBundle:
    """What a data source returns: three splits and what describes them."""

    train: Split
    val: Split
    test: Split
    class_names: list[str]
    info: dict = field(default_factory=dict)  # free-form: source path, generator params, ...


def holdout(split: Split, n_val: int, seed: int = SPLIT_SEED) -> tuple[Split, Split]:
    """A random ``(train, val)`` cut of ``split`` with ``n_val`` images in val, same every time."""
    n = len(split)
    n_val = max(0, min(int(n_val), n // 2))  # a tiny set (tests) keeps half for training
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return (Split(*split.take(train_idx)), Split(*split.take(val_idx)))


def head(split: Split, limit: int | None) -> Split:
    """The first ``limit`` images of ``split`` (all of them when ``limit`` is None)."""
    if limit is None or limit >= len(split):
        return split
    return Split(*split.take(torch.arange(int(limit))))
