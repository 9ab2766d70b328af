"""Cutting in-memory splits: a validation hold-out with a fixed seed, and ``--limit``."""

from __future__ import annotations

import torch

from cnnbench.tasks.base import Split, index_targets

SPLIT_SEED = 0  # the validation split never changes with the run's seed


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
    idx = torch.arange(int(limit))
    return Split(split.images[idx], index_targets(split.targets, idx))
