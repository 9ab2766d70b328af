"""``data_mode``: an image folder decoded into memory or streamed from its files in workers."""

import dataclasses
import json
import multiprocessing
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnbench import recipe as cfg
from cnnbench.data import stream
from cnnbench.data.sources import load_data
from cnnbench.data.stream import FileSplit
from cnnbench.tasks.classification import Classification
from cnnbench.tasks.segmentation import Segmentation
from cnnbench.errors import CnnbenchError
from cnnbench.train import train
from cnnbench.training.build import build_trainer
from cnnbench.training.interrupt import Interrupt, Interrupted
from cnnbench.training.loop import Callback
from cli_run import cli
from test_image_sources import own_cache, write_tree  # noqa: F401 - the fixture, used here too


@pytest.fixture
def tree(tmp_path):
    write_tree(tmp_path / "tree", splits=(("train", 14), ("test", 3)), shape=(32, 32, 3))
    return f"imagefolder:{tmp_path / 'tree'}"


def overrides(data, mode, **more):
    return {"data": data, "data_mode": mode, "epochs": 2, "batch_size": 8, "val_size": 6,
            "workers": 2, **more}


def test_stream_gives_the_same_pixels_and_targets_as_memory(tree):
    loaded = {mode: load_data(cfg.resolve("lenet", None, overrides(tree, mode)), Classification)
              for mode in ("memory", "stream")}
    assert isinstance(loaded["stream"].train, FileSplit)
    for split in ("train", "val", "test"):
        memory, streamed = getattr(loaded["memory"], split), getattr(loaded["stream"], split)
        order = torch.randperm(len(memory), generator=torch.Generator().manual_seed(1))
        batches = list(streamed.batches(order, range(0, len(memory), 5), 5))
        assert torch.equal(torch.cat([b[0] for b in batches]), memory.images[order])
        assert torch.equal(torch.cat([b[1] for b in batches]), memory.targets[order])


def test_lenet_trains_bitwise_alike_from_memory_and_from_a_stream(tree, keep_threads):
    """The issue's test: same seed, CPU, no augmentation: the same weights in both modes."""
    weights = {}
    for mode in ("memory", "stream"):
        trainer = build_trainer(cfg.resolve("lenet", None, overrides(tree, mode, threads=1)),
                                callbacks=[])
        trainer.fit()
        weights[mode] = trainer.model.state_dict()
    assert isinstance(trainer.train_split, FileSplit)
    assert weights["memory"].keys() == weights["stream"].keys()
    assert all(torch.equal(weights["memory"][k], weights["stream"][k]) for k in weights["memory"])
    first = build_trainer(cfg.resolve("lenet", None, overrides(tree, "memory")),
                          callbacks=[]).model.state_dict()
    assert not all(torch.equal(first[k], weights["memory"][k]) for k in first)  # it trained


def test_auto_streams_what_exceeds_the_budget_and_says_so_on_one_line(tree, monkeypatch):
    said = []
    monkeypatch.setattr(stream, "ANNOUNCE_FROM", 0)
    # 31 images x 3x28x28 bytes = 72,912 B: over a budget of 0.00005 GiB (53,687 B), within 1
    for budget, expected in ((0.00005, "stream"), (1.0, "memory")):
        config = cfg.resolve("lenet", None, overrides(tree, "auto", data_budget_gb=budget))
        assert stream.choose_mode(config, 31, (28, 28), 3, said.append) == expected
    assert said == [
        "data_mode auto: 31 images at 3x28x28 are 0.00 GiB decoded, over data_budget_gb 5e-05: "
        "stream",
        "data_mode auto: 31 images at 3x28x28 are 0.00 GiB decoded, within data_budget_gb 1: "
        "memory"]
    config = cfg.resolve("lenet", None, overrides(tree, "auto", data_budget_gb=0.00005))
    assert isinstance(load_data(config, Classification).train, FileSplit)


def test_stream_resumes_mid_epoch_bitwise(tree, tmp_path, keep_threads):
    """A run stopped after step 2 of epoch 1 and resumed ends with the uninterrupted weights."""

    class StopAfterTwoSteps(Callback):
        def after_step(self, trainer, step):
            if step.epoch == 1 and step.batch == 1:
                stop, = [c for c in trainer.callbacks if isinstance(c, Interrupt)]
                stop.request()  # as Ctrl-C does

    config = overrides(tree, "stream", threads=1)
    whole = build_trainer(cfg.resolve("lenet", None, config), callbacks=[])
    whole.fit()

    with pytest.raises(Interrupted):
        train("lenet", None, config, run_dir=tmp_path / "run", callbacks=[StopAfterTwoSteps()])
    assert cli(["train", "--resume", tmp_path / "run", "-q"]) == 0
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(resumed["model"][k], v) for k, v in whole.model.state_dict().items())


def test_a_killed_worker_stops_cleanly_and_resume_continues_bitwise(tree, tmp_path,
                                                                      keep_threads):
    """kill -9 of a DataLoader worker: one line, a checkpoint at the last whole step, and
    ``--resume`` ends with the weights of a run that was never stopped."""
    config = overrides(tree, "stream", threads=1, batch_size=4, prefetch=1)  # 9 steps an epoch
    whole = build_trainer(cfg.resolve("lenet", None, config), callbacks=[])
    whole.fit()
    before = {p.pid for p in multiprocessing.active_children()}  # other trainers' workers

    class KillAWorker(Callback):
        def after_step(self, trainer, step):
            if step.epoch == 1 and step.batch == 0:  # the training split's workers are new
                mine = [p for p in multiprocessing.active_children() if p.pid not in before]
                os.kill(mine[0].pid, signal.SIGKILL)

    with pytest.raises(CnnbenchError) as stop:
        train("lenet", None, config, run_dir=tmp_path / "run", callbacks=[KillAWorker()])
    # (the worker's death is seen while waiting for its batch, or while taking one it sent)
    assert re.fullmatch(r"a data-loading worker stopped \(.+\): checkpoint written in epoch 1 "
                        r"after step \d of 9; continue with: cnnbench train --resume " + re.escape(
                            str(tmp_path / "run")), str(stop.value)), str(stop.value)
    assert 1 <= torch.load(tmp_path / "run" / "checkpoints" / "last.pt",
                           weights_only=True)["position"]["batch"] < 9
    assert cli(["train", "--resume", tmp_path / "run", "-q"]) == 0
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(resumed["model"][k], v) for k, v in whole.model.state_dict().items())


def test_a_bad_file_met_while_streaming_is_one_line_and_leaves_nothing(tree, tmp_path, capsys):
    bad = tmp_path / "tree" / "train" / "dog" / "03.png"
    bad.write_bytes(b"not a png")
    capsys.readouterr()
    argv = ["train", "lenet", "--data", tree, "--set", "data_mode=stream", "--set",
            "workers=1", "--epochs", "1", "--run-dir", tmp_path / "run", "-q"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read image {bad}" in err, err
    assert not (tmp_path / "run").exists()


def test_stream_is_refused_for_a_source_read_into_memory(fmnist_dir, capsys):
    argv = ["train", "lenet", "--data", f"fashion-mnist:{fmnist_dir}", "--set",
            "data_mode=stream", "--epochs", "1", "-q"]
    assert cli(argv) == 2
    assert capsys.readouterr().err == (
        "error: data_mode stream reads image files one by one: imagefolder, csv, coco, masks data; "
        "fashion-mnist is read into memory (data_mode memory or auto)\n")


def test_worker_augmentation_is_seeded_per_image_whatever_the_workers(tree):
    """RandomResizedCrop + TrivialAugment in the workers: the same pixels with 0 or 2 workers
    (each image seeded by the run's seed, the epoch and its place), others the next epoch."""
    config = overrides(tree, "stream", rrc_scale=[0.2, 1.0], auto_augment="trivialaugment")
    data = load_data(cfg.resolve("lenet", None, config), Classification)
    order = torch.arange(len(data.train))
    drawn = {}
    for workers, epoch in ((0, 1), (2, 1), (2, 2)):
        split = dataclasses.replace(data.train, workers=workers)
        drawn[workers, epoch] = torch.cat([b[0] for b in split.batches(
            order, range(0, 16, 8), 8, seed=(0, epoch))])
    assert drawn[0, 1].shape == (16, 3, 28, 28)
    assert torch.equal(drawn[0, 1], drawn[2, 1])
    assert not torch.equal(drawn[2, 1], drawn[2, 2])
    plain = data.train.take(order[:16])[0]  # fitted whole, no crop
    assert not torch.equal(drawn[0, 1], plain)


def test_crop_pct_evaluates_on_the_centre_crop_of_the_resized_file(tmp_path):
    """28 px with crop_pct 0.875: the shorter side to 32 (timm: 28 / 0.875), the centre 28."""
    write_tree(tmp_path / "tree", splits=(("train", 2), ("test", 1)), shape=(32, 32, 3))
    config = overrides(f"imagefolder:{tmp_path / 'tree'}", "stream", crop_pct=0.875)
    data = load_data(cfg.resolve("lenet", None, config), Classification)
    files = data.test.files
    expected = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1)[
        :, 2:30, 2:30] for f in files])
    assert torch.equal(data.test.take(slice(None))[0], expected)


def test_the_imagenet_recipe_trains_a_torchvision_model_from_a_stream(tree, tmp_path):
    recipe = Path(__file__).parents[1] / "experiments" / "resnet18-imagenet.yaml"
    assert cli(["train", "torchvision:resnet18", "--config", recipe, "--data", tree,
                "--input-size", "3x32x32", "--epochs", "1", "--batch-size", "8", "--limit", "16",
                "--set", "data_mode=stream", "--set", "workers=1", "--set", "amp=none",
                "--run-dir", tmp_path / "run", "-q"]) == 0
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (config["model"], config["rrc_scale"], config["auto_augment"], config["crop_pct"],
            config["mixup"], config["data_mode"]) == ("torchvision:resnet18", [0.08, 1.0],
                                                      "trivialaugment", 0.875, 0.2, "stream")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["epochs"] == 1 and results["test_loss"] > 0


@pytest.fixture
def mask_tree(tmp_path):
    """``masks:PATH`` with 16 colour images of 40x40 (fitted to unet's input) and their masks:
    a square of class 1 or 2 on the background, a void border."""
    root = tmp_path / "pairs"
    for part in ("images", "masks"):
        (root / part).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            root / "images" / f"{i:02d}.png")
        mask = np.zeros((40, 40), dtype=np.uint8)
        y, x = rng.integers(0, 24, 2)
        mask[y:y + 16, x:x + 16] = 1 + i % 2
        mask[0] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.png")
    (root / "classes.txt").write_text("square\nother\n")
    return f"masks:{root}"


def unet_overrides(data, mode, **more):
    return overrides(data, mode, val_size=4, batch_size=4, input_size=[3, 32, 32],
                     model_args={"width": 4}, **more)


def test_masks_stream_the_same_pixels_masks_and_classes_as_memory(mask_tree):
    loaded = {mode: load_data(cfg.resolve("unet", None, unet_overrides(mask_tree, mode)),
                              Segmentation) for mode in ("memory", "stream")}
    assert isinstance(loaded["stream"].train, FileSplit)
    assert loaded["stream"].info["data_mode"] == "stream"
    for split in ("train", "val", "test"):
        memory, streamed = getattr(loaded["memory"], split), getattr(loaded["stream"], split)
        assert streamed.files == memory.files and len(memory) >= 3
        order = torch.randperm(len(memory), generator=torch.Generator().manual_seed(1))
        batches = list(streamed.batches(order, range(0, len(memory), 2), 2))
        assert torch.equal(torch.cat([b[0] for b in batches]), memory.images[order])
        for key in ("masks", "multi_hot"):
            assert torch.equal(torch.cat([b[1][key] for b in batches]),
                               memory.targets[key][order]), key
        assert list(batches[0][1]) == list(memory.targets)  # the same keys, in the same order
    masks = loaded["memory"].train.targets["masks"]
    assert set(masks.unique().tolist()) == {0, 1, 2, 255}


def test_unet_trains_bitwise_alike_from_memory_and_from_streamed_masks(mask_tree, keep_threads):
    weights = {}
    for mode in ("memory", "stream"):
        trainer = build_trainer(cfg.resolve("unet", None, unet_overrides(
            mask_tree, mode, threads=1, epochs=1)), callbacks=[])  # augment: on
        trainer.fit()
        weights[mode] = trainer.model.state_dict()
    assert isinstance(trainer.train_split, FileSplit)
    assert all(torch.equal(weights["memory"][k], weights["stream"][k]) for k in weights["memory"])
