"""Figures written as PNG files (matplotlib and Pillow are imported only when one is drawn)."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

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


def save_png(fig, path: str) -> None:
    """``fig`` to ``path`` as a PNG, whole or not at all (``files.write_with``)."""
    try:
        write_with(path, lambda f: fig.savefig(f, format="png", dpi=100))
    except ValueError as exc:  # a figure matplotlib cannot draw (too large)
        raise CnnbenchError(f"cannot write {path}: {exc}") from None


def save_confusion_png(matrix, names, path, title: str, normalize_rows: bool = False) -> None:
    """A confusion matrix (rows: true class, columns: predicted) as a heat map with its counts
    (fastai's ``plot_confusion_matrix``); ``normalize_rows`` colours each row's shares (pixel
    counts of very different sizes), the numbers stay counts."""
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.float64)
    k = len(names)
    shade = m / np.maximum(m.sum(1, keepdims=True), 1) if normalize_rows else m
    side = max(4.8, 0.55 * k + 2.5)
    names_in = 0.075 * max((len(n) for n in names), default=0)  # room for the tick labels
    fig = Figure(figsize=(side + 1.2 + names_in, side + 0.9 * names_in), dpi=DPI,
                 layout="constrained")
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
    fig.suptitle(_fit(fig, title, 10), fontsize=10)  # centred on the figure, not the axes
    save_png(fig, path)


def _fit(fig, text: str, points: float) -> str:
    """``text`` wrapped to the width of ``fig`` (measured by its renderer)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.font_manager import FontProperties

    renderer = FigureCanvasAgg(fig).get_renderer()
    font = FontProperties(size=points)
    return "\n".join(_wrap(text, fig.bbox.width - 2 * MARGIN_PX, lambda s: renderer.
                           get_text_width_height_descent(s, font, ismath=False)[0]))


def save_lr_find_png(result: dict, path: str) -> None:
    """The learning-rate range test of :func:`cnnbench.training.lr_find.lr_find`: each step's
    loss (faint) and the smoothed loss against the learning rate (log axis), the suggestion
    (valley) marked with a dot, the steepest descent with a triangle and the minimum / 10 with a
    dashed line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    lrs = result["lrs"]
    ax.plot(lrs, result["losses"], color="0.75", linewidth=0.8, label="step loss")
    ax.plot(lrs, result["smoothed"], color="tab:blue", label="smoothed loss (beta 0.98)")

    def mark(lr, style, colour, label):
        at = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / lr)))
        ax.plot([lr], [result["smoothed"][at]], style, color=colour, markersize=8, label=label)

    mark(result["suggested_lr"], "o", "tab:red",
         f"suggested lr {result['suggested_lr']:.2e} ({result['rule']})")
    if result.get("steepest_lr") is not None:
        mark(result["steepest_lr"], "^", "tab:orange",
             f"steepest descent {result['steepest_lr']:.2e}")
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
    epochs = [e for r in comparison["runs"] for e in r["curves"]["epoch"]] or [1]
    pad = max(0.5, 0.03 * (max(epochs) - min(epochs)))  # one epoch: a point between two halves
    for ax in (loss_ax, val_ax):
        ax.set_xlim(min(epochs) - pad, max(epochs) + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(f"learning curves of {len(comparison['runs'])} runs")
    fig.legend(*loss_ax.get_legend_handles_labels(), loc="outside lower center",
               fontsize="small")
    save_png(fig, path)


# -- picture grids: eval's and predict's pictures --
#
# Laid out by hand in pixels (at DPI) rather than by matplotlib's layout engines: every text is
# measured with the renderer first, so captions wrap to their tile's width, box labels are placed
# where they overlap nothing, and the figure is made as large as what it holds.

DPI = 100
TRUTH, PREDICTION = "#007800", "#d20000"  # green and red (TensorBoard captions use the same)
TILE_PX, GAP_PX, MARGIN_PX, MIN_WIDTH_PX = 150, 14, 10, 380
TITLE_PT, LABEL_PT, CAPTION_PT, BOX_PT, LEGEND_PT = 11, 9, 8, 7, 8
MOST_BOXES, MOST_MOVED = 10, 3  # predicted boxes drawn on a tile; labels moved to its caption


@dataclass(frozen=True)
class Box:
    """A box drawn on a tile: ``xyxy`` in fractions of the image, its label, truth or not."""

    xyxy: tuple
    label: str
    truth: bool


@dataclass(frozen=True)
class Tile:
    """One image of a grid: uint8 ``[C, H, W]`` pixels, caption lines ``(text, colour)`` under
    it, and boxes drawn on it (a label with no free place on the image joins the caption)."""

    image: object
    caption: tuple = ()
    boxes: tuple = ()


@dataclass(frozen=True)
class Swatch:
    """A legend entry: ``kind`` "fill" (a colour key, a text colour) or "box" (a box outline)."""

    label: str
    colour: object
    kind: str = "fill"


@dataclass(frozen=True)
class Grid:
    """A picture grid and what it shows (``what`` ends the figure's title)."""

    tiles: list
    what: str
    legend: tuple = ()
    row_labels: tuple = ()
    ncols: int = 8


def box_legend(truth: bool = True, predicted: str = "prediction") -> tuple:
    """The legend of pictures with boxes: which outline is the truth, which the model's."""
    return (*((Swatch("true box and class", TRUTH, "box"),) if truth else ()),
            Swatch(predicted, PREDICTION, "box"))


def box_tile(image, true_boxes, true_names, boxes, names, threshold: float | None = None,
             most: int = MOST_BOXES) -> Tile:
    """A tile of ``image`` with its true boxes and the ``most`` first predicted ones (``xyxy``
    fractions, best first); with ``threshold``, a tile with no predicted box says that none
    scored that much."""
    drawn = [*(Box(tuple(map(float, b)), n, True) for b, n in zip(true_boxes, true_names)),
             *(Box(tuple(map(float, b)), n, False) for b, n in zip(boxes[:most], names))]
    caption = ()
    if threshold is not None and not len(boxes):
        caption = ((f"no detection scored \u2265 {threshold:.2f}", PREDICTION),)
    elif len(boxes) > most:
        caption = ((f"{len(boxes) - most} more detections not drawn", PREDICTION),)
    return Tile(image, caption, tuple(drawn))


def _colour(colour):
    return tuple(v / 255 for v in colour) if isinstance(colour, tuple) else colour


def grid_figure(grid: Grid, title: str):
    """The matplotlib figure of ``grid`` under ``title``: tiles in rows (with ``row_labels`` on
    the left), each caption wrapped to its tile, and the legend (colour key) at the bottom."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import Patch, Rectangle

    fig = Figure(dpi=DPI)
    renderer = FigureCanvasAgg(fig).get_renderer()

    def measure(text: str, points: float) -> float:
        return renderer.get_text_width_height_descent(text, FontProperties(size=points),
                                                      ismath=False)[0]

    def line_px(points: float) -> float:
        return points * DPI / 72 * 1.3

    def wrap(text: str, limit: float, points: float) -> list[str]:
        return _wrap(text, limit, lambda s: measure(s, points))

    tiles, ncols = grid.tiles, max(1, min(grid.ncols, len(grid.tiles)))
    nrows = math.ceil(len(tiles) / ncols)
    h, w = tiles[0].image.shape[-2:]
    tile_w, tile_h = TILE_PX, round(TILE_PX * h / w)
    labels = [wrap(label, 110, LABEL_PT) for label in grid.row_labels]
    label_w = max((measure(s, LABEL_PT) for lines in labels for s in lines), default=-GAP_PX)
    label_w = math.ceil(label_w) + GAP_PX
    grid_w = label_w + ncols * tile_w + (ncols - 1) * GAP_PX
    inner = max(grid_w, MIN_WIDTH_PX)
    fig_w = inner + 2 * MARGIN_PX

    placed, captions = [], []
    for tile in tiles:
        on_image, moved = _place_labels(tile.boxes, tile_w, tile_h,
                                        lambda s: measure(s, BOX_PT), line_px(BOX_PT))
        placed.append(on_image)
        lines = [*tile.caption, *((f"{'true' if b.truth else 'pred'} {b.label}",
                                   TRUTH if b.truth else PREDICTION) for b in moved[:MOST_MOVED])]
        if len(moved) > MOST_MOVED:
            lines.append((f"{len(moved) - MOST_MOVED} more labels with no room", "black"))
        captions.append([(s, colour) for text, colour in lines
                         for s in wrap(text, tile_w, CAPTION_PT)])
    caption_h = [max(len(c) for c in captions[r * ncols:(r + 1) * ncols]) * line_px(CAPTION_PT)
                 for r in range(nrows)]

    title_lines = wrap(title, inner, TITLE_PT)
    handles = [Patch(facecolor="none", edgecolor=_colour(s.colour), linewidth=1.5)
               if s.kind == "box" else Patch(facecolor=_colour(s.colour), edgecolor="0.4")
               for s in grid.legend]
    names = ["\n".join(wrap(s.label, inner - 40, LEGEND_PT)) for s in grid.legend]
    legend, legend_h = None, 0.0
    for columns in range(len(handles), 0, -1):  # as many columns as fit the width
        legend = fig.legend(handles, names, ncols=columns, fontsize=LEGEND_PT, frameon=False,
                            loc="lower center", handlelength=1.5, columnspacing=1.2)
        box = legend.get_window_extent(renderer)
        if box.width <= inner or columns == 1:
            legend_h = box.height + GAP_PX / 2
            break
        legend.remove()

    title_h = len(title_lines) * line_px(TITLE_PT) + GAP_PX / 2
    fig_h = (2 * MARGIN_PX + title_h + sum(caption_h) + nrows * tile_h + (nrows - 1) * GAP_PX
             + legend_h)
    fig.set_size_inches(fig_w / DPI, fig_h / DPI)

    def at(x: float, y: float) -> tuple[float, float]:  # pixels from the top left -> fractions
        return x / fig_w, 1 - y / fig_h

    fig.text(*at(fig_w / 2, MARGIN_PX), "\n".join(title_lines), ha="center", va="top",
             fontsize=TITLE_PT, linespacing=1.3, parse_math=False)
    left = MARGIN_PX + (inner - grid_w) / 2
    top = MARGIN_PX + title_h
    for r in range(nrows):
        if r < len(labels):
            fig.text(*at(left, top + tile_h / 2), "\n".join(labels[r]), ha="left", va="center",
                     fontsize=LABEL_PT, fontweight="bold", parse_math=False)
        for c in range(ncols):
            i = r * ncols + c
            if i >= len(tiles):
                break
            x = left + label_w + c * (tile_w + GAP_PX)
            ax = fig.add_axes((x / fig_w, 1 - (top + tile_h) / fig_h, tile_w / fig_w,
                               tile_h / fig_h), gid=f"tile-{i}")
            pixels = np.asarray(tiles[i].image, dtype=np.uint8)
            pixels = np.repeat(pixels, 3, 0) if pixels.shape[0] == 1 else pixels
            ax.imshow(pixels.transpose(1, 2, 0), interpolation="nearest", aspect="auto",
                      extent=(0, 1, 1, 0))
            ax.set_xlim(0, 1)
            ax.set_ylim(1, 0)
            ax.set_axis_off()
            for b in tiles[i].boxes:
                (x0, x1), (y0, y1) = sorted(b.xyxy[0::2]), sorted(b.xyxy[1::2])
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=1.5,
                                       edgecolor=TRUTH if b.truth else PREDICTION))
            for b, (lx, ly) in placed[i]:
                ax.text(lx / tile_w, ly / tile_h, b.label, ha="left", va="top",
                        fontsize=BOX_PT, color=TRUTH if b.truth else PREDICTION,
                        parse_math=False, gid=f"box-label-{i}",
                        bbox={"boxstyle": "square,pad=0.1", "facecolor": "white",
                              "alpha": 0.75, "edgecolor": "none"})
            for k, (text, colour) in enumerate(captions[i]):
                fig.text(*at(x, top + tile_h + 2 + k * line_px(CAPTION_PT)), text,
                         color=_colour(colour), ha="left", va="top", fontsize=CAPTION_PT,
                         parse_math=False, gid=f"caption-{i}")
        top += tile_h + caption_h[r] + GAP_PX
    if legend is not None:
        legend.set_bbox_to_anchor((0.5, MARGIN_PX / fig_h), transform=fig.transFigure)
    return fig


def _wrap(text: str, limit: float, width) -> list[str]:
    """``text`` in lines no wider than ``limit`` (``width(s)`` in pixels): at spaces, and a word
    too long for a line cut where it must."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        joined = f"{line} {word}" if line else word
        if width(joined) <= limit:
            line = joined
            continue
        if line:
            lines.append(line)
        while width(word) > limit and len(word) > 1:
            cut = max([k for k in range(1, len(word)) if width(word[:k]) <= limit], default=1)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    return [*lines, line]


def _place_labels(boxes, tile_w: float, tile_h: float, width, height: float):
    """``([(box, (x, y))], [box])``: each box's label at the first free place inside the tile
    (a true box's label inside its top edge, else above it; a prediction's under its bottom
    edge, else inside it), overlapping no other label; the labels with no such place."""
    taken: list[tuple] = []
    placed, moved = [], []
    for b in boxes:
        (x0, _), (y0, y1) = (sorted(v * s for v in b.xyxy[i::2])
                              for i, s in ((0, tile_w), (1, tile_h)))
        w, h = width(b.label) + 3, height
        inside_top, above, under, inside_bottom = y0 + 1, y0 - h - 1, y1 + 1, y1 - h - 1
        spots = (inside_top, above, under, inside_bottom) if b.truth else \
            (under, inside_bottom, above, inside_top)
        for y in spots:
            x = min(max(x0 + 1, 1), tile_w - w)
            spot = (x, y, x + w, y + h)
            if x >= 0 and y >= 0 and spot[3] <= tile_h and not any(
                    spot[0] < t[2] and t[0] < spot[2] and spot[1] < t[3] and t[1] < spot[3]
                    for t in taken):
                taken.append(spot)
                placed.append((b, (x + 1.5, y)))
                break
        else:
            moved.append(b)
    return placed, moved
