"""The pictures cnnbench writes can be read: a title, labelled rows or axes, a legend or colour
key, and no text clipped or lying over another (measured with matplotlib's renderer)."""

import pytest
import torch
from matplotlib.figure import Figure

from cnnbench import plots, rf
from cnnbench.plots import PREDICTION, TRUTH, Box, Grid, Swatch, Tile, box_tile, grid_figure
from cnnbench.tasks.segmentation import colour_key, overlay_masks, palette
from readable import assert_readable, words

LONG = "a very long class name that would be clipped"
NAMES = ["T-shirt/top", "Trouser", LONG, "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"]


def fmnist_like(n, side=28):
    return (torch.rand(n, 1, side, side) * 255).to(torch.uint8)


def test_long_captions_wrap_to_the_tile_width_and_keep_every_word():
    tiles = [Tile(image, ((f"pred {LONG}", PREDICTION), ("true Sneaker", TRUTH),
                          ("loss 3.21, p(true) 0.04", "black")))
             for image in fmnist_like(10)]
    legend = (Swatch("predicted class", PREDICTION), Swatch("true class", TRUTH))
    fig = grid_figure(Grid(tiles, "the 10 highest losses", legend),
                      f"run (lenet), best.pt of epoch 1: the 10 highest losses, {LONG} " * 3)
    texts = assert_readable(fig)
    assert words(texts, "caption-0") == f"pred {LONG} true Sneaker loss 3.21, p(true) 0.04"
    assert len([t for t, _ in texts if t.get_gid() == "caption-0"]) > 3  # it was wrapped
    assert "predicted class" in words(texts) and "true class" in words(texts)
    assert fig.texts[0].get_text().count("\n") >= 1  # the long title wrapped too
    assert len(fig.axes) == 10 and fig.get_size_inches()[0] * plots.DPI < 1500


def test_box_labels_sit_apart_and_an_empty_tile_says_nothing_passed():
    scene = (torch.rand(3, 32, 32) * 255).to(torch.uint8)
    same = torch.tensor([[0.3, 0.3, 0.6, 0.6]])
    tiles = [
        box_tile(scene, same, ["Trouser"], same, ["Trouser 0.91"]),  # one box, two labels
        box_tile(scene, torch.tensor([[0.0, 0.85, 0.3, 1.0]]), ["Bag"],  # at the bottom edge
                 torch.tensor([[0.0, 0.86, 0.3, 1.0], [0.02, 0.0, 0.3, 0.1]]),
                 ["Bag 0.50", "Coat 0.40"]),
        box_tile(scene, same, [LONG], torch.zeros(0, 4), [], threshold=0.3),
        box_tile(scene, [], [], torch.rand(25, 4).sort(1).values, ["Shirt 0.9"] * 25,
                 threshold=0.3),
    ]
    fig = grid_figure(Grid(tiles, "boxes", plots.box_legend(), ncols=4), "boxes")
    texts = assert_readable(fig)
    assert words(texts, "box-label-0") == "Trouser Trouser 0.91"
    assert sorted(t.get_text() for t, _ in texts if t.get_gid() == "box-label-1") == \
        ["Bag", "Bag 0.50", "Coat 0.40"]
    # The long name fits no place on the image: it joins the caption, whole.
    assert words(texts, "caption-2") == f"no detection scored \u2265 0.30 true {LONG}"
    assert words(texts, "caption-3").startswith("15 more detections not drawn")
    assert len(fig.axes[3].patches) == 10
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["true box and class",
                                                                 "prediction"]


def test_segmentation_rows_are_labelled_and_every_class_has_its_colour():
    k = len(NAMES) + 1
    masks = torch.arange(k).repeat_interleave(3)[:32].expand(32, 32)[None].expand(4, -1, -1)
    images = fmnist_like(4, 32)
    rows = torch.cat([overlay_masks(images, masks, k), overlay_masks(images, masks.flip(-1), k)])
    grid = Grid([Tile(r) for r in rows], "masks", colour_key(NAMES),
                row_labels=("prediction", "truth"), ncols=4)
    fig = grid_figure(grid, "unet: predicted and true masks of the first 4 images")
    texts = assert_readable(fig)
    assert [t.get_text() for t in fig.texts[1:] if t.get_text() in ("prediction", "truth")] == \
        ["prediction", "truth"]
    legend = fig.legends[0]
    assert [t.get_text().replace("\n", " ") for t in legend.get_texts()] == NAMES
    key = [tuple(round(v * 255) for v in h.get_facecolor()[:3]) for h in legend.legend_handles]
    assert key == palette(k)[1:]  # the legend's colours are the tints' colours
    assert words(texts).startswith("unet: predicted and true masks")


def test_one_epoch_curves_show_the_point_on_an_integer_tick(monkeypatch):
    saved = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: saved.append(fig))
    runs = [{"run": name, "monitor": "acc", "settings": {"lr": lr},
             "curves": {"epoch": [1], "train_loss": [loss], "val_acc": [0.7]}}
            for name, lr, loss in (("a", 0.1, 0.5), ("b", 0.2, 0.6))]
    plots.save_curves_png({"runs": runs}, "unused.png")
    (fig,) = saved
    assert_readable(fig)
    assert fig.get_suptitle() == "learning curves of 2 runs"
    for ax in fig.axes:
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if low <= t <= high]
        assert shown == [1.0] and low < 1 < high
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()


def test_confusion_matrix_of_long_names_stays_inside_the_figure(tmp_path, monkeypatch):
    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig),
                                                                 real(fig, *a, **k)))
    matrix = torch.randint(0, 50, (10, 10))
    plots.save_confusion_png(matrix, NAMES, tmp_path / "confusion.png",
                             f"run (lenet), best.pt of epoch 1: confusion matrix, {LONG}")
    texts = assert_readable(saved[0])
    assert LONG in words(texts) and "predicted" in words(texts) and "actual" in words(texts)


def test_effective_field_picture_is_readable(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: saved.append(fig))
    erf = rf.effective_field("lenet", layer="3", samples=2, data="random")
    plots.save_erf_png(erf, str(tmp_path / "erf.png"))
    texts = assert_readable(saved[0])
    assert "effective receptive field" in words(texts)
    assert "input column (px)" in words(texts) and "input row (px)" in words(texts)


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_a_tile_with_no_box_says_so_only_for_a_detector(threshold):
    tile = box_tile(fmnist_like(1)[0], [], [], torch.zeros(0, 4), [], threshold=threshold)
    assert tile.boxes == ()
    assert tile.caption == (() if threshold is None else
                            (("no detection scored \u2265 0.30", PREDICTION),))
    assert Box((0, 0, 1, 1), "x", True).truth


def test_eval_and_predict_pictures_of_a_long_class_name_are_readable(tmp_path, monkeypatch):
    from PIL import Image

    from cnnbench.evaluate import evaluate
    from cnnbench.predict import predict
    from cnnbench.train import train

    names = ("Sneaker", LONG, "Bag")
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("test", 6)):
        for c, name in enumerate(names):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 120, (28, 28), generator=generator) + 60 * c
                Image.fromarray(pixels.to(torch.uint8).numpy()).save(
                    tmp_path / "tree" / split / name / f"{i}.png")
    (tmp_path / "none.yaml").write_text("")
    train("lenet", config_file=tmp_path / "none.yaml", run_dir=tmp_path / "run",
          overrides={"data": f"imagefolder:{tmp_path / 'tree'}", "epochs": 1, "batch_size": 8,
                     "val_size": 6, "log_graph": False, "log_images": False})
    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig),
                                                                 real(fig, *a, **k)))
    result = evaluate(tmp_path / "run", out=tmp_path / "eval")
    predict(tmp_path / "run", [tmp_path / "tree" / "test" / LONG / "0.png"],
            out=tmp_path / "drawn")
    confusion, worst, drawn = (assert_readable(fig) for fig in saved)
    assert set(result["pictures"]) == {"confusion", "top_losses"}
    assert "run (lenet), best.pt of epoch 1: confusion matrix (18 test images)" in words(confusion)
    assert LONG in words(confusion)  # a tick label, whole
    assert words(worst).startswith("run (lenet), best.pt of epoch 1: the 16 highest losses")
    assert LONG in " ".join(words(worst, f"caption-{i}") for i in range(16))
    assert words(drawn).startswith("0.png: top classes predicted by run (lenet, best.pt)")
    assert LONG in words(drawn, "caption-0")
