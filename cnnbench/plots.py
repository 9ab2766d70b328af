"""Figures written as PNG files (matplotlib and Pillow are imported only when one is drawn)."""

from __future__ import annotations

import math
import textwrap

import numpy as np

from cnnbench.errors import CnnbenchError
from cnnbench.files import write_with

# The 50/90/99 % squares, in colours that stand out on the heat map and on the legend's grey.
MASS_COLOURS = {"50%": "white", "90%": "lime", "99%": "magenta"}
DIVERGE_VIEW = 4.0  # lr-find: the loss axis ends at this many times the smoothed minimum


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


def save_png(fig, path: str, dpi: int = 100) -> None:
    """``fig`` to ``path`` as a PNG, whole or not at all (``files.write_with``)."""
    try:
        write_with(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    except ValueError as exc:  # a figure matplotlib cannot draw (too large)
        raise CnnbenchError(f"cannot write {path}: {exc}") from None


def save_picture_png(picture, path) -> None:
    """A ``[3, H, W]`` tensor (uint8, or float in [0, 1]) as a PNG file, written atomically."""
    import torch
    from PIL import Image

    if picture.is_floating_point():
        picture = (picture.clamp(0, 1) * 255).round().to(torch.uint8)
    if picture.shape[0] == 1:
        picture = picture.expand(3, -1, -1)
    pixels = picture.permute(1, 2, 0).contiguous().cpu().numpy()
    write_with(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))


def save_confusion_png(matrix, names, path, title: str, normalize_rows: bool = False) -> None:
    """A confusion matrix (rows: true class, columns: predicted) as a heat map with its counts
    (fastai's ``plot_confusion_matrix``); ``normalize_rows`` colours each row's shares (pixel
    counts of very different sizes), the numbers stay counts."""
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.float64)
    k = len(names)
    shade = m / np.maximum(m.sum(1, keepdims=True), 1) if normalize_rows else m
    side = max(4.8, 0.55 * k + 2.5)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shade, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8,
                 label="share of the true class" if normalize_rows else "images")
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(k), names, fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    top = shade.max() if shade.size else 0
    for i in range(k):
        for j in range(k):
            count = m[i, j]
            text = f"{count:.0f}" if count < 10_000 else f"{count / 1000:.0f}k"
            ax.text(j, i, text, ha="center", va="center", fontsize="x-small",
                    color="white" if top and shade[i, j] > top / 2 else "black")
    ax.set_title(textwrap.fill(title, 70), fontsize="small")
    save_png(fig, path)


def save_lr_find_png(result: dict, path: str) -> None:
    """The learning-rate range test of :func:`cnnbench.training.lr_find.lr_find`: each step's
    loss (faint) and the smoothed loss against the learning rate (log axis), the suggestion
    marked with a dot and the minimum / 10 with a dashed line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    lrs = result["lrs"]
    ax.plot(lrs, result["losses"], color="0.75", linewidth=0.8, label="step loss")
    ax.plot(lrs, result["smoothed"], color="tab:blue", label="smoothed loss (beta 0.98)")
    suggested = result["suggested_lr"]
    at = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / suggested)))
    ax.plot([suggested], [result["smoothed"][at]], "o", color="tab:red", markersize=8,
            label=f"suggested lr {suggested:.2e} ({result['rule']})")
    ax.axvline(result["minimum_div10_lr"], color="tab:green", linestyle="--", linewidth=1,
               label=f"minimum / 10: {result['minimum_div10_lr']:.2e}")
    ax.set_xscale("log")
    finite = [v for v in result["smoothed"] if math.isfinite(v)]
    if finite:  # the diverging tail would squash the curve
        low, high = min(finite), min(max(finite), DIVERGE_VIEW * min(finite))
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low) + 1e-9)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    diverged = ", stopped: the loss diverged" if result["diverged"] else ""
    ax.set_title(f"lr-find {result['model']} ({result['optimizer']}, batch "
                 f"{result['batch_size']}): {result['steps']} steps{diverged}", fontsize="medium")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    save_png(fig, path)


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
