import json
import math

import pytest
import torch
import yaml

from cnnbench import config as cfg
from cnnbench import train as T
from cnnbench.errors import CnnbenchError
from cnnbench.registry import get_model_info, list_models
from idx_files import write_fashion_mnist

SCALARS = {"train/loss", "train/acc", "val/loss", "val/acc", "lr"}
METRIC_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds",
               "images_per_second"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(folder, n_train=96, n_test=24)
    return folder


def tiny(data_dir, **changes) -> dict:
    """A small, fast run: 80 training and 16 validation images, no YAML recipe."""
    overrides = dict(data=str(data_dir), limit=96, val_size=16, batch_size=16, epochs=2,
                     optimizer="sgd", lr=0.05, momentum=0.9, schedule="cosine",
                     warmup_epochs=0.5, label_smoothing=0.1, crop_padding=2, hflip=True,
                     random_erasing=0.25, log_graph=True)
    overrides.update(changes)
    return overrides


def run_tiny(tmp_path, data_dir, name="run", **changes) -> tuple:
    overrides = tiny(data_dir, **changes)
    model = overrides.pop("model", "lenet")
    results = T.train(model, config_file=tmp_path / "none.yaml", overrides=overrides,
                      run_dir=tmp_path / name)
    return tmp_path / name, results


@pytest.fixture(autouse=True)
def empty_recipe(tmp_path):
    (tmp_path / "none.yaml").write_text("")


def test_two_epochs_write_every_artefact(tmp_path, data_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, results = run_tiny(tmp_path, data_dir)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == "lenet" and config["epochs"] == 2 and config["hflip"] is True

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(METRIC_KEYS <= set(r) and "train_top5" in r for r in rows)
    assert all(0 <= r["val_acc"] <= 1 and r["images_per_second"] > 0 for r in rows)

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert SCALARS <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val/acc")] == [1, 2]
    assert "test/misclassified" in tags["images"]
    assert tags["graph"]  # the model graph traced
    assert any("hparam" in t for t in tags["scalars"])

    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "schedule", "scaler", "epoch", "rng", "config"} <= set(state)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert not list((run / "checkpoints").glob("*.tmp*"))

    saved = json.loads((run / "results.json").read_text())
    assert saved["epochs"] == 2 and 0 <= saved["test_acc"] <= 1 and saved["minutes"] >= 0
    confusion = saved["report"]["confusion_matrix"]
    assert len(confusion) == 10 and sum(map(sum, confusion)) == 24
    assert math.isclose(saved["test_acc"], sum(confusion[i][i] for i in range(10)) / 24)
    assert saved == results
    (row,) = T.list_runs(tmp_path)
    assert row["model"] == "lenet" and row["epochs"] == 2 and row["finished"]
    assert row["monitor"] == "acc" and row["test"] == saved["test_acc"]
    assert row["best_val"] == max(r["val_acc"] for r in rows)


def test_resume_continues_at_the_next_epoch_with_the_same_optimizer_state(tmp_path, data_dir):
    straight, _ = run_tiny(tmp_path, data_dir, "straight", log_graph=False)
    with pytest.raises(KeyboardInterrupt):  # stopped after epoch 1, as Ctrl-C would
        T.train("lenet", tmp_path / "none.yaml", tiny(data_dir, log_graph=False),
                run_dir=tmp_path / "cut", reporter=StopAfter(1))
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)

    trainer = T.resume_trainer(tmp_path / "cut")
    assert trainer.epoch == 1 and trainer.schedule.step_count == saved["schedule"]["step_count"]
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(torch.equal(state[k]["momentum_buffer"], v["momentum_buffer"])
                         for k, v in saved["optimizer"]["state"].items())
    trainer.fit()
    assert [r["epoch"] for r in T.read_metrics(tmp_path / "cut")] == [1, 2]
    # RNG states travel with the checkpoint: the resumed run ends exactly where an
    # uninterrupted one does.
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class StopAfter(T.Reporter):
    def __init__(self, n):
        self.n = n

    def epoch_end(self, row):
        if row["epoch"] >= self.n:
            raise KeyboardInterrupt


def fake_run(folder, epoch=1, **config) -> None:
    """A run folder with a small but real checkpoint, without training anything."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "lenet", **config}))
    state = {"model": {"w": torch.zeros(1000)}, "optimizer": {"state": {}}, "epoch": epoch,
             "config": {"model": "lenet", "epochs": 2, "lr": 0.05, **config}}
    T.save_checkpoint(state, folder / "checkpoints" / "last.pt")


def test_truncated_checkpoint_gives_a_clear_one_line_error(tmp_path):
    fake_run(tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CnnbenchError, match="truncated or damaged") as info:
        T.resume(tmp_path / "run", {"epochs": 3})
    assert "\n" not in str(info.value)


def test_resume_refuses_to_change_the_recipe(tmp_path):
    fake_run(tmp_path / "run")
    with pytest.raises(CnnbenchError, match="lr cannot change"):
        T.resume(tmp_path / "run", {"epochs": 3, "lr": 1.0})


def test_an_existing_run_is_never_overwritten(tmp_path):
    fake_run(tmp_path / "run")
    with pytest.raises(CnnbenchError, match="never overwritten"):
        T.train("lenet", overrides={"epochs": 1}, run_dir=tmp_path / "run")
    first = T.new_run_dir("torchvision:resnet18", tmp_path / "runs")
    second = T.new_run_dir("torchvision:resnet18", tmp_path / "runs")
    assert first != second and first.name.startswith("torchvision-resnet18-")


def test_asking_for_an_absent_device_is_a_clear_error():
    if not torch.cuda.is_available():
        with pytest.raises(CnnbenchError, match="--device cuda"):
            T.resolve_device("cuda")
    assert T.resolve_device("cpu").type == "cpu"


def schedule(**changes):
    config = {k: spec[0] for k, spec in cfg.TRAINER_KEYS.items()}
    config.update(epochs=4, lr=1.0, **changes)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    s = T.Schedule(opt, config, steps_per_epoch=25)
    lrs, moms = [], []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        s.step()
    return lrs, moms


def test_one_cycle_follows_fastai():
    lrs, moms = schedule(schedule="onecycle")
    assert math.isclose(lrs[0], 1 / 25) and math.isclose(max(lrs), 1.0)
    assert lrs.index(max(lrs)) == 25 and lrs[-1] < 1e-3
    assert math.isclose(moms[0], 0.95) and math.isclose(moms[25], 0.85)


def test_warmup_then_cosine_and_step_schedules():
    lrs, _ = schedule(schedule="cosine", warmup_epochs=1)
    assert math.isclose(lrs[0], 1 / 25) and math.isclose(lrs[24], 1.0)
    assert lrs[25] == 1.0 and lrs[-1] < 0.01 and lrs == sorted(lrs[:25]) + lrs[25:]
    lrs, _ = schedule(schedule="step", step_epochs=2, gamma=0.1)
    assert lrs[49] == 1.0 and math.isclose(lrs[50], 0.1)


# Small but valid: fewer VGG channels; the global-pooling networks at 32 px instead of 96.
MODEL_ARGS = {"vgg11": {"ratio": 8}}
INPUT_SIZE = {"googlenet": 32, "resnet18": 32, "resnet18-dcn": 32, "densenet": 32}


@pytest.mark.parametrize("model", list_models("classification"))
def test_every_classifier_takes_a_training_step(tmp_path, data_dir, model):
    info = get_model_info(model)
    config = cfg.resolve(model, tmp_path / "none.yaml", dict(
        data=str(data_dir), limit=4, val_size=2, batch_size=2, epochs=1,
        model_args=MODEL_ARGS.get(model, {}), input_size=INPUT_SIZE.get(model)))
    trainer = T.Trainer(config)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    images, targets = trainer.train_split.take(torch.arange(2))
    output, _, loss = trainer.train_step(images, targets)
    assert output.shape == (2, info.num_classes) and torch.isfinite(loss)
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_an_input_too_small_for_the_model_says_the_minimum(tmp_path, data_dir):
    with pytest.raises(CnnbenchError, match="smallest that works is 1x200x200"):
        run_tiny(tmp_path, data_dir, model="alexnet", input_size=[1, 100, 100])
    assert not (tmp_path / "run").exists()
