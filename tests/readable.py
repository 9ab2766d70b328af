"""Whether a matplotlib figure can be read: every text measured with the renderer."""

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text


def drawn_texts(fig) -> list[tuple[Text, object]]:
    """Every non-empty text of the figure (its own, the legends', the axes' and their titles
    and tick labels where shown) with its extent in pixels."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    texts = [*fig.texts, *(t for legend in fig.legends for t in legend.get_texts())]
    for ax in fig.axes:
        texts += ax.texts
        if ax.axison:
            texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
            for axis in (ax.xaxis, ax.yaxis):  # the tick labels inside the view are drawn
                low, high = sorted(axis.get_view_interval())
                texts += [label for tick, label in zip(axis.get_ticklocs(),
                                                       axis.get_ticklabels())
                          if low - 1e-9 <= tick <= high + 1e-9]
        if ax.get_legend():
            texts += ax.get_legend().get_texts()
    return [(t, t.get_window_extent(renderer)) for t in texts
            if t.get_visible() and t.get_text().strip()]


def assert_readable(fig):
    """Every text inside the figure, no two overlapping, each caption within its tile."""
    texts = drawn_texts(fig)
    page = fig.bbox
    for text, box in texts:
        assert (page.x0 - 0.5 <= box.x0 and box.x1 <= page.x1 + 0.5 and page.y0 - 0.5 <= box.y0
                and box.y1 <= page.y1 + 0.5), f"{text.get_text()!r} leaves the figure"
    level = [(t, b) for t, b in texts if t.get_rotation() == 0]  # a rotated text's box is loose
    for i, (a, box_a) in enumerate(level):
        for b, box_b in level[i + 1:]:
            overlap = (min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0),
                       min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0))
            assert min(overlap) <= 0.5, f"{a.get_text()!r} overlaps {b.get_text()!r}"
    tiles = {ax.get_gid(): ax.get_window_extent() for ax in fig.axes}
    for text, box in texts:
        gid = text.get_gid() or ""
        if gid.startswith(("caption-", "box-label-")):
            tile = tiles[f"tile-{gid.rsplit('-', 1)[1]}"]
            assert tile.x0 - 0.5 <= box.x0 and box.x1 <= tile.x1 + 0.5, \
                f"{text.get_text()!r} is wider than its tile"
    return texts


def words(texts, gid=None) -> str:
    return " ".join(t.get_text().replace("\n", " ") for t, _ in texts
                    if gid is None or t.get_gid() == gid)
