import json
import math

import pytest
import torch
import yaml

from cnnbench import recipe as cfg
from cnnbench.files import save_torch
from cnnbench.devices import resolve_device
from cnnbench.errors import CnnbenchError
from cnnbench.models import get_model_info, list_models
from cnnbench.training.build import build_trainer
from cnnbench.train import resume, resume_trainer, train
from cnnbench.training.callbacks import Checkpoint
from cnnbench.training.loop import Callback, CancelEpochException, CancelFitException
from cnnbench.training.optimizers import OPTIMIZERS, build_optimizer, param_groups
from cnnbench.runs import list_runs
from cnnbench.training.runs import new_run_dir, read_metrics, resolve_mode
from cnnbench.training.schedules import SCHEDULES, build_schedule, jump_to

SCALARS = {"train/loss", "train/acc", "val/loss", "val/acc", "lr"}
METRIC_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds",
               "images_per_second"}


def tiny(data_dir, **changes) -> dict:
    """A small, fast run: 80 training and 16 validation images, no YAML recipe."""
    overrides = dict(data=str(data_dir), limit=96, val_size=16, batch_size=16, epochs=2,
                     optimizer="sgd", lr=0.05, momentum=0.9, schedule="cosine",
                     warmup_epochs=0.5, label_smoothing=0.1, crop_padding=2, hflip=True,
                     random_erasing=0.25, log_graph=True)
    overrides.update(changes)
    return overrides


def run_tiny(tmp_path, data_dir, name="run", callbacks=(), **changes) -> tuple:
    overrides = tiny(data_dir, **changes)
    model = overrides.pop("model", "lenet")
    results = train(model, config_file=tmp_path / "none.yaml", overrides=overrides,
                    run_dir=tmp_path / name, callbacks=callbacks)
    return tmp_path / name, results


@pytest.fixture(autouse=True)
def empty_recipe(tmp_path):
    (tmp_path / "none.yaml").write_text("")


def test_two_epochs_write_every_artefact(tmp_path, fmnist_dir, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, results = run_tiny(tmp_path, fmnist_dir)
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
        assert {"model", "optimizer", "schedule", "scaler", "epoch", "rng", "config", "best",
                "best_epoch"} <= set(state)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert not list((run / "checkpoints").glob("*.tmp*"))

    saved = json.loads((run / "results.json").read_text())
    assert saved["epochs"] == 2 and 0 <= saved["test_acc"] <= 1 and saved["minutes"] >= 0
    assert None not in saved.values()  # every callback filled its part
    assert saved["train_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in rows))
    confusion = saved["report"]["confusion_matrix"]
    assert len(confusion) == 10 and sum(map(sum, confusion)) == 24
    assert math.isclose(saved["test_acc"], sum(confusion[i][i] for i in range(10)) / 24)
    assert saved == results
    (row,) = list_runs(tmp_path)
    assert row["model"] == "lenet" and row["epochs"] == 2 and row["finished"]
    assert row["monitor"] == "acc" and row["test"] == saved["test_acc"]
    assert row["best_val"] == max(r["val_acc"] for r in rows)
    assert capsys.readouterr().out == ""  # nothing on stdout, which --json keeps for itself


class StopAfter(Callback):
    """Stops the run cleanly after epoch ``n`` (once its checkpoint is written), as Ctrl-C
    between epochs would."""

    order = 95

    def __init__(self, n):
        self.n = n

    def after_epoch(self, trainer, row):
        if row["epoch"] >= self.n:
            raise CancelFitException


def test_resume_continues_at_the_next_epoch_with_the_same_optimizer_state(tmp_path, fmnist_dir):
    straight, _ = run_tiny(tmp_path, fmnist_dir, "straight", log_graph=False)
    _, results = run_tiny(tmp_path, fmnist_dir, "cut", callbacks=[StopAfter(1)], log_graph=False)
    assert results is None and not (tmp_path / "cut" / "results.json").exists()
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)

    trainer = resume_trainer(tmp_path / "cut")
    assert trainer.epoch == 1 and trainer.schedule.last_epoch == saved["schedule"]["step_count"]
    assert trainer.lr == saved["optimizer"]["param_groups"][0]["lr"]  # the schedule jumped
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(torch.equal(state[k]["momentum_buffer"], v["momentum_buffer"])
                         for k, v in saved["optimizer"]["state"].items())
    trainer.fit()
    assert [r["epoch"] for r in read_metrics(tmp_path / "cut")] == [1, 2]
    # RNG states travel with the checkpoint: the resumed run ends exactly where an
    # uninterrupted one does.
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_monitor_a_loss_keeps_the_epoch_with_the_lowest(tmp_path, fmnist_dir):
    run, results = run_tiny(tmp_path, fmnist_dir, monitor="loss", epochs=3, log_graph=False,
                            log_images=False)
    rows = read_metrics(run)
    best = min(rows, key=lambda r: r["val_loss"])
    assert results["monitor"] == "loss" and results["best_val_loss"] == best["val_loss"]
    assert results["best_epoch"] == best["epoch"]
    kept = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert kept["epoch"] == best["epoch"] and kept["best"] == best["val_loss"]


def test_checkpoint_mode_follows_fastai_unless_told():
    assert resolve_mode("auto", "loss") == "min" and resolve_mode("auto", "error_rate") == "min"
    assert resolve_mode("auto", "miou") == "max" and resolve_mode("min", "acc") == "min"
    tracker = Checkpoint("acc", mode="min")
    tracker.best, tracker.best_epoch = 0.5, 1
    assert tracker.improves(0.4) and not tracker.improves(0.6)


def test_a_monitor_the_task_does_not_measure_is_refused_before_any_folder(tmp_path, fmnist_dir):
    with pytest.raises(CnnbenchError, match="monitor 'acuracy' is not a metric.*did you mean acc"):
        run_tiny(tmp_path, fmnist_dir, monitor="acuracy")
    assert not (tmp_path / "run").exists()


def test_a_trainer_without_run_folder_fits_in_memory(fmnist_dir):
    class OneStepEpochs(Callback):
        def after_step(self, trainer, step):
            assert isinstance(step.loss, torch.Tensor)  # step events get tensors, no floats
            raise CancelEpochException

    config = cfg.resolve("lenet", None, tiny(fmnist_dir, log_graph=False, epochs=2))
    trainer = build_trainer(config, callbacks=[OneStepEpochs()])
    results = trainer.fit()
    assert trainer.schedule.last_epoch == 2  # one step in each of two epochs
    assert results["epochs"] == 2 and results["best_epoch"] is None  # no tracker
    assert 0 <= results["test_acc"] <= 1


def fake_run(folder, epoch=1, **config) -> None:
    """A run folder with a small but real checkpoint, without training anything."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "lenet", **config}))
    state = {"model": {"w": torch.zeros(1000)}, "optimizer": {"state": {}}, "epoch": epoch,
             "config": {"model": "lenet", "epochs": 2, "lr": 0.05, **config}}
    save_torch(state, folder / "checkpoints" / "last.pt")


def test_truncated_checkpoint_gives_a_clear_one_line_error(tmp_path):
    fake_run(tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CnnbenchError, match="truncated or damaged") as info:
        resume(tmp_path / "run", {"epochs": 3})
    assert "\n" not in str(info.value)


def test_resume_refuses_to_change_the_recipe(tmp_path):
    fake_run(tmp_path / "run")
    with pytest.raises(CnnbenchError, match="lr cannot change"):
        resume(tmp_path / "run", {"epochs": 3, "lr": 1.0})


def test_an_existing_run_is_never_overwritten(tmp_path):
    fake_run(tmp_path / "run")
    with pytest.raises(CnnbenchError, match="never overwritten"):
        train("lenet", overrides={"epochs": 1}, run_dir=tmp_path / "run")
    first = new_run_dir("torchvision:resnet18", tmp_path / "runs")
    second = new_run_dir("torchvision:resnet18", tmp_path / "runs")
    assert first != second and first.name.startswith("torchvision-resnet18-")


def test_asking_for_an_absent_device_is_a_clear_error():
    if not torch.cuda.is_available():
        with pytest.raises(CnnbenchError, match="--device cuda"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


# --- the optimizer and schedule tables ---

def test_config_choices_come_from_the_tables():
    assert cfg.trainer_keys()["optimizer"].choices == tuple(OPTIMIZERS)
    assert cfg.trainer_keys()["schedule"].choices == tuple(SCHEDULES)


class WithMultipliers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

    def lr_multipliers(self):
        return {"b.weight": 0.1}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_builds_with_the_models_parameter_groups(name):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), WithMultipliers())
    config = cfg.defaults()
    config.update(optimizer=name, lr=0.5, momentum=0.9, weight_decay=0.01,
                  decay_norm_bias=True)  # the multipliers alone (the norm rule: test_transfer)
    optimizer = build_optimizer(model, config)
    inner = model[1]
    rest, slow = optimizer.param_groups
    assert rest["lr"] == 0.5 and slow["lr"] == pytest.approx(0.05)
    assert len(slow["params"]) == 1 and slow["params"][0] is inner.b.weight
    assert all(p is not inner.b.weight for p in rest["params"])
    assert len(rest["params"]) == 5 and rest["weight_decay"] == 0.01
    assert param_groups(torch.nn.Linear(2, 2), 0.1)[0]["lr"] == 0.1


def test_nesterov_without_momentum_is_one_line():
    config = cfg.defaults()
    config.update(nesterov=True)
    with pytest.raises(CnnbenchError, match="optimizer sgd: Nesterov"):
        build_optimizer(torch.nn.Linear(2, 2), config)


# Step by step from the trainer's former hand-written Schedule.factor (lr 1.0, 4 steps an
# epoch, 2 epochs, SGD momentum 0.9 or AdamW): the lr and the momentum (beta1) before each step.
OLD_SCHEDULES = {
    "onecycle": (dict(schedule="onecycle"), "sgd",
                 [0.040000000000000036, 0.52, 1.0, 0.9330129698414118, 0.750001, 0.500002,
                  0.2500030000000001, 0.06699103015858822, 4e-06],
                 [0.95, 0.9, 0.85, 0.856698729810778, 0.875, 0.9, 0.925, 0.9433012701892219,
                  0.95]),
    "onecycle_adamw": (dict(schedule="onecycle", pct_start=0.3, div_factor=10.0), "adamw",
                       [0.1, 0.55, 1.0, 0.9330133717652005, 0.7500025, 0.500005, 0.2500075,
                        0.06699662823479957, 1e-05],
                       [0.95, 0.9, 0.85, 0.856698729810778, 0.875, 0.9, 0.925,
                        0.9433012701892219, 0.95]),
    "cosine": (dict(schedule="cosine", warmup_epochs=0.5), "sgd",
               [0.5, 1.0, 1.0, 0.9330127018922194, 0.75, 0.5, 0.25, 0.06698729810778065, 0.0],
               [0.9] * 9),
    "step": (dict(schedule="step", step_epochs=1, gamma=0.5, warmup_epochs=0.75), "sgd",
             [1 / 3, 2 / 3, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25], [0.9] * 9),
}


def schedule(changes, optimizer="sgd", steps_per_epoch=4, epochs=2, steps=9):
    config = cfg.defaults()
    config.update({"epochs": epochs, "lr": 1.0, "momentum": 0.9, "optimizer": optimizer,
                   **changes})
    opt = build_optimizer(torch.nn.Linear(1, 1), config)
    s = build_schedule(opt, config, steps_per_epoch)
    lrs, moms = [], []
    for _ in range(steps):
        group = opt.param_groups[0]
        lrs.append(group["lr"])
        moms.append(group["betas"][0] if "betas" in group else group["momentum"])
        opt.step()
        s.step()
    return lrs, moms, config, opt


@pytest.mark.parametrize("name", list(OLD_SCHEDULES))
def test_schedules_give_the_former_lr_and_momentum_at_every_step(name):
    changes, optimizer, old_lrs, old_moms = OLD_SCHEDULES[name]
    lrs, moms, config, _ = schedule(changes, optimizer)
    assert lrs == pytest.approx(old_lrs, rel=1e-12, abs=1e-15)
    assert moms == pytest.approx(old_moms, rel=1e-12)
    # A resumed run jumps to its step: the same lr and momentum as stepping there.
    for step in (3, 5, 8):
        opt = build_optimizer(torch.nn.Linear(1, 1), config)
        jump_to(build_schedule(opt, config, 4), step)
        assert opt.param_groups[0]["lr"] == pytest.approx(old_lrs[step], rel=1e-12, abs=1e-15)


def test_one_cycle_follows_fastai():
    lrs, moms, _, _ = schedule(dict(schedule="onecycle"), steps_per_epoch=25, epochs=4, steps=100)
    assert math.isclose(lrs[0], 1 / 25) and math.isclose(max(lrs), 1.0)
    assert lrs.index(max(lrs)) == 25 and lrs[-1] < 1e-3
    assert math.isclose(moms[0], 0.95) and math.isclose(moms[25], 0.85)
    _, moms, _, _ = schedule(dict(schedule="onecycle", momentum=0.0))
    assert set(moms) == {0.0}  # plain SGD has no momentum to cycle


# --- every classifier through the loop ---

# Small but valid: fewer VGG channels; the global-pooling networks at 32 px instead of 96.
MODEL_ARGS = {"vgg11": {"ratio": 8}}
INPUT_SIZE = {"googlenet": 32, "resnet18": 32, "resnet18-dcn": 32, "densenet": 32}


@pytest.mark.parametrize("model", list_models("classification"))
def test_every_classifier_takes_a_training_step(tmp_path, fmnist_dir, model):
    info = get_model_info(model)
    config = cfg.resolve(model, tmp_path / "none.yaml", dict(
        data=str(fmnist_dir), limit=4, val_size=2, batch_size=2, epochs=1,
        model_args=MODEL_ARGS.get(model, {}), input_size=INPUT_SIZE.get(model)))
    trainer = build_trainer(config, callbacks=[])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    images, targets = trainer.train_split.take(torch.arange(2))
    output, _, loss = trainer.train_step(images, targets)
    assert output.shape == (2, info.num_classes) and torch.isfinite(loss)
    after = list(trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_an_input_too_small_for_the_model_says_the_minimum(tmp_path, fmnist_dir):
    with pytest.raises(CnnbenchError, match="smallest that works is 1x200x200"):
        run_tiny(tmp_path, fmnist_dir, model="alexnet", input_size=[1, 100, 100])
    assert not (tmp_path / "run").exists()


def test_a_classifier_cannot_train_on_scenes(tmp_path, fmnist_dir):
    with pytest.raises(CnnbenchError, match="classification task cannot train on scenes"):
        run_tiny(tmp_path, fmnist_dir, data=f"scenes:{fmnist_dir}")


def test_a_graph_that_does_not_trace_prints_nothing_on_stdout(fmnist_dir, capsys):
    from cnnbench.training.callbacks import TensorBoard

    class Writer:  # what torch's add_graph does when tracing fails
        def add_graph(self, model, x):
            print("Error occurs, No graph saved")
            raise RuntimeError("unordered_map::at")

    config = cfg.resolve("lenet", None, tiny(fmnist_dir, epochs=1))
    board = TensorBoard()
    board.writer = Writer()
    board._graph(build_trainer(config, callbacks=[]))
    assert capsys.readouterr().out == ""  # stdout may carry --json
