"""lr-find, early stopping, gradient accumulation, model EMA, MixUp/CutMix and AMP per device,
on the tiny synthetic IDX files of ``fmnist_dir`` (96 training, 24 test images)."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
import yaml

from cnnbench import recipe as cfg
from cnnbench.data import transforms as T
from cnnbench.errors import CnnbenchError
from cnnbench.training.build import build_trainer
from cnnbench.train import resume, train
from cnnbench.training.interrupt import Interrupted
from cnnbench.training.callbacks import EMA, EarlyStopping
from cnnbench.training.loop import WHOLE, Callback, Micro, accumulation_plan
from cnnbench.train import lr_find
from cnnbench.training.lr_find import suggest
from cnnbench.runs import list_runs

from test_bad_inputs import cli, listing
from test_runs import SignalAt, run

PLAIN = {"schedule": "constant", "optimizer": "sgd", "momentum": 0.0, "crop_padding": 0,
         "hflip": False, "random_erasing": 0.0, "log_graph": False, "log_images": False,
         "threads": 1}


def overrides(data_dir, **changes) -> dict:
    """80 training and 16 validation images in batches of 16, no augmentation."""
    return {"data": str(data_dir), "limit": 96, "val_size": 16, "batch_size": 16, "epochs": 2,
            "lr": 0.05, **PLAIN, **changes}


def config(data_dir, model="lenet", **changes) -> dict:
    return cfg.resolve(model, os.devnull, overrides(data_dir, **changes))  # an empty recipe


def trained_run(tmp_path, data_dir, **changes):
    results = train("lenet", os.devnull, overrides(data_dir, **changes),
                    run_dir=tmp_path / "run")
    return tmp_path / "run", results


# -- lr-find --

def test_lr_find_suggests_a_finite_lr_in_the_sweep_draws_it_and_leaves_no_run(
        tmp_path, fmnist_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["lr-find", "lenet", "--data", str(fmnist_dir), "--limit", "96", "-b", "16",
            "--set", "val_size=16", "--set", "threads=1", "--start", "1e-5", "--end", "10",
            "--steps", "40", "--plot", str(tmp_path / "lr.png"), "--json"]
    assert cli(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert 1e-5 <= result["suggested_lr"] <= 10 and math.isfinite(result["suggested_lr"])
    lrs = result["lrs"]
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[1] / lrs[0] == pytest.approx(1e6 ** (1 / 39))  # exponential over 40 steps
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert listing(tmp_path) == ["lr.png"]  # no runs/, no run folder


def test_lr_find_stops_once_the_smoothed_loss_exceeds_four_times_its_best(fmnist_dir):
    result = lr_find("lenet", os.devnull, overrides(fmnist_dir, momentum=0.9), start=1e-4,
                     end=1e4, steps=40)  # SGD at lr 1e4 diverges
    assert result["diverged"] and result["steps"] == len(result["lrs"]) < 40
    smoothed = [v if math.isfinite(v) else math.inf for v in result["smoothed"]]
    assert not smoothed[-1] <= 4 * min(smoothed[:-1])
    assert all(s <= 4 * min(smoothed[:i + 1]) for i, s in enumerate(smoothed[:-1]))
    # bias-corrected exponential smoothing of the step losses
    average = 0.0
    for i, (loss, smooth) in enumerate(zip(result["losses"][:5], result["smoothed"])):
        average = 0.98 * average + 0.02 * loss
        assert smooth == pytest.approx(average / (1 - 0.98 ** (i + 1)))


def test_lr_find_suggests_the_valley_beside_the_steepest_descent_and_the_minimum_over_ten():
    lrs = [10 ** (-5 + i * 0.1) for i in range(51)]  # 1e-5 .. 1
    # falls fastest at 1e-3 (a logistic step in log10 lr), lowest at 1e-1, then rises
    smoothed = [2 - 1 / (1 + math.exp(-4 * (math.log10(lr) + 3))) + max(0, math.log10(lr) + 1)
                for lr in lrs]
    found = suggest(lrs, smoothed)
    assert found["steepest_lr"] == pytest.approx(1e-3)
    # valley: steps 5..45 are searched (a tenth in, the last 5 out); the loss falls from step 5
    # to the minimum at step 40, 36 steps: start 40 - 36 = 4, span 36, 4 + 12 + 6 = step 22.
    assert found["suggested_lr"] == found["valley_lr"] == pytest.approx(10 ** -2.8)
    assert "valley" in found["rule"]
    assert found["min_loss_lr"] == pytest.approx(1e-1)
    assert found["minimum_div10_lr"] == pytest.approx(1e-2)


def test_valley_is_fastais_longest_descent_not_the_first_dip():
    """A short steep dip early, then a long steady descent: the valley lies in the long one."""
    lrs = [10 ** (-6 + i * 0.1) for i in range(60)]
    smoothed = [3.0] * 10 + [2.0, 2.9, 3.0, 3.0] + [3.0 - 0.05 * i for i in range(40)] + [9.0] * 6
    found = suggest(lrs, smoothed)
    # The longest falling subsequence is a 3.0 and the 39 falling steps 15..53: it ends at step
    # 53, 40 long, so start 53 - 40 = 13, span 40, and 13 + 13 + 6 = step 32.
    assert found["valley_lr"] == found["suggested_lr"] == lrs[32]
    assert found["steepest_lr"] < lrs[12]  # the steepest slope is the dip


def test_lr_find_with_a_bad_range_is_one_line(fmnist_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["lr-find", "lenet", "--data", str(fmnist_dir), "--start", "1",
                "--end", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "0 < --start < --end" in err and err.count("\n") == 1
    assert cli(["lr-find", "lenet", "--plot", str(tmp_path / "no" / "lr.png")]) == 2
    assert "no folder" in capsys.readouterr().err and not list(tmp_path.iterdir())


# -- early stopping --

def test_patience_stops_on_a_plateau_and_still_ends_with_a_test(tmp_path, fmnist_dir):
    # lr 1e-9: the validation accuracy of epoch 1 never changes again, so with patience 2 the
    # run stops after epoch 3 of 6, tests and writes results.json.
    run, results = trained_run(tmp_path, fmnist_dir, lr=1e-9, epochs=6, patience=2)
    saved = json.loads((run / "results.json").read_text())
    assert saved["stopped_early"] == 3 == saved["epochs"] == results["epochs"]
    assert 0 <= saved["test_acc"] <= 1 and saved["best_epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert list_runs(tmp_path)[0]["status"] == "stopped early"
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["early_stopping"] == {"best": saved["best_val_acc"], "wait": 2, "stopped": 3}
    # Resumed, it goes on waiting where it was: one more epoch without gain stops it (a fresh
    # count would take two).
    again = resume(run, {"epochs": 8})
    assert again["stopped_early"] == 4 == again["epochs"]


def test_a_run_that_never_plateaus_records_no_early_stop(tmp_path, fmnist_dir):
    run, results = trained_run(tmp_path, fmnist_dir, epochs=1, patience=1)
    assert results["stopped_early"] is False and results["epochs"] == 1


def test_early_stopping_counts_only_gains_above_min_delta():
    trainer = SimpleNamespace(config={"epochs": 10}, should_stop=False)
    stop = EarlyStopping("acc", patience=2, min_delta=0.01)
    for epoch, acc in enumerate([0.50, 0.505, 0.509], start=1):
        stop.after_epoch(trainer, {"epoch": epoch, "val_acc": acc})
    assert trainer.should_stop and stop.stopped == 3 and stop.best == 0.50
    loss = EarlyStopping("loss", patience=1)  # auto: a loss is minimised
    loss.after_epoch(trainer := SimpleNamespace(config={"epochs": 10}, should_stop=False),
                     {"epoch": 1, "val_loss": 1.0})
    loss.after_epoch(trainer, {"epoch": 2, "val_loss": 0.9})
    assert not trainer.should_stop
    loss.after_epoch(trainer, {"epoch": 3, "val_loss": math.nan})  # NaN is no gain
    assert trainer.should_stop


# -- gradient accumulation --

def _grads(trainer) -> list[torch.Tensor]:
    return [p.grad.clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("sizes", [[8, 8], [8, 4]])
def test_accumulated_gradients_equal_those_of_one_batch_of_all(fmnist_dir, sizes):
    """LeNet (sigmoid, no batch norm, no dropout): K=2 batches of B give the gradients of one
    batch of 2B; a last, smaller batch gets its share of the images, not half."""
    results = []
    for k in (2, 1):
        trainer = build_trainer(config(fmnist_dir, accumulate_steps=k, grad_clip=0.5),
                                callbacks=[])
        images, targets = trainer.train_split.take(torch.arange(sum(sizes)))
        if k == 1:
            trainer.train_step(images, targets)
        else:
            plan = accumulation_plan(sizes, k)
            assert plan == [Micro(True, False, sizes[0] / sum(sizes)),
                            Micro(False, True, sizes[1] / sum(sizes))]
            for (start, n), micro in zip([(0, sizes[0]), (sizes[0], sizes[1])], plan):
                trainer.train_step(images[start:start + n], targets[start:start + n], micro)
        assert trainer.schedule.last_epoch == 1  # one optimizer step either way
        # the (clipped) gradients, and the weights their step moved
        results.append([*_grads(trainer), *(p.detach() for p in trainer.model.parameters())])
    for accumulated, whole in zip(*results):
        torch.testing.assert_close(accumulated, whole, rtol=1e-5, atol=1e-6)


def test_an_accumulating_epoch_steps_the_schedule_once_per_group(fmnist_dir):
    # 80 images in batches of 16: 5 batches, 3 optimizer steps (2 + 2 + 1)
    trainer = build_trainer(config(fmnist_dir, accumulate_steps=2, schedule="cosine"),
                            callbacks=[])
    assert trainer.steps_per_epoch() == 3
    assert trainer.schedule.lr_lambdas[0](6) == 0.0  # cosine reaches 0 after 2 x 3 steps
    stepped = []

    class Steps(Callback):
        def after_step(self, trainer, step):
            stepped.append(step.images)

    trainer.add_callbacks(Steps())
    trainer.train_epoch(1)
    assert trainer.schedule.last_epoch == 3 and stepped == [32, 32, 16]
    assert accumulation_plan([16] * 5, 2)[-1] == WHOLE


def test_ctrl_c_inside_an_accumulating_epoch_resumes_bitwise_with_its_ema(
        tmp_path, fmnist_dir, one_thread):
    """Ctrl-C stops after an optimizer step, never between its batches: the checkpoint holds
    the next step's first batch, and the resumed run ends as the straight one, EMA included."""
    keys = dict(accumulate_steps=2, ema=0.9)
    run(tmp_path, fmnist_dir, "straight", **keys)
    with pytest.raises(Interrupted, match="stopped in epoch 1 after step 2 of 3"):
        run(tmp_path, fmnist_dir, "cut", callbacks=[SignalAt(1, 2)], **keys)
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["batch"] == 4 and state["schedule"]["step_count"] == 2
    resume(tmp_path / "cut")
    a, b = (torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)
            for name in ("straight", "cut"))
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


# -- model EMA --

def test_ema_equals_the_hand_computed_average_after_two_steps(fmnist_dir):
    """Parameters and batch-norm running statistics averaged; the batch count copied."""
    trainer = build_trainer(config(fmnist_dir, model="lenet-bn", ema=0.9), callbacks=[])
    ema = EMA(0.9)
    ema.before_fit(trainer)

    def snapshot():
        return [v.detach().clone() for v in trainer.model.state_dict().values()]

    snapshots = [snapshot()]
    for batch in range(2):
        images, targets = trainer.train_split.take(torch.arange(batch * 16, batch * 16 + 16))
        trainer.train_step(images, targets)
        ema.after_step(trainer, None)
        snapshots.append(snapshot())
    averaged = ema.ema.module.state_dict()
    assert len(averaged) == len(snapshots[0]) > 0
    for (name, mine), w0, w1, w2 in zip(averaged.items(), *snapshots):
        if mine.is_floating_point():
            torch.testing.assert_close(mine, 0.81 * w0 + 0.09 * w1 + 0.1 * w2)
        else:
            assert name.endswith("num_batches_tracked") and int(mine) == int(w2) == 2
    assert not any(p.requires_grad for p in ema.ema.module.parameters())


def test_ema_is_evaluated_checkpointed_and_restored(tmp_path, fmnist_dir):
    run, results = trained_run(tmp_path, fmnist_dir, ema=0.5, epochs=1)
    row = json.loads((run / "metrics.jsonl").read_text())
    assert {"val_ema_loss", "val_ema_acc", "val_ema_top5"} <= set(row)
    assert row["val_ema_loss"] != row["val_loss"]
    assert {"test_ema_loss", "test_ema_acc"} <= set(results)
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert set(state["ema"]) == set(state["model"])
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["ema"]
    callback = EMA(0.5)
    trainer = build_trainer(config(fmnist_dir, ema=0.5), callbacks=[callback],
                            checkpoint=torch.load(run / "checkpoints" / "last.pt",
                                                  weights_only=True))
    callback.before_fit(trainer)
    for key, value in callback.ema.module.state_dict().items():
        assert torch.equal(value, saved[key]), key


# -- MixUp and CutMix --

def _labelled_batch(n=6, classes=10):
    """Image i is filled with the value i + 1, label i: a pixel tells which image it came from."""
    x = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8)
    return x.contiguous(), T.one_hot(torch.arange(n), classes)


def test_mixup_blends_images_and_labels_by_the_same_weight():
    torch.manual_seed(0)
    x, soft = _labelled_batch()
    mixed, targets = T.mix(x, soft, mixup=0.4)
    assert mixed.shape == x.shape and targets.shape == soft.shape
    lam = targets[0, 0]  # image 0 is mixed with image 5
    assert 0 < lam < 1 and targets[0, 5] == pytest.approx(1 - lam)
    torch.testing.assert_close(mixed[0], lam * x[0] + (1 - lam) * x[5])
    torch.testing.assert_close(targets.sum(1), torch.ones(6))


def test_cutmix_label_weight_is_the_share_of_pixels_kept():
    torch.manual_seed(1)
    x, soft = _labelled_batch()
    for _ in range(5):
        mixed, targets = T.mix(x, soft, cutmix=1.0)
        kept = (mixed[1] == x[1]).float().mean()  # image 1 with image 4 pasted in
        assert ((mixed[1] == x[1]) | (mixed[1] == x[4])).all()
        torch.testing.assert_close(targets[1, 1], kept)
        torch.testing.assert_close(targets[1, 4], 1 - kept)


def test_mixup_and_cutmix_together_take_each_about_half_the_batches():
    torch.manual_seed(2)
    x, soft = _labelled_batch()
    cut = sum(bool(((m == x) | (m == x.flip(0))).all())
              for m, _ in (T.mix(x, soft, mixup=1.0, cutmix=1.0) for _ in range(40)))
    assert 10 <= cut <= 30


def test_mixing_applies_in_training_only(fmnist_dir):
    trainer = build_trainer(config(fmnist_dir, mixup=0.2, cutmix=1.0, label_smoothing=0.1),
                            callbacks=[])
    images, targets = trainer.train_split.take(torch.arange(16))
    x, y = trainer.prepare(images, targets, train=False)
    assert torch.equal(y, targets)  # hard labels, images as without mixing
    plain = build_trainer(config(fmnist_dir), callbacks=[])
    assert torch.equal(x, plain.prepare(images, targets, train=False)[0])
    x, y = trainer.prepare(images, targets, train=True)
    assert y.shape == (16, 10) and torch.allclose(y.sum(1), torch.ones(16))
    output, y, loss = trainer.train_step(images, targets)
    assert torch.isfinite(loss)


def test_mixup_outside_classification_is_a_config_error():
    with pytest.raises(CnnbenchError, match="mixup and cutmix mix class labels: the "
                                            "segmentation task"):
        cfg.resolve("unet", None, {"mixup": 0.2})


# -- AMP per device --

def test_bf16_autocast_runs_on_the_cpu_and_is_recorded(tmp_path, fmnist_dir):
    trainer = build_trainer(config(fmnist_dir, amp="bf16", device="cpu"), callbacks=[])
    assert trainer.amp_dtype == torch.bfloat16
    images, targets = trainer.train_split.take(torch.arange(4))
    output, _, loss = trainer.forward_loss(images, targets, train=True)
    assert output.dtype == torch.bfloat16 and torch.isfinite(loss)
    run, results = trained_run(tmp_path, fmnist_dir, amp="bf16", device="cpu", epochs=1)
    assert yaml.safe_load((run / "config.yaml").read_text())["amp"] == "bf16"
    assert math.isfinite(results["test_loss"])


def test_fp16_on_the_cpu_is_one_line_and_leaves_nothing(fmnist_dir, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.chdir(tmp_path)
    code = cli(["train", "lenet", "--data", str(fmnist_dir), "--limit", "32", "--device", "cpu",
                "--amp", "fp16", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: amp fp16 does not run on cpu: use --amp bf16 or none\n"
    assert not list(tmp_path.iterdir())
