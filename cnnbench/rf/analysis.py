"""Per-layer receptive fields of a model, and the grid view of its detection maps."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from cnnbench.building import eval_mode
from cnnbench.capture import on_first_device, tensors
from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.models import get_model_info
from cnnbench.rf.field import Field, clip
from cnnbench.rf.rules import DEFORMABLE_NOTE
from cnnbench.rf.trace import Row, Tracer


@dataclass
class Analysis:
    name: str
    task: str
    size: tuple[int, int, int]
    rows: list[Row]
    notes: list[str]  # from operations outside any submodule
    grid_maps: list[tuple[str, Field]]  # maps a reshape flattened, and spatial model outputs

    def module_name(self, module: nn.Module) -> str:
        """The qualified name of a traced module (its rows may carry ``#2`` or ``[0]``)."""
        return self._module_names[module]

    @cached_property
    def _module_names(self) -> dict:
        names = {}
        for r in self.rows:
            names.setdefault(r.call[0], r.name.split("[")[0].split("#")[0])
        return names


def analyse(name: str, size=None, model_args=None) -> Analysis:
    """Trace registered model ``name`` on the meta device (no weights, no arithmetic), or on the
    CPU where an operation has no meta kernel."""
    size = tuple(size or get_model_info(name).input_size)
    return on_first_device(name, model_args, size, lambda model, info, device: analyse_module(
        model, size, info.name, info.task, device))


def analyse_module(model: nn.Module, size, name: str = "model", task: str = "",
                   device="cpu") -> Analysis:
    if len(size) != 3:  # the fields have two axes, h and w
        raise CnnbenchError(f"receptive fields are traced on images (C, H, W); "
                            f"{name} takes {tuple(size)}")
    tracer = Tracer(model)
    handles = tracer.hook()
    x = torch.zeros((1, *size), device=device)
    tracer.put(x, Field.input(size[1], size[2]))
    try:
        with eval_mode(model), torch.no_grad(), tracer:
            output = model(x)
    finally:
        for h in handles:
            h.remove()
    return Analysis(name, task, tuple(size), tracer.rows, tracer.frames[0],
                    _grid_maps(tracer, output))


def _grid_maps(tracer: Tracer, output) -> list[tuple[str, Field]]:
    last_row = {}  # a reshape or permute moves a field's axes but keeps them
    for row in tracer.rows:
        last_row[id(row.field.axes[0])] = row.name
    fields = list(tracer.grid_sources)
    fields += [f for f in map(tracer.field_of, tensors(output))
               if f is not None and f.dims is not None]
    maps, seen = [], set()
    for f in fields:
        if id(f.axes[0]) not in seen:
            seen.add(id(f.axes[0]))
            maps.append((last_row.get(id(f.axes[0]), "(model output)"), f))
    return maps


def pick(a: Analysis, layer: str | None) -> list[Row]:
    """The rows of ``layer`` (every row when None); a one-line error naming close matches."""
    if layer is None:
        return a.rows
    rows = [r for r in a.rows if r.name == layer or r.name.split("[")[0].split("#")[0] == layer]
    if not rows:
        names = [r.name for r in a.rows]
        raise CnnbenchError(f"{a.name} has no layer {layer!r}{did_you_mean(layer, names)}; "
                            "the table without --layer lists them")
    return rows


def _row_dict(row: Row, size) -> dict:
    f = row.field
    box = f.seen_box(size)
    whole = box == [[0, size[1] - 1], [0, size[2] - 1]]
    notes = list(row.notes)
    if f.dims is None and f.axes[0].n * f.axes[1].n > 1:
        notes.append("flattened: each element keeps its unit's field")
    notes += sorted(fl for fl in f.flags if not (fl == "deformable upstream" and
                                                  DEFORMABLE_NOTE in notes))
    return {"name": row.name, "type": row.type, **f.summary(),
            "output_size": [a.n for a in f.axes] if f.dims is not None else None,
            "seen": [b[1] - b[0] + 1 if b else 0 for b in box], "whole_input": whole,
            "notes": notes}


def receptive_fields(name: str, input_size=None, *, model_args: dict | None = None,
                     layer: str | None = None) -> dict:
    """Per layer of ``name``: receptive field, stride (jump) and start per axis (h, w).

    ``seen`` is the centre unit's field clipped to the input; ``start`` is the centre of the
    first unit's field and may be negative where padding extends it.
    """
    a = analyse(name, input_size, model_args)
    rows = [_row_dict(r, a.size) for r in pick(a, layer)]
    return {"model": a.name, "task": a.task, "input_size": list(a.size), "layers": rows,
            "notes": a.notes}


def module_fields(model: nn.Module, input_size) -> dict:
    """:func:`receptive_fields` for a model object (``input_size`` is ``(C, H, W)``)."""
    a = analyse_module(model, input_size)
    return {"model": a.name, "input_size": list(a.size),
            "layers": [_row_dict(r, a.size) for r in a.rows], "notes": a.notes}


def grid_view(name: str, input_size=None, *, model_args: dict | None = None) -> dict:
    """Which input region each cell of each feature map sees (the fast.ai lesson's view).

    The maps are those whose layout a head flattens into per-anchor predictions, and the
    spatial maps a model returns (FPN). Cell ``(i, j)`` sees rows ``rows[i]`` and columns
    ``cols[j]`` of the input, clipped to it.
    """
    a = analyse(name, input_size, model_args)
    maps = []
    for layer, f in a.grid_maps:
        h, w = f.axes
        rows = [clip(h.lo[i], h.hi[i], a.size[1]) for i in range(h.n)]
        cols = [clip(w.lo[j], w.hi[j], a.size[2]) for j in range(w.n)]
        same = next((m for m in maps if m["rows"] == rows and m["cols"] == cols), None)
        if same is not None:
            same["layers"].append(layer)
            continue
        maps.append({"layers": [layer], "grid": [h.n, w.n], **f.summary(),
                     "cell_pixels": [a.size[1] / h.n, a.size[2] / w.n],
                     "rows": rows, "cols": cols})
    if not maps:
        raise CnnbenchError(f"{a.name} has no grid of cells: no feature map is flattened into "
                            "per-cell predictions or returned (try a detection model, e.g. ssd)")
    return {"model": a.name, "task": a.task, "input_size": list(a.size), "maps": maps}
