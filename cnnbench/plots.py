"""Figures written as PNG files (matplotlib is imported only when one is drawn)."""

from __future__ import annotations

import textwrap

import numpy as np

from cnnbench.errors import CnnbenchError

# The 50/90/99 % squares, in colours that stand out on the heat map and on the legend's grey.
MASS_COLOURS = {"50%": "white", "90%": "lime", "99%": "magenta"}


def _hw(pair) -> str:
    return "x".join(f"{v:g}" for v in pair)


def save_erf_png(erf: dict, path: str) -> None:
    """The effective receptive field of :func:`cnnbench.rf.effective_field` as a picture.

    The mean |gradient| (square-root colour scale, with its colour bar) on axes in input pixels,
    the theoretical field clipped to the input (dashed cyan), the squares holding 50, 90 and 99 %
    of the gradient mass, and the centre unit; the legend names each with its size.
    """
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    heat = np.asarray(erf["heat"], dtype=np.float64)
    h, w = heat.shape
    peak = heat.max()
    fig = Figure(figsize=(6.4, 7.2), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(heat / peak if peak > 0 else heat, cmap="inferno",
                      norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest",
                      extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    fig.colorbar(image, ax=ax, shrink=0.8,
                 label="mean |gradient| / its largest value (square-root scale)")

    def square(rows, cols, **style):
        ax.add_patch(Rectangle((cols[0] - 0.5, rows[0] - 0.5), cols[1] - cols[0] + 1,
                               rows[1] - rows[0] + 1, fill=False, **style))

    ry, rx = erf["seen_box"]
    if ry and rx:
        square(ry, rx, edgecolor="cyan", linewidth=2, linestyle="--",
               label=f"theoretical field {_hw(erf['receptive_field'])} "
                     f"({_hw(erf['seen'])} inside the input)")
    for key, colour in MASS_COLOURS.items():
        box = erf["mass_boxes"].get(key)
        if box:
            square(*box, edgecolor=colour, linewidth=1.2,
                   label=f"square holding {key} of |gradient|: {_hw(erf['mass_sides'][key])}")
    unit, (uy, ux) = tuple(erf["unit"]), erf["unit_centre"]
    ax.plot([ux], [uy], marker="+", markersize=12, color="cyan", linestyle="none",
            label=f"centre of unit {unit}'s field: ({uy:g}, {ux:g})")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xlabel("input column (px)")
    ax.set_ylabel("input row (px)")
    fig.suptitle(f"{erf['model']} layer {erf['layer']} ({erf['type']}): effective receptive field")
    fig.legend(loc="outside lower center", facecolor="0.3", labelcolor="white", fontsize="small")
    weights = f"weights from {erf['checkpoint']}" if erf["checkpoint"] else "untrained weights"
    if erf["centred"]:
        where = f"Unit {unit}'s field is centred on the input, at pixel ({uy:g}, {ux:g})"
    else:
        middle = ", ".join(f"{(n - 1) / 2:g}" for n in erf["input_size"][1:])
        where = (f"No unit's field is centred on the input ({middle}); unit {unit}'s is the "
                 f"nearest, at pixel ({uy:g}, {ux:g})")
    caption = f"{erf['inputs']}, {weights}. {where}."
    ax.set_title(textwrap.fill(caption, 80), fontsize="small")
    save_png(fig, path)


def save_png(fig, path: str) -> None:
    """``fig`` to ``path`` atomically (drawn aside, then renamed into place)."""
    import os
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise CnnbenchError(f"cannot write {path}: {exc}") from None


def save_curves_png(comparison: dict, path: str) -> None:
    """The learning curves of :func:`cnnbench.training.runs.compare_runs`: training loss and the
    monitored validation metric per epoch, one line per run (labelled with the keys that
    differ), on shared epoch axes."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    loss_ax, val_ax = fig.subplots(1, 2, sharex=True)
    monitors = sorted({r["monitor"] for r in comparison["runs"]})
    for r in comparison["runs"]:
        curves = r["curves"]
        said = [f"{k}={v}" for k, v in r["settings"].items() if f"{k}={v}" not in r["run"]]
        label = r["run"] + (f" ({', '.join(said[:4])})" if said else "")
        line, = loss_ax.plot(curves["epoch"], curves["train_loss"], marker="o", label=label)
        val_ax.plot(curves["epoch"], curves[f"val_{r['monitor']}"], marker="o",
                    color=line.get_color(), label=label)
    loss_ax.set_title("training loss")
    loss_ax.set_ylabel("loss (mean over the epoch)")
    val_ax.set_title(f"validation {', '.join(monitors)}")
    val_ax.set_ylabel(", ".join(monitors))
    for ax in (loss_ax, val_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.legend(*loss_ax.get_legend_handles_labels(), loc="outside lower center",
               fontsize="small")
    save_png(fig, path)
