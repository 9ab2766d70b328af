"""Fashion-MNIST scenes: 1-4 real Fashion-MNIST items pasted on a blank canvas.

Dense-prediction data that exists on a machine with no network. Each scene gives:

- ``images`` uint8 ``[N, 1, S, S]``;
- ``boxes`` float ``[N, 4, 4]`` tight (xmin, ymin, xmax, ymax) pixel-edge boxes around each item's
  *visible* pixels (``xmax`` is one past the last column), padded with zeros;
- ``labels`` int64 ``[N, 4]`` the Fashion-MNIST class (0-9), ``-1`` marks padding;
- ``masks`` uint8 ``[N, S, S]`` semantic mask: 0 background, 1-10 the class of the item pixel;
- ``multi_hot`` float ``[N, 10]`` which classes appear (multi-label targets).

Items are drawn one after the other, each over the ones before it (overlaps are resolved by
drawing order); an item's pixels are those brighter than ``threshold``, so its dark pixels are
transparent and an item below can show through them. An item that later items hide almost entirely is left out, so every labelled
object can be seen. Train scenes use the training images, test scenes the test images.
Generation is vectorised (one ``grid_sample`` per item slot) and cached on disk under
``~/.cache/cnnbench/scenes/<hash>.pt`` keyed by every parameter below.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from cnnbench.data import cache, fashion_mnist

CLASS_NAMES = fashion_mnist.CLASS_NAMES
SEGMENTATION_CLASSES = ["background", *CLASS_NAMES]
GENERATOR_VERSION = 1  # bump when the drawing changes, so old caches are not reused
CACHE_DIR = Path("~/.cache/cnnbench/scenes").expanduser()


@dataclass(frozen=True)
class SceneParams:
    split: str = "train"  # which Fashion-MNIST images: "train" or "test"
    count: int = 10000
    size: int = 96  # canvas side in pixels
    max_items: int = 4  # each scene has 1..max_items items
    min_scale: float = 0.3  # item side as a fraction of the canvas
    max_scale: float = 0.6
    threshold: int = 24  # an item pixel is one brighter than this (0-255)
    min_visible: float = 0.35  # keep an item only if this fraction of its pixels stays visible
    seed: int = 0

    def key(self) -> str:
        text = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def generate(params: SceneParams, items: torch.Tensor, item_labels: torch.Tensor,
             chunk: int = 2048, return_instances: bool = False) -> dict[str, torch.Tensor]:
    """Draw ``params.count`` scenes from ``items`` (uint8 ``[M, 1, 28, 28]``) and their labels.

    With ``return_instances`` the result also holds ``instances`` uint8 ``[N, S, S]``: 0 for
    background, ``k + 1`` where item slot ``k`` is the visible one (for tests).
    """
    g = torch.Generator().manual_seed(int(params.key(), 16) % 2**63)
    n, k, s = params.count, params.max_items, params.size
    # Every random choice is drawn up front, so chunking does not change the scenes.
    num_items = torch.randint(1, k + 1, (n,), generator=g)
    which = torch.randint(0, items.shape[0], (n, k), generator=g)
    side = params.min_scale + (params.max_scale - params.min_scale) * torch.rand(n, k, generator=g)
    side = (side * s).round().clamp(min=2)  # item side in pixels
    x0 = (torch.rand(n, k, generator=g) * (s - side + 1)).floor()
    y0 = (torch.rand(n, k, generator=g) * (s - side + 1)).floor()
    present = torch.arange(k) < num_items[:, None]

    parts = [_draw(items[which[i:i + chunk]], item_labels[which[i:i + chunk]],
                   side[i:i + chunk], x0[i:i + chunk], y0[i:i + chunk], present[i:i + chunk],
                   params, return_instances)
             for i in range(0, n, chunk)]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def _draw(items, labels, side, x0, y0, present, params: SceneParams, return_instances: bool):
    n, k = labels.shape
    s = params.size
    # grid_sample reads the item at normalised coordinates v for each canvas position u; with
    # align_corners=False, -1 and 1 are the outer pixel edges, so an item spanning canvas pixels
    # [x0, x0 + side) has v = (s / side) * u + (s - 2 * x0) / side - 1 along x (same along y).
    u = (2 * torch.arange(s) + 1) / s - 1  # canvas pixel centres
    scale = (s / side).reshape(-1, 1)
    gx = scale * u + ((s - 2 * x0) / side - 1).reshape(-1, 1)  # [n*k, s]
    gy = scale * u + ((s - 2 * y0) / side - 1).reshape(-1, 1)
    grid = torch.stack((gx[:, None, :].expand(-1, s, -1), gy[:, :, None].expand(-1, -1, s)), -1)
    layers = F.grid_sample(items.reshape(n * k, 1, 28, 28).float(), grid, mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    layers = layers.round().clamp(0, 255).reshape(n, k, s, s)
    on = (layers > params.threshold) & present[:, :, None, None]

    # From the top item down: an item is kept if enough of it is not covered by kept items above.
    covered = torch.zeros(n, s, s, dtype=torch.bool)
    keep = torch.zeros(n, k, dtype=torch.bool)
    for j in reversed(range(k)):
        area = on[:, j].flatten(1).sum(1, dtype=torch.int32)
        visible = (on[:, j] & ~covered).flatten(1).sum(1, dtype=torch.int32)
        keep[:, j] = (area > 0) & (visible >= params.min_visible * area)
        covered |= on[:, j] & keep[:, j, None, None]
    on &= keep[:, :, None, None]

    # Drawing order: later items cover earlier ones, so a pixel shows its highest item slot.
    slot = torch.arange(1, k + 1, dtype=torch.uint8)[None, :, None, None]
    instances = (on * slot).amax(1)  # [n, s, s]: 0 background, j + 1 for item slot j
    top = (instances.long() - 1).clamp(min=0)
    image = layers.gather(1, top[:, None]).squeeze(1) * (instances > 0)
    mask = torch.cat([torch.zeros(n, 1, dtype=torch.long), labels + 1], 1).gather(
        1, instances.long().flatten(1)).reshape(n, s, s).to(torch.uint8)

    # Tight boxes: the extreme columns and rows of each slot's visible pixels.
    ids = instances.long().flatten(1)
    xs = torch.arange(s).repeat(s).expand(n, -1).float()
    ys = torch.arange(s).repeat_interleave(s).expand(n, -1).float()
    boxes = torch.stack([
        torch.full((n, k + 1), float(s)).scatter_reduce(1, ids, xs, "amin"),
        torch.full((n, k + 1), float(s)).scatter_reduce(1, ids, ys, "amin"),
        torch.full((n, k + 1), -1.0).scatter_reduce(1, ids, xs, "amax") + 1,
        torch.full((n, k + 1), -1.0).scatter_reduce(1, ids, ys, "amax") + 1,
    ], dim=-1)[:, 1:]
    boxes[~keep] = 0
    out_labels = torch.where(keep, labels, torch.full_like(labels, -1))

    # Objects first, padding last; the slot order within a scene stays the drawing order.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    boxes = torch.gather(boxes, 1, order[:, :, None].expand(-1, -1, 4))
    out_labels = torch.gather(out_labels, 1, order)
    multi_hot = torch.zeros(n, 10)
    multi_hot.scatter_add_(1, out_labels.clamp(min=0), keep.gather(1, order).float())
    multi_hot.clamp_(max=1)
    result = {"images": image.to(torch.uint8)[:, None], "boxes": boxes, "labels": out_labels,
              "masks": mask, "multi_hot": multi_hot}
    if return_instances:
        # Renumber slots to the reordered positions.
        rank = torch.argsort(order, dim=1)  # slot j ended at position rank[j]
        lookup = torch.cat([torch.zeros(n, 1, dtype=torch.long), rank + 1], dim=1)
        result["instances"] = torch.gather(lookup, 1, instances.long().reshape(n, -1)
                                           ).reshape(n, s, s).to(torch.uint8)
    return result


def load_scenes(params: SceneParams, data_dir=None, cache_dir=None,
                strict_count: bool = True) -> dict[str, torch.Tensor]:
    """The scenes for ``params``, from the disk cache or drawn once and cached (atomic write).

    ``strict_count=False`` accepts Fashion-MNIST files of any length (quick runs and tests)."""
    cache_dir = Path(cache_dir or os.environ.get("CNNBENCH_SCENES_CACHE") or CACHE_DIR)
    path = cache_dir / f"{params.key()}.pt"
    scenes = cache.load_entry(path)  # a damaged cache file is simply drawn again
    if scenes is not None:
        return scenes
    items, labels = fashion_mnist.load_split(params.split, data_dir, strict_count)
    scenes = generate(params, items, labels)
    cache.store(scenes, path)  # atomic; a cache that cannot be written only costs speed
    return scenes
