"""`cnnbench eval` and `cnnbench predict` on tiny runs, and the test pass on best.pt."""

import json
import math
import shutil

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from cnnbench import recipe as cfg
from cnnbench.checkpoints import load_checkpoint
from cnnbench.data.fashion_mnist import CLASS_NAMES
from cnnbench.evaluate import FlipTTA, class_scores, evaluate
from cnnbench.predict import predict
from cnnbench.training.build import build_trainer
from cnnbench.train import resume_trainer, train
from cnnbench.training.loop import CancelFitException, Callback
from cli_run import cli
from readable import assert_readable, words

TINY = dict(limit=96, val_size=16, batch_size=16, epochs=3, optimizer="sgd", lr=0.05,
            momentum=0.9, log_graph=False, log_images=False)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FirstEpochBest(Callback):
    """Makes epoch 1 the monitor's best (runs before ``Checkpoint``), so best.pt and the last
    epoch's weights differ."""

    order = 35

    def after_epoch(self, trainer, row):
        row["val_acc"] = 1.0 if row["epoch"] == 1 else 0.0


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory, fmnist_dir):
    root = tmp_path_factory.mktemp("eval")
    (root / "none.yaml").write_text("")
    results = train("lenet", config_file=root / "none.yaml",
                    overrides={**TINY, "data": str(fmnist_dir)}, run_dir=root / "run",
                    callbacks=[FirstEpochBest()])
    return root / "run", results


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))




def assert_png(path, min_side=100):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) >= min_side and max(image.size) < 5000, image.size


def test_the_test_pass_runs_on_best_pt_and_says_which(lenet_run):
    run, results = lenet_run
    assert results["best_epoch"] == 1 and results["epochs"] == 3
    assert results["test_checkpoint"] == "best" and results["test_epoch"] == 1
    best = evaluate(run, "best", out=run.parent / "best")
    last = evaluate(run, "last", out=run.parent / "last")
    assert best["epoch"] == 1 and last["epoch"] == 3
    assert best["metrics"]["loss"] == results["test_loss"]
    assert last["metrics"]["loss"] != results["test_loss"]  # two more epochs moved the weights


class StopAfterFirst(Callback):
    order = 95

    def after_epoch(self, trainer, row):
        raise CancelFitException


def test_a_resumed_run_tests_the_best_pt_of_before_the_resume(tmp_path, fmnist_dir):
    (tmp_path / "none.yaml").write_text("")
    overrides = {**TINY, "data": str(fmnist_dir)}
    cut = train("lenet", config_file=tmp_path / "none.yaml", overrides=overrides,
                run_dir=tmp_path / "run", callbacks=[FirstEpochBest(), StopAfterFirst()])
    assert cut is None
    trainer = resume_trainer(tmp_path / "run")
    trainer.add_callbacks(FirstEpochBest())
    results = trainer.fit()
    assert results["epochs"] == 3 and (results["test_checkpoint"], results["test_epoch"]) == (
        "best", 1)
    assert evaluate(tmp_path / "run", out=tmp_path / "eval")["metrics"]["loss"] == \
        results["test_loss"]


def test_eval_json_equals_results_json_exactly(lenet_run, capsys, tmp_path):
    run, _ = lenet_run
    capsys.readouterr()
    assert cli(["eval", run, "--json", "--out", tmp_path]) == 0
    shown = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "results.json").read_text())
    tested = {k[5:]: v for k, v in saved.items() if k.startswith("test_")
              and k not in ("test_seconds", "test_checkpoint", "test_epoch")}
    assert tested.keys() == {"loss", "acc", "top5"}
    assert shown["metrics"] == tested  # bitwise: same checkpoint, data, batches and threads
    assert shown["checkpoint"] == "best" and shown["epoch"] == saved["test_epoch"]


def test_eval_on_data_of_other_classes_is_one_line_and_exit_2(lenet_run, tmp_path, capsys):
    from PIL import Image

    run, _ = lenet_run
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            Image.new("L", (28, 28), 128).save(tmp_path / "tree" / split / name / "0.png")
    before = listing(run)
    capsys.readouterr()
    assert cli(["eval", run, "--data", f"imagefolder:{tmp_path / 'tree'}", "--out",
                tmp_path / "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the data's classes (cat, dog) are not the checkpoint's" in err[0]
    assert listing(run) == before and not (tmp_path / "out").exists()


def test_checkpoints_carry_class_names_and_normalisation(lenet_run):
    run, _ = lenet_run
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run / "checkpoints" / name)
        assert state["class_names"] == CLASS_NAMES
        assert state["context"]["channels"] == 1 and state["context"]["mean"] == [0.2860]


def test_per_class_scores_are_those_of_the_confusion_matrix():
    # rows: actual, columns: predicted; class a: 3 right, 1 called b; class b: 4 right, 2 called a
    rows = class_scores(torch.tensor([[3, 1], [2, 4]]), ["a", "b"])
    assert rows[0] == {"class": "a", "precision": 3 / 5, "recall": 3 / 4,
                       "f1": pytest.approx(2 / 3), "support": 4}
    assert rows[1] == {"class": "b", "precision": 4 / 5, "recall": 4 / 6,
                       "f1": pytest.approx(8 / 11), "support": 6}
    never = class_scores(torch.tensor([[2, 0], [1, 0]]), ["a", "b"])[1]
    assert never["precision"] == 0 and never["recall"] == 0 and never["f1"] == 0


def test_eval_table_confusion_and_pictures_agree(lenet_run, tmp_path):
    run, _ = lenet_run
    before = listing(run)
    result = evaluate(run)  # pictures in RUN/eval: the one change in the run folder
    assert listing(run) == sorted(before + ["eval", "eval/confusion.png", "eval/top_losses.png"])
    confusion = torch.tensor(result["confusion_matrix"])
    assert confusion.sum() == result["images"] == 24
    assert result["metrics"]["acc"] == pytest.approx(float(confusion.trace()) / 24)
    rows = result["per_class"]
    assert [r["class"] for r in rows] == CLASS_NAMES
    assert [r["support"] for r in rows] == confusion.sum(1).tolist()
    assert all(r["recall"] == pytest.approx(float(confusion[i, i]) / max(1, r["support"]))
               for i, r in enumerate(rows))
    worst = result["top_losses"]
    assert len(worst) == 16 and worst == sorted(worst, key=lambda w: -w["loss"])
    assert all(w["loss"] == pytest.approx(-math.log(w["probability"]), rel=1e-4) for w in worst)
    assert_png(run / "eval" / "confusion.png", min_side=400)
    assert_png(run / "eval" / "top_losses.png", min_side=200)
    shutil.rmtree(run / "eval")


def test_flip_tta_averages_the_probabilities_of_image_and_mirror():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.randn(5, 1, 3, 4)
    tta = FlipTTA(model, lambda o: o)
    expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert torch.allclose(tta(x).softmax(1), expected, atol=1e-6)
    assert torch.allclose(tta(x).exp().sum(1), torch.ones(5))  # log-probabilities


def test_eval_with_tta_reports_it(lenet_run, tmp_path):
    run, results = lenet_run
    result = evaluate(run, tta=True, out=tmp_path)
    assert result["tta"] is True and 0 <= result["metrics"]["acc"] <= 1
    assert result["metrics"]["loss"] != results["test_loss"]


def test_predict_on_saved_test_images_gives_the_models_classes(lenet_run, tmp_path):
    run, _ = lenet_run
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    config = {**cfg.defaults(state["config"]["task"]), **state["config"]}
    trainer = build_trainer(config, callbacks=[], checkpoint=state)
    images, targets = trainer.test_split.take(slice(0, 6))
    output, _ = trainer.predict(images, targets)
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"test{i}.png")
        Image.fromarray(image[0].numpy()).save(files[-1])
    rows = predict(run, files, top=3, out=tmp_path / "drawn")
    probs = output.softmax(1)
    for row, p in zip(rows, probs):
        assert row["predictions"][0]["class"] == CLASS_NAMES[int(p.argmax())]
        assert row["predictions"][0]["score"] == pytest.approx(float(p.max()), abs=1e-6)
        assert len(row["predictions"]) == 3
        assert_png(tmp_path / "drawn" / f"{row['file'].rsplit('/', 1)[1]}", min_side=100)


def test_predict_reads_colour_and_other_sizes_as_the_training_data(lenet_run, tmp_path):
    run, _ = lenet_run
    Image.new("RGB", (90, 60), (200, 30, 30)).save(tmp_path / "red.jpg")
    (row,) = predict(run, [tmp_path / "red.jpg"], top=10)
    assert row["size"] == [90, 60] and len(row["predictions"]) == 10
    assert sum(p["score"] for p in row["predictions"]) == pytest.approx(1.0, abs=1e-5)


SMALL = {"scene_size": 32, "input_size": "1x32x32"}
DENSE = {  # model: (model_args, extra config, per-class column, smallest side of the picture)
    "unet": ({"width": 4}, SMALL, "iou", 60),
    "ssd-resnet": ({"width": 4, "head_channels": 16}, {}, "ap50", 150),
    "single-object": ({"width": 4}, SMALL, "recall", 60),
    "multi-label": ({"width": 4}, SMALL, "f1", 40),
}


@pytest.mark.usefixtures("scene_cache")
@pytest.mark.parametrize("model", list(DENSE))
def test_dense_eval_and_predict_draw_predictions_against_the_truth(model, tmp_path,
                                                                    fmnist_dir, monkeypatch):
    model_args, extra, column, side = DENSE[model]
    (tmp_path / "none.yaml").write_text("")
    overrides = {"limit": 8, "val_size": 4, "epochs": 1, "batch_size": 4, "log_graph": False,
                 "log_images": False, "data": str(fmnist_dir), "model_args": model_args,
                 **extra}
    results = train(model, config_file=tmp_path / "none.yaml", overrides=overrides,
                    run_dir=tmp_path / "run")
    drawn = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig),
                                                                 savefig(fig, *a, **k)))
    result = evaluate(tmp_path / "run", out=tmp_path / "eval")
    metrics = {k[5:]: v for k, v in results.items() if k.startswith("test_")
               and k not in ("test_seconds", "test_checkpoint", "test_epoch")}
    assert result["metrics"] == metrics
    assert len(result["per_class"]) == (11 if model == "unet" else 10)
    assert column in result["per_class"][0]
    assert_png(tmp_path / "eval" / "predictions.png", min_side=side)
    if model == "unet":  # the table holds every IoU that miou averages, background first
        ious = [r["iou"] for r in result["per_class"] if not math.isnan(r["iou"])]
        assert result["per_class"][0]["class"] == "background"
        assert sum(ious) / len(ious) == pytest.approx(result["metrics"]["miou"], abs=1e-4)
        assert result["per_class_note"].startswith(
            f"miou is the mean of the {len(ious)} IoUs above, background included")

    scene = tmp_path / "scene.png"
    Image.fromarray(torch.full((96, 96), 40, dtype=torch.uint8).numpy()).save(scene)
    (row,) = predict(tmp_path / "run", [scene], out=tmp_path / "drawn")
    assert_png(tmp_path / "drawn" / "scene.png", min_side=30)
    for fig in drawn:  # each picture titled, with its legend, no text clipped or overlapping
        texts = words(assert_readable(fig))
        assert texts.startswith(("run (", "scene.png: "))
        assert fig.legends or "confusion matrix" in texts and len(fig.axes) == 2  # colour bar
    boxes = [p["box"] for p in row["predictions"] if "box" in p]
    assert all(0 <= v <= 96 for box in boxes for v in box)


@pytest.fixture(scope="module")
def bad_world(lenet_run, tmp_path_factory):
    """Run folders with one thing wrong each, and a file that is not an image."""
    run, _ = lenet_run
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    shutil.copytree(run, root / "nobest")
    (root / "nobest" / "checkpoints" / "best.pt").unlink()
    shutil.copytree(run, root / "truncated")
    best = root / "truncated" / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:300])
    (root / "words.png").write_text("not a picture")
    (root / "afile").write_text("")
    return root


BAD = {  # id: (argv, a fragment of the one line)
    "unknown run": (["eval", "{root}/nothing"], "no run folder"),
    "not a run": (["eval", "{root}/empty"], "not a cnnbench run"),
    "missing checkpoint": (["eval", "{root}/nobest"], "no checkpoint at"),
    "corrupt checkpoint": (["eval", "{root}/truncated"], "truncated or damaged"),
    "checkpoint foo": (["eval", "{run}", "--checkpoint", "foo"], "best or last, not 'foo'"),
    "out under a file": (["eval", "{run}", "--out", "{root}/afile/x"], "is a file"),
    "predict not an image": (["predict", "{run}", "{root}/words.png", "--out", "{root}/d"],
                             "not an image Pillow can read"),
    "predict no file": (["predict", "{run}", "{root}/missing.png"], "no image file"),
    "predict checkpoint foo": (["predict", "{run}", "{root}/words.png", "--checkpoint", "foo"],
                               "best or last"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, bad_world, lenet_run, capsys):
    argv, fragment = BAD[case]
    run, _ = lenet_run
    argv = [a.format(root=bad_world, run=run) for a in argv]
    before, in_run = listing(bad_world), listing(run)
    capsys.readouterr()
    code = cli(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert listing(bad_world) == before and listing(run) == in_run
