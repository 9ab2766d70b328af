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
    files: list[str] | None = None  # the file each image came from, where it has one

    def __len__(self) -> int:
        return self.images.shape[0]

    def take(self, idx) -> tuple[torch.Tensor, Targets]:
        return self.images[idx], index_targets(self.targets, idx)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), targets_to(self.targets, device), self.files)

    def close(self) -> None:
        """Nothing to let go (a ``stream.FileSplit`` stops its workers)."""

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


def strata(targets: Targets) -> torch.Tensor | None:
    """One class per image to stratify on: the label of a classification split, the first
    class present of a multi-label one (``multi_hot``); None when the targets have neither."""
    if isinstance(targets, dict):
        targets = targets.get("multi_hot")
    if not isinstance(targets, torch.Tensor):
        return None
    if targets.dim() == 1 and not targets.is_floating_point():
        return targets.cpu()
    if targets.dim() == 2:  # multi-hot rows; an image with none present is its own stratum
        present = targets.cpu() > 0
        return torch.where(present.any(1), present.float().argmax(1), -1)
    return None


def sample_indices(n: int, limit: int, labels: torch.Tensor | None,
                   seed: int = SPLIT_SEED) -> torch.Tensor:
    """``limit`` of ``n`` indices (sorted), drawn with a fixed seed and, given ``labels``,
    stratified: each class gets its share (largest remainders), and at least one image while
    ``limit`` allows one per class."""
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        return torch.randperm(n, generator=generator)[:limit].sort().values
    classes, counts = labels.unique(return_counts=True)
    share = counts.double() * limit / n
    quota = share.floor().long()
    if limit >= len(classes):
        quota = quota.clamp(min=1)
    # What is left goes to the largest remainders (ties: the rarer class first), never past
    # a class's own count; over-giving (the minimum of one) is taken back from the largest.
    order = sorted(range(len(classes)), key=lambda k: (-(share[k] - share[k].floor()).item(),
                                                        counts[k].item()))
    while quota.sum() < limit:
        for k in order:
            if quota.sum() < limit and quota[k] < counts[k]:
                quota[k] += 1
    while quota.sum() > limit:
        quota[int(quota.argmax())] -= 1
    chosen = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:q]])
    return torch.cat(chosen).sort().values


def sample(split: Split, limit: int | None) -> Split:
    """``--limit``: at most ``limit`` images of ``split``, a seeded sample stratified by class
    (:func:`sample_indices`); the split itself when it has no more."""
    if limit is None or limit >= len(split):
        return split
    idx = sample_indices(len(split), int(limit), strata(split.targets))
    files = [split.files[i] for i in idx.tolist()] if split.files else None
    return Split(*split.take(idx), files)
