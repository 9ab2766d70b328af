"""Checks that need the data, made before the model is built and before any run folder:
the class count a configuration asks for against the data's, and the labels' range."""

from __future__ import annotations

import torch

from cnnbench.errors import CnnbenchError
from cnnbench.tasks.base import Context


def check_classes(context: Context, model_args: dict) -> None:
    """``model_args: {num_classes: 3}`` on data the task gives another count is refused."""
    wanted, needed = model_args.get("num_classes"), context.model_args.get("num_classes")
    if wanted is not None and needed is not None and wanted != needed:
        raise CnnbenchError(f"num_classes={wanted} does not fit the data: the task needs "
                            f"{needed} outputs ({context.num_classes} classes); leave "
                            f"num_classes out and it follows the data")


def check_same_classes(stored: Context | None, class_names) -> None:
    """Data given to a checkpoint (``eval --data``, a resume) name the classes it learned."""
    if stored is not None and tuple(class_names) != stored.class_names:
        def show(names):
            return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise CnnbenchError(f"the data's classes ({show(list(class_names))}) are not the "
                            f"checkpoint's ({show(list(stored.class_names))}): give data with "
                            f"the same class folders")


def check_labels(splits, num_classes: int) -> None:
    """Every label is a class of the data (``-1`` pads the dense tasks' label lists)."""
    for name, split in zip(("training", "validation", "test"), splits):
        targets = split.targets
        labels, lowest = (targets, 0) if isinstance(targets, torch.Tensor) else (
            targets.get("labels") if isinstance(targets, dict) else None, -1)
        if labels is None or labels.numel() == 0 or labels.is_floating_point():
            continue
        lo, hi = int(labels.min()), int(labels.max())
        if lo < lowest or hi >= num_classes:
            bad = lo if lo < lowest else hi
            raise CnnbenchError(f"the {name} data hold label {bad}, outside 0..{num_classes - 1} "
                                f"({num_classes} classes): the label file is damaged or of "
                                f"another data set")
