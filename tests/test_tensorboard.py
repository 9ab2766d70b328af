"""What a run writes for TensorBoard, read back with TensorBoard's own reader."""

import json
import math
from collections import Counter

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from cnnbench import recipe as cfg
from cnnbench.data.fashion_mnist import CLASS_NAMES
from cnnbench.tasks.base import Context
from cnnbench.tasks.classification import Classification, labelled_grid
from cnnbench.training.build import build_trainer
from cnnbench.train import resume_trainer, train
from cnnbench.training.callbacks import JSONLog, RunFolder, TensorBoard
from cnnbench.training.loop import Callback, CancelFitException
from cnnbench.training.runs import read_metrics

TIMINGS = {"epoch_seconds", "images_per_second"}
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny batches: threads only cost time


def tiny_config(data_dir, tmp_path, **changes) -> dict:
    """lenet on 80 training images in batches of 16: 5 optimizer steps per epoch."""
    (tmp_path / "none.yaml").write_text("")
    overrides = dict(data=str(data_dir), limit=96, val_size=16, batch_size=16, epochs=2,
                     optimizer="sgd", lr=0.05, momentum=0.9, schedule="cosine",
                     warmup_epochs=0.5, crop_padding=2, hflip=True, random_erasing=0.25,
                     device="cpu", log_graph=False)
    overrides.update(changes)
    return cfg.resolve("lenet", tmp_path / "none.yaml", overrides)


def events(folder) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0,
                                                               "histograms": 0})
    accumulator.Reload()
    return accumulator


def hparams_data(accumulator) -> dict:
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
            for tag, content in accumulator.PluginTagToContent("hparams").items()}


class Recorder(Callback):
    """Every step's loss and the lr each step used (a test may read the device every step)."""

    order = 5

    def __init__(self):
        self.losses, self.lrs = [], []

    def before_fit(self, trainer):
        self.lrs.append(trainer.lr)

    def after_step(self, trainer, step):
        self.losses.append(step.loss.item())
        self.lrs.append(trainer.lr)  # the next step's


def test_step_loss_and_lr_every_n_steps_read_from_the_device_once_per_n(tmp_path, fmnist_dir):
    config = tiny_config(fmnist_dir, tmp_path)
    board, recorder = TensorBoard(log_graph=False, log_every_steps=3), Recorder()
    trainer = build_trainer(config, tmp_path / "run",
                            callbacks=[RunFolder(), JSONLog(), board, recorder])
    results = trainer.fit()
    assert len(recorder.losses) == 10  # 2 epochs of 5 steps

    steps = events(tmp_path / "run" / "tensorboard" / "steps")
    loss, lr = steps.Scalars("step/train_loss"), steps.Scalars("step/lr")
    assert [e.step for e in loss] == [e.step for e in lr] == [3, 6, 9]  # across the epoch's end
    assert board.reads == 3  # one device read per point, none in the other 7 steps
    for e in loss:  # the mean of the steps since the last point
        assert e.value == pytest.approx(sum(recorder.losses[e.step - 3:e.step]) / 3, rel=1e-6)
    for e in lr:  # the lr the step used, not the one the schedule moved on to
        assert e.value == pytest.approx(recorder.lrs[e.step - 1], rel=1e-6)
    assert recorder.lrs[2] != recorder.lrs[3]
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["lr"] == recorder.lrs[4]  # metrics.jsonl's lr: of the epoch's 5th step

    main = events(tmp_path / "run" / "tensorboard")
    assert [e.step for e in main.Scalars("train/loss")] == [1, 2]  # per epoch, as before
    assert "step/train_loss" not in main.Tags()["scalars"]
    assert main.Tags()["histograms"] == []  # off by default
    data = hparams_data(main)
    assert data["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS
    assert main.Scalars("hparam/test_acc")[-1].value == pytest.approx(results["test_acc"])

    # The labelled grid of the test images the final model gets wrong (32 at most, 8 a row),
    # drawn once, after the test pass, not every epoch.
    (image,) = main.Images("test/misclassified")
    assert image.step == 2
    confusion = results["report"]["confusion_matrix"]
    wrong = min(32, 24 - sum(confusion[i][i] for i in range(10)))
    assert wrong > 0
    assert (image.width, image.height) == (min(8, wrong) * 114 + 2,
                                           math.ceil(wrong / 8) * 146 + 2)


class PeekThenStop(Callback):
    """Reads the event files while the first step runs (as after a crash there), then stops the
    run cleanly after epoch 1."""

    order = 95

    def __init__(self):
        self.tags = None

    def after_step(self, trainer, step):
        if self.tags is None:
            self.tags = set(hparams_data(events(trainer.run_dir / "tensorboard")))

    def after_epoch(self, trainer, row):
        raise CancelFitException


def test_hyper_parameters_are_on_disk_before_the_first_step(tmp_path, fmnist_dir):
    peek = PeekThenStop()
    overrides = {k: v for k, v in tiny_config(fmnist_dir, tmp_path).items()
                 if k in ("data", "limit", "val_size", "batch_size", "lr", "device", "log_graph")}
    results = train("lenet", config_file=tmp_path / "none.yaml",
                    overrides={**overrides, "epochs": 3, "log_every_steps": 5},
                    run_dir=tmp_path / "cut", callbacks=[peek])
    assert results is None
    assert peek.tags == {"_hparams_/experiment", "_hparams_/session_start_info"}

    board = events(tmp_path / "cut" / "tensorboard")
    data = hparams_data(board)
    assert "_hparams_/session_end_info" not in data  # stopped: the run may still be resumed
    hparams = data["_hparams_/session_start_info"].session_start_info.hparams
    assert hparams["model"].string_value == "lenet" and hparams["lr"].number_value == 0.05
    assert hparams["epochs"].number_value == 3
    metrics = [m.name.tag for m in data["_hparams_/experiment"].experiment.metric_infos]
    assert {"val/loss", "val/acc", "hparam/test_acc", "hparam/best_val_acc"} <= set(metrics)
    assert [e.step for e in board.Scalars("val/acc")] == [1]  # its value for the table

    # Resumed, the step points go on from the checkpoint and the session ends.
    resume_trainer(tmp_path / "cut", {"epochs": 2}).fit()
    steps = events(tmp_path / "cut" / "tensorboard" / "steps")
    assert [e.step for e in steps.Scalars("step/train_loss")] == [5, 10]
    board = events(tmp_path / "cut" / "tensorboard")
    assert [e.step for e in board.Scalars("val/acc")] == [1, 2]
    assert "_hparams_/session_end_info" in hparams_data(board)


def misclassified_pairs(board) -> Counter:
    """(true, predicted) class of each row of the table written beside the picture."""
    (event,) = board.Tensors("test/misclassified/text_summary")
    rows = event.tensor_proto.string_val[0].decode().splitlines()[2:]
    return Counter(tuple(cell.strip() for cell in row.split("|")[2:4]) for row in rows)


def test_pictures_are_drawn_by_the_weights_the_test_figures_belong_to(tmp_path, fmnist_dir):
    overrides = {k: v for k, v in tiny_config(fmnist_dir, tmp_path).items()
                 if k in ("data", "limit", "val_size", "batch_size", "optimizer", "lr",
                          "momentum", "device")}
    # best.pt follows the worst validation accuracy, so the tested weights are not the last
    # (LeNet-BN learns enough in 3 epochs to change its mistakes).
    results = train("lenet-bn", config_file=tmp_path / "none.yaml",
                    overrides={**overrides, "epochs": 3, "monitor": "acc", "mode": "min",
                               "log_images": True}, run_dir=tmp_path / "run")
    assert results["test_checkpoint"] == "best" and results["test_epoch"] < 3
    confusion = results["report"]["confusion_matrix"]
    wrong = Counter({(CLASS_NAMES[t], CLASS_NAMES[p]): n for t, row in enumerate(confusion)
                     for p, n in enumerate(row) if t != p and n})
    assert 0 < sum(wrong.values()) <= 32  # all of them in the picture
    board = events(tmp_path / "run" / "tensorboard")
    assert [e.step for e in board.Images("test/misclassified")] == [3]
    assert misclassified_pairs(board) == wrong


class GradSums(Callback):
    order = 95

    def __init__(self):
        self.sums = {}

    def after_epoch(self, trainer, row):
        self.sums = {n: p.grad.double().sum().item() for n, p in trainer.model.named_parameters()}


def test_histograms_of_weights_and_the_last_steps_gradients_when_asked(tmp_path, fmnist_dir):
    config = tiny_config(fmnist_dir, tmp_path, epochs=1)
    sums = GradSums()
    trainer = build_trainer(config, tmp_path / "run", callbacks=[
        RunFolder(), TensorBoard(log_graph=False, log_images=False, log_histograms=True), sums])
    trainer.fit()
    board = events(tmp_path / "run" / "tensorboard")
    names = [n for n, _ in trainer.model.named_parameters()]
    assert sorted(board.Tags()["histograms"]) == sorted(
        [f"weights/{n}" for n in names] + [f"grads/{n}" for n in names])
    for name, p in trainer.model.named_parameters():
        (weights,) = board.Histograms(f"weights/{name}")
        (grads,) = board.Histograms(f"grads/{name}")
        assert weights.step == grads.step == 1 and weights.histogram_value.num == p.numel()
        assert grads.histogram_value.sum == pytest.approx(sums.sums[name], rel=1e-4, abs=1e-6)


def test_logging_leaves_the_training_numbers_unchanged(tmp_path, fmnist_dir):
    config = tiny_config(fmnist_dir, tmp_path)
    weights = []
    for name, extra in (("plain", []), ("logged", [TensorBoard(
            log_graph=True, log_every_steps=1, log_histograms=True)])):
        trainer = build_trainer(config, tmp_path / name,
                                callbacks=[RunFolder(), JSONLog(), *extra])
        trainer.fit()
        weights.append(trainer.model.state_dict())
    rows = [[{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
             for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("plain", "logged")]
    assert rows[0] == rows[1]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_misclassified_grid_writes_true_and_predicted_class_under_each_image():
    names = ("T-shirt/top", "Trouser", "Pullover")
    task = Classification({}, Context(names, 1, (0.5,), (0.5,)))
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    targets = torch.arange(12) % 3
    pred = torch.cat([(targets[:9] + 1) % 3, targets[9:]])  # the first 9 wrong
    wrong = torch.arange(9)

    class Writer:
        def add_image(self, tag, picture, step):
            self.picture = picture

        def add_text(self, tag, text, step):
            self.text = text

    writer = Writer()
    task.log_images(writer, 1, images, torch.nn.functional.one_hot(pred, 3).float(), targets)
    picture = writer.picture
    # 8 tiles a row of 112 x (112 + two 15 px caption lines + 2), 2 px apart.
    assert picture.shape == (3, 2 * 146 + 2, 8 * 114 + 2)
    first = images[wrong[0]].float().repeat_interleave(4, 1).repeat_interleave(4, 2) / 255
    assert torch.equal(picture[:, 2:114, 2:114], first.expand(3, -1, -1))
    caption = picture[:, 114:146, 2:114]
    greenish = (caption[1] > caption[0] + 0.2).sum()
    reddish = (caption[0] > caption[1] + 0.2).sum()
    assert greenish > 50 and reddish > 50  # "true: ..." in green, "pred: ..." in red
    assert "| 0 | T-shirt/top | Trouser |" in writer.text


def test_caption_wider_than_its_tile_is_cut_short():
    picture = labelled_grid(torch.zeros(1, 1, 28, 28, dtype=torch.uint8),
                            [[("pred: " + "W" * 40, (255, 0, 0))]])
    assert picture.shape == (3, 112 + 15 + 2 + 4, 112 + 4)
    assert (picture[0, 114:, -3:] == 1).all()  # the end of the line stays white
