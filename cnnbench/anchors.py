"""Anchor boxes: a fixed set of boxes per feature-map cell, as in SSD and the fast.ai lesson.

Boxes are (xmin, ymin, xmax, ymax) in fractions of the image, ordered cell by cell (row-major)
and, within a cell, anchor by anchor: the order of a head's ``permute(0, 2, 3, 1)`` output.
"""

import torch


def anchors_per_cell(sizes, ratios) -> int:
    # Every size with the first ratio, and the first size with every other ratio (d2l's choice).
    return len(sizes) + len(ratios) - 1


def grid_anchors(height: int, width: int, sizes, ratios, device=None) -> torch.Tensor:
    """Anchors centred on every cell of a ``height`` x ``width`` map: ``[H*W*A, 4]``."""
    sizes = torch.as_tensor(sizes, dtype=torch.float32, device=device)
    ratios = torch.as_tensor(ratios, dtype=torch.float32, device=device)
    # Width and height of each anchor in image fractions; a ratio is width / height.
    ws = torch.cat((sizes * ratios[0].sqrt(), sizes[0] * ratios[1:].sqrt()))
    hs = torch.cat((sizes / ratios[0].sqrt(), sizes[0] / ratios[1:].sqrt()))
    # Keep boxes square in pixels on a non-square map.
    ws = ws * min(height, width) / width
    hs = hs * min(height, width) / height
    cy = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    cx = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    cy, cx = torch.meshgrid(cy, cx, indexing="ij")
    centres = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
    half = torch.stack((-ws, -hs, ws, hs), dim=-1) / 2
    return (centres + half).reshape(-1, 4)


def anchor_notes(feature_maps, sizes_per_map, ratios, names) -> list[str]:
    """Lines for `cnnbench summary`: how many anchors each feature map carries."""
    lines = []
    for feat, sizes, name in zip(feature_maps, sizes_per_map, names):
        h, w = feat.shape[-2:]
        a = anchors_per_cell(sizes, ratios)
        lines.append(f"anchors on {name}: {h}x{w} cells x {a} = {h * w * a}")
    return lines
