"""The dense tasks through the shared trainer: two training steps and every run artefact.

Tiny widths and sizes keep each run to seconds; the real recipes are experiments/<model>.yaml.
"""

import json

import pytest
import torch

from cnnbench import config as cfg
from cnnbench.errors import CnnbenchError
from cnnbench.train import Trainer

from test_scenes import _write_voc


@pytest.fixture(autouse=True)
def scene_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CNNBENCH_SCENES_CACHE", str(tmp_path_factory.getbasetemp() / "scenes"))


@pytest.fixture(scope="module", autouse=True)
def need_fashion_mnist():
    from cnnbench.data import fashion_mnist

    try:
        fashion_mnist.find_dir()
    except CnnbenchError:
        pytest.skip("Fashion-MNIST is not installed")


TINY = {"limit": 8, "val_size": 4, "epochs": 1, "batch_size": 4, "log_graph": False}
SMALL_FPN = {"layers": [1, 1, 1, 1], "out_channels": 16}
CASES = {
    # model: (model_args, extra config, the test metrics the run must report)
    "unet": ({"width": 4}, {}, ("miou", "pixel_acc")),
    "fpn-seg": ({**SMALL_FPN, "channels": 16}, {"scene_size": 32, "input_size": 32},
                ("miou",)),
    "ssd-resnet": ({"width": 4, "head_channels": 16}, {}, ("map50", "map")),
    "fpn": ({**SMALL_FPN, "head": "retinanet"},
            {"task": "detection", "scene_size": 32, "input_size": "1x32x32"}, ("map50", "map")),
    "single-object": ({"width": 4}, {}, ("acc", "box_iou")),
    "multi-label": ({"width": 4}, {}, ("f1", "map")),
}


def _run(model, model_args, extra, run_dir):
    overrides = {**TINY, **extra, "model_args": model_args}
    config = cfg.resolve(model, None, overrides)
    trainer = Trainer(config, run_dir)
    results = trainer.fit()
    return trainer, results


@pytest.mark.parametrize("model", list(CASES))
def test_dense_model_takes_two_steps_and_writes_its_run(model, tmp_path):
    model_args, extra, metrics = CASES[model]
    trainer, results = _run(model, model_args, extra, tmp_path / "run")
    run = tmp_path / "run"
    assert trainer.schedule.step_count == 2  # 8 training scenes in batches of 4
    for path in ("config.yaml", "metrics.jsonl", "results.json", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run / path).is_file(), path
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["train_loss"]))
    saved = json.loads((run / "results.json").read_text())
    for name in metrics:
        assert f"test_{name}" in saved, name
    assert saved["task"] == trainer.task.name


def test_detection_images_are_drawn(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    trainer, _ = _run("ssd-resnet", {"width": 4, "head_channels": 16}, {}, tmp_path / "run")
    images, targets = trainer.test_split.take(slice(0, 4))
    x, y = trainer.task.prepare(images, targets, train=False)
    with torch.no_grad():
        trainer.model.eval()
        output = trainer.model(x)
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        trainer.task.log_images(writer, 1, images, output, y, trainer.class_names)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("model,model_args", [("ssd-resnet", {"width": 4, "head_channels": 16}),
                                              ("unet", {"width": 4})])
def test_voc_data_trains_a_colour_model(model, model_args, tmp_path):
    _write_voc(tmp_path / "voc")
    extra = {"data": f"voc:{tmp_path / 'voc'}", "limit": 4, "val_size": 1, "batch_size": 2,
             "input_size": "3x64x64"}
    trainer, results = _run(model, model_args, extra, tmp_path / "run")
    assert len(trainer.class_names) == 20
    assert trainer.train_split.images.shape[1:] == (3, 64, 64)
    assert (tmp_path / "run" / "results.json").is_file()


def test_missing_voc_folder_is_a_clear_error(tmp_path):
    config = cfg.resolve("unet", None, {**TINY, "data": f"voc:{tmp_path / 'none'}"})
    with pytest.raises(CnnbenchError, match="VOCdevkit"):
        Trainer(config, tmp_path / "run")
