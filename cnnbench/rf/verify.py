"""The empirical check of the rules: the input gradient of one unit of a linearised model.

It needs no trust in the field rules: every operation runs as its rule's linearisation says
(activations and normalisation become the identity, max pooling becomes averaging, weights become
positive), so every path adds positive gradient and the non-zero input gradient of a unit is
exactly the set of pixels it depends on; its bounding box must equal the unit's field.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnbench.building import build
from cnnbench.capture import capture
from cnnbench.rf.analysis import Analysis, analyse, analyse_module, pick
from cnnbench.rf.rules import RULES, op_name
from cnnbench.rf.trace import Row


class Linearised(TorchFunctionMode):
    """Run a model as a positive linear map of its input, keeping its geometry.

    Each operation with a linearisation in the rule table runs as that; deformable offsets
    become zero (the regular grid's field is what is checked); everything else runs as it is.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = RULES.get(op_name(func))
        if rule is not None and rule.linear is not None:
            return rule.linear(func, args, kwargs)
        return func(*args, **kwargs)


def _gradient_box(grad: torch.Tensor) -> list:
    support = grad.abs().sum(0) != 0
    box = []
    for dim in (1, 0):
        hit = torch.nonzero(support.any(dim=dim)).flatten().tolist()
        box.append([hit[0], hit[-1]] if hit else None)
    return box


def verify(name: str, input_size=None, *, model_args: dict | None = None,
           layers: list[str] | None = None, dtype=torch.float64, batch: int = 8) -> dict:
    """Compare each layer's analytic field (clipped) with the box of non-zero input gradient.

    Checks one unit per layer: the centre unit of a map, all elements of a flattened tensor.
    Layers whose field is the same object as an earlier layer's (ReLU after a convolution)
    are not checked again unless named in ``layers``.
    """
    a = analyse(name, input_size, model_args)
    rows = [r for n in layers for r in pick(a, n)] if layers else _distinct(a.rows)
    model, _ = build(name, model_args, in_channels=a.size[0], device="cpu")
    results = _check(a, model.to(dtype).eval(), rows, dtype, batch)
    return {"model": a.name, "input_size": list(a.size), "dtype": str(dtype).removeprefix("torch."),
            "checked": results, "agree": all(r["agree"] for r in results)}


def verify_module(model: nn.Module, input_size, *, dtype=torch.float64) -> dict:
    """:func:`verify` for a model object; it is copied, not changed."""
    a = analyse_module(model, input_size)
    checked = _check(a, copy.deepcopy(model).to(dtype).eval(), _distinct(a.rows), dtype, 8)
    return {"checked": checked, "agree": all(c["agree"] for c in checked)}


def _distinct(rows: list[Row]) -> list[Row]:
    """The first row of each field (a ReLU after a convolution shares its field)."""
    seen, result = set(), []
    for r in rows:
        if id(r.field) not in seen:
            seen.add(id(r.field))
            result.append(r)
    return result


def _check(a: Analysis, model: nn.Module, rows: list[Row], dtype, batch: int) -> list[dict]:
    results = []
    for first in range(0, len(rows), batch):
        results += _verify_group(a, model, rows[first:first + batch], dtype)
    return results


def _verify_group(a: Analysis, model: nn.Module, group: list[Row], dtype) -> list[dict]:
    """One input per row in a batch: each row's unit reads only its own batch element."""
    where = [(a.module_name(row.call[0]), *row.call[1:]) for row in group]
    x = torch.ones((len(group), *a.size), dtype=dtype, requires_grad=True)
    with Linearised():
        caught = capture(model, x, where)
    total = 0
    for b, (row, key) in enumerate(zip(group, where)):
        t = caught[key]
        if row.field.dims is None:
            total = total + t[b].sum()
        else:
            index = [slice(None)] * t.dim()
            index[0] = b
            for d, u in zip(row.field.dims, row.field.centre_unit()):
                index[d] = u
            total = total + t[tuple(index)].sum()
    (grad,) = torch.autograd.grad(total, x, allow_unused=True)
    out = []
    for b, row in enumerate(group):
        got = _gradient_box(grad[b]) if grad is not None else [None, None]
        f = row.field
        expected = f.seen_box(a.size)
        axes = f.axes if f.dims is not None else f.union()
        unit = f.centre_unit() if f.dims is not None else (0, 0)
        real = [[int(ax.real_lo[u]), int(ax.real_hi[u])] if np.isfinite(ax.real_lo[u]) else None
                for ax, u in zip(axes, unit)]
        result = {"name": row.name, "type": row.type,
                  "unit": list(unit) if f.dims is not None else "all",
                  "analytic": expected, "exact": real, "gradient": got, "agree": got == real}
        if expected != real:
            result["note"] = ("at the border the clipped field also covers pixels that only "
                              "padding units (ceil-mode pooling, padding, dilation) would read")
        out.append(result)
    return out
