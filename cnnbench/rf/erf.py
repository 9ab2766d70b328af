"""The effective receptive field (Luo et al., NeurIPS 2016): the gradient mass of the real
network's centre unit, averaged over inputs, beside the theoretical field."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cnnbench import inference
from cnnbench.building import build
from cnnbench.capture import capture
from cnnbench.checkpoints import read_checkpoint, state_dict_of
from cnnbench.errors import CnnbenchError
from cnnbench.rf.analysis import analyse, pick
from cnnbench.rf.field import clip, num

MASS_FRACTIONS = (0.5, 0.9, 0.99)


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a bare state dict or the trainer's ``{"model": state_dict, ...}`` into ``model``,
    every tensor (a cnnbench run's checkpoint goes through :func:`trained_model` instead)."""
    state = state_dict_of(read_checkpoint(path), path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CnnbenchError(f"{path} does not fit this model: {first}") from None


def trained_model(name: str, path: str, model_args: dict | None):
    """``(model, its options, its input size)`` of a cnnbench run folder or checkpoint, through
    the inference loader (its own classes and options, on the CPU); None for another file."""
    if not Path(path).is_dir():
        saved = read_checkpoint(path)
        if not (isinstance(saved, dict) and isinstance(saved.get("config"), dict)):
            return None  # a bare state dict
    loaded = inference.load(path, overrides={"device": "cpu"})
    if loaded.config["model"] != name:
        raise CnnbenchError(f"{path} holds a {loaded.config['model']}, not a {name}")
    options = {**loaded.task.context.model_args, **loaded.config["model_args"]}
    differ = [k for k, v in (model_args or {}).items() if options.get(k, v) != v]
    if differ:
        raise CnnbenchError(f"{path} was trained with {differ[0]}={options[differ[0]]}, not "
                            f"{model_args[differ[0]]}: leave -m {differ[0]} out")
    return loaded.model, options, loaded.input_size


def _erf_inputs(source: str, n: int, size, seed: int) -> tuple[torch.Tensor, str]:
    """``n`` inputs: Fashion-MNIST test images (resized, standardised) or Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = size
    if source in ("auto", "fashion-mnist"):
        try:
            from cnnbench.data.fashion_mnist import load_split

            images = load_split("test")[0]
            pick_ = torch.randperm(images.shape[0], generator=g)[:n]
            x = images[pick_].float() / 255
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            x = ((x - x.mean()) / x.std()).expand(-1, c, -1, -1).contiguous()
            return x, f"{n} Fashion-MNIST test images"
        except (ImportError, CnnbenchError, OSError) as exc:
            if source == "fashion-mnist":
                raise CnnbenchError(f"Fashion-MNIST is not available: {exc}") from None
            reason = str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
            from cnnbench import render

            render.err.print(f"Fashion-MNIST not available ({reason}); using random inputs")
    elif source != "random":
        raise CnnbenchError(f"unknown --data {source!r}: use auto, fashion-mnist or random")
    return torch.randn((n, c, h, w), generator=g), f"{n} random N(0, 1) inputs"


def effective_field(name: str, input_size=None, *, model_args: dict | None = None,
                    layer: str | None = None, samples: int = 32, checkpoint: str | None = None,
                    data: str = "auto", seed: int = 0) -> dict:
    """The mean |gradient| of a layer's centre unit with respect to the input, over inputs.

    The centre unit is the one whose field is centred on the input, or the nearest to it
    (``unit_centre``, ``centred``). Returns the heat map and the smallest squares centred where
    the unit's field is (``mass_boxes``, and their ``mass_sides``) that hold 50, 90 and 99 % of
    the gradient mass, beside the theoretical field. The default layer is the last one still
    laid out as a map larger than 1x1.
    """
    if samples < 1:
        raise CnnbenchError("--samples must be >= 1")
    trained = trained_model(name, checkpoint, model_args) if checkpoint else None
    if trained is not None:  # the run's own options; its input size unless one is given
        model_args, input_size = trained[1], input_size or trained[2]
    a = analyse(name, input_size, model_args)
    if layer is None:
        maps = [r for r in a.rows if r.field.dims is not None]
        big = [r for r in maps if r.field.axes[0].n * r.field.axes[1].n > 1]
        if not maps:
            raise CnnbenchError(f"{a.name} has no spatial layer")
        row = (big or maps)[-1]
    else:
        row = pick(a, layer)[0]
    if row.field.dims is None:
        raise CnnbenchError(f"layer {row.name} is flattened: no centre unit (pick a map layer)")
    if trained is not None:
        model = trained[0]
    else:
        torch.manual_seed(seed)  # the same untrained weights on every run
        model, _ = build(name, model_args, in_channels=a.size[0], device="cpu")
        if checkpoint:
            load_checkpoint(model, checkpoint)
    model.eval()
    x, described = _erf_inputs(data, samples, a.size, seed)
    x.requires_grad_(True)
    where = (a.module_name(row.call[0]), *row.call[1:])
    out = capture(model, x, [where])[where]
    unit = row.field.centred_unit(a.size)
    sel = [slice(None)] * out.dim()
    for d, u in zip(row.field.dims, unit):
        sel[d] = u
    (grad,) = torch.autograd.grad(out[tuple(sel)].sum(), x)
    heat = grad.abs().sum(1).mean(0).double()
    unit_centre = [float(ax.centres()[u]) for ax, u in zip(row.field.axes, unit)]
    centre = [min(max(round(c), 0), n - 1) for c, n in zip(unit_centre, a.size[1:])]
    total = float(heat.sum())
    boxes = {f"{round(frac * 100)}%": _mass_box(heat, unit_centre, frac * total)
             if total else None for frac in MASS_FRACTIONS}
    sides = {k: [b[1] - b[0] + 1 for b in box] if box else None for k, box in boxes.items()}
    seen_box = [clip(ax.lo[u], ax.hi[u], n) for ax, u, n in zip(row.field.axes, unit, a.size[1:])]
    return {"model": a.name, "input_size": list(a.size), "layer": row.name, "type": row.type,
            "unit": list(unit), "unit_centre": [num(c) for c in unit_centre],
            "centred": all(abs(c - (n - 1) / 2) < 1e-9
                           for c, n in zip(unit_centre, a.size[1:])),
            "centre": centre, "inputs": described,
            "checkpoint": checkpoint, **row.field.summary(),
            "seen": [b[1] - b[0] + 1 if b else 0 for b in seen_box],
            "seen_box": seen_box, "mass_sides": sides, "mass_boxes": boxes,
            "heat": heat.tolist()}


def _mass_box(heat: torch.Tensor, centre, mass: float) -> list:
    """Rows and columns ``[[r0, r1], [c0, c1]]`` of the smallest square centred on ``centre``
    (input pixels; between two pixels for an even-sized field), clipped to the input, whose
    pixels hold ``mass``."""
    h, w = heat.shape
    for k in range(max(h, w)):
        box = [[max(math.floor(c) - k, 0), min(math.ceil(c) + k, n - 1)]
               for c, n in zip(centre, (h, w))]
        (r0, r1), (c0, c1) = box
        if float(heat[r0:r1 + 1, c0:c1 + 1].sum()) >= mass * (1 - 1e-9):
            return box
    return [[0, h - 1], [0, w - 1]]
