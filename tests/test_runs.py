"""Run folders that survive kills, races, full disks and NaNs; interrupt and resume bitwise."""

import errno
import json
import os
import signal
import threading

import pytest
import torch

from cnnbench import checkpoints, strict_json
from cnnbench.errors import CnnbenchError
from cnnbench.train import resume, train
from cnnbench.training.callbacks import NaNGuard
from cnnbench.training.interrupt import Interrupt, Interrupted
from cnnbench.training.loop import Callback
from cnnbench.runs import list_runs
from cnnbench.training.runs import claim_run_dir, read_metrics, release_run

TIMING = {"epoch_seconds", "images_per_second"}


pytestmark = pytest.mark.usefixtures("keep_threads")


def tiny(data_dir, **changes) -> dict:
    """80 training images in 5 steps of 16 per epoch, 2 epochs, augmentation on."""
    overrides = dict(data=str(data_dir), limit=96, val_size=16, batch_size=16, epochs=2,
                     optimizer="sgd", lr=0.05, momentum=0.9, schedule="onecycle",
                     label_smoothing=0.1, crop_padding=2, hflip=True, random_erasing=0.25,
                     log_graph=False, log_images=False)
    overrides.update(changes)
    return overrides


def run(tmp_path, data_dir, name, callbacks=(), **changes):
    (tmp_path / "none.yaml").write_text("")
    return train("lenet", tmp_path / "none.yaml", tiny(data_dir, **changes),
                 run_dir=tmp_path / name, callbacks=callbacks)


class SignalAt(Callback):
    """Sends ``signum`` to this process after step ``batch`` (1-based) of ``epoch``, once."""

    def __init__(self, epoch, batch, signum=signal.SIGINT):
        self.at, self.signum, self.sent = (epoch, batch), signum, False

    def after_step(self, trainer, step):
        if (step.epoch, step.batch + 1) == self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)  # the handler only sets a flag


def weights(folder):
    return torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_a_second_ctrl_c_stops_at_once_a_second_sigterm_still_checkpoints():
    # Under Slurm a job step's every process gets the SIGTERM, and torch's launcher passes its
    # own on to its processes: one stop, signalled twice, must still write the checkpoint.
    stop = Interrupt()
    stop.request(signal.SIGTERM)
    stop.request(signal.SIGTERM)
    assert stop.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        stop.request(signal.SIGINT)
    ctrl_c = Interrupt()
    ctrl_c.request(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.request(signal.SIGINT)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_ctrl_c_mid_epoch_then_resume_ends_bitwise_like_an_uninterrupted_run(
        tmp_path, fmnist_dir, threads, capsys):
    torch.set_num_threads(threads)
    straight = tmp_path / "straight"
    run(tmp_path, fmnist_dir, "straight")
    with pytest.raises(Interrupted, match="SIGINT: stopped in epoch 1 after step 3 of 5.*"
                                          "cnnbench train --resume") as info:
        run(tmp_path, fmnist_dir, "cut", callbacks=[SignalAt(1, 3)])
    assert info.value.exit_code == 130
    cut = tmp_path / "cut"
    state = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and state["position"]["batch"] == 3
    assert state["threads"] == threads and not (cut / "metrics.jsonl").exists()
    assert [r["status"] for r in list_runs(tmp_path)] == ["interrupted", "finished"] or \
        sorted(r["status"] for r in list_runs(tmp_path)) == ["finished", "interrupted"]

    torch.set_num_threads(threads % 4 + 1)  # the resume pins the checkpoint's count
    resume(cut)
    a, b = weights(straight), weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a, rows_b = read_metrics(straight), read_metrics(cut)
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in rows_a] == \
        [{k: v for k, v in r.items() if k not in TIMING} for r in rows_b]  # sums kept mid-epoch
    assert not (cut / ".lock").exists()


def test_sigterm_between_epochs_exits_143_with_the_epochs_checkpoint(tmp_path, fmnist_dir):
    with pytest.raises(Interrupted, match="SIGTERM: stopped after epoch 1") as info:
        run(tmp_path, fmnist_dir, "cut", callbacks=[SignalAt(1, 5, signal.SIGTERM)])
    assert info.value.exit_code == 143
    assert [r["epoch"] for r in read_metrics(tmp_path / "cut")] == [1]
    assert "position" not in torch.load(tmp_path / "cut" / "checkpoints" / "last.pt",
                                        weights_only=True)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_good_checkpoint(
        tmp_path, fmnist_dir, monkeypatch):
    from cnnbench.tasks.classification import Classification

    real, calls = Classification.loss, []

    def poisoned(self, output, targets):
        calls.append(1)
        loss = real(self, output, targets)
        return loss * float("nan") if len(calls) == 8 else loss  # epoch 2, batch 2

    monkeypatch.setattr(Classification, "loss", poisoned)
    guard = NaNGuard(every=50)
    with pytest.raises(CnnbenchError, match=r"non-finite at step 7 \(epoch 2, batch 2\).*"
                                            r"last.pt of epoch 1 is kept"):
        run(tmp_path, fmnist_dir, "nan", callbacks=[guard], epochs=3)
    assert guard.reads == 1  # at the end of epoch 1 (the run's own guard stopped epoch 2)
    state = torch.load(tmp_path / "nan" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_the_nan_guard_reads_the_device_every_n_steps():
    class T:
        epoch, schedule = 0, type("S", (), {"last_epoch": 0})()

    guard, trainer = NaNGuard(every=4), T()
    step = type("Step", (), {"epoch": 1, "batch": 0, "loss": torch.tensor(1.0)})
    for n in range(1, 9):
        trainer.schedule.last_epoch, step.batch = n, n - 1
        step.loss = torch.tensor(float("inf") if n == 6 else 1.0)
        if n < 8:
            guard.after_step(trainer, step)
    assert guard.reads == 1  # step 4 only; the bad step 6 is found at step 8
    with pytest.raises(CnnbenchError, match="step 6"):
        guard.after_step(trainer, step)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(errno.ENOSPC, "No space")])
def test_a_kill_or_full_disk_while_checkpointing_leaves_a_resumable_folder(
        tmp_path, fmnist_dir, monkeypatch, failure):
    real, saves = torch.save, []

    def dying(state, file, *args, **kwargs):
        saves.append(file)
        if len(saves) == 3:  # epoch 2's last.pt (epoch 1 wrote last.pt and best.pt)
            file.write(b"PK\x03\x04 half a zip")
            raise failure
        return real(state, file, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", dying)
    expected = KeyboardInterrupt if failure is KeyboardInterrupt else CnnbenchError
    with pytest.raises(expected, match=None if expected is KeyboardInterrupt else "no space left"):
        run(tmp_path, fmnist_dir, "killed")
    folder = tmp_path / "killed"
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]
    assert not (folder / ".lock").exists()
    assert [r["epoch"] for r in read_metrics(folder)] == [1]  # the log is not ahead
    assert torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(checkpoints.torch, "save", real)
    assert resume(folder)["epochs"] == 2


def test_two_claims_of_one_run_dir_exactly_one_wins(tmp_path):
    for attempt in range(30):
        folder, barrier, outcomes = tmp_path / f"d{attempt}", threading.Barrier(6), []

        def claim():
            barrier.wait()
            try:
                claim_run_dir(folder)
                outcomes.append("won")
            except CnnbenchError as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=claim) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("won") == 1, outcomes
        assert all("in use by another run" in o or "never overwritten" in o
                   for o in outcomes if o != "won")


def test_a_failed_start_never_blocks_the_run_dir(tmp_path, fmnist_dir):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / ".lock").write_text("999999999\n")  # a process that is gone
    (folder / "config.yaml").write_text("model: lenet\n")
    assert list_runs(tmp_path)[0]["status"].startswith("damaged: no checkpoint")
    assert run(tmp_path, fmnist_dir, "d", epochs=1)["epochs"] == 1


def test_resume_repairs_a_torn_log_and_drops_rows_past_the_checkpoint(tmp_path, fmnist_dir,
                                                                       capsys):
    class StopAfter(Callback):
        order = 99

        def after_epoch(self, trainer, row):
            raise Interrupted("stop", signal.SIGINT)

    with pytest.raises(Interrupted):
        run(tmp_path, fmnist_dir, "torn", callbacks=[StopAfter()])
    folder = tmp_path / "torn"
    log = folder / "metrics.jsonl"
    log.write_text(log.read_text() + json.dumps({"epoch": 2, "lr": 0.1}) + "\n{\"epoch\": 3, \"lr")
    (folder / "checkpoints" / ".last.pt.tmp-999999999").write_bytes(b"stale")
    (row,) = list_runs(tmp_path)
    assert row["status"].startswith("damaged: metrics.jsonl line 3 is not JSON")
    capsys.readouterr()
    resume(folder)
    err = capsys.readouterr().err
    assert "dropped 1 row(s) after epoch 1" in err and "1 unreadable (torn) line" in err
    assert [r["epoch"] for r in read_metrics(folder)] == [1, 2]
    assert not list((folder / "checkpoints").glob(".*tmp*"))
    assert list_runs(tmp_path)[0]["status"] == "finished"


def test_json_out_is_strict_null_for_nan_and_infinity():
    text = strict_json.dumps({"a": float("nan"), "b": [float("-inf"), 1.5], "c": (2,)})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": [2]}


def test_release_leaves_others_locks_alone(tmp_path):
    folder = claim_run_dir(tmp_path / "mine")
    (folder / ".lock").write_text("1\n")  # now someone else's
    release_run(folder, abandon=True)
    assert folder.exists() and (folder / ".lock").exists()


def test_compare_shows_the_keys_that_differ_and_draws_the_curves(tmp_path, fmnist_dir):
    from cnnbench.plots import save_curves_png
    from cnnbench.runs import compare_runs

    run(tmp_path, fmnist_dir, "slow", lr=0.01)
    run(tmp_path, fmnist_dir, "fast", lr=0.05, label_smoothing=0.0)
    result = compare_runs(["slow", str(tmp_path / "fast")], root=tmp_path)
    assert result["differ"] == ["lr", "label_smoothing"]
    slow, fast = result["runs"]
    assert slow["settings"] == {"lr": 0.01, "label_smoothing": 0.1}
    assert fast["settings"] == {"lr": 0.05, "label_smoothing": 0.0}
    assert slow["curves"]["epoch"] == [1, 2] and len(fast["curves"]["val_acc"]) == 2
    assert slow["curves"]["train_loss"] == [r["train_loss"] for r in
                                            read_metrics(tmp_path / "slow")]
    assert slow["test"] == json.loads((tmp_path / "slow" / "results.json").read_text())[
        "test_acc"]
    png = tmp_path / "curves.png"
    save_curves_png(result, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".curves.png.tmp*"))
    with pytest.raises(CnnbenchError, match="no run 'nope'"):
        compare_runs(["slow", "nope"], root=tmp_path)
    with pytest.raises(CnnbenchError, match="two or more runs"):
        compare_runs(["slow"], root=tmp_path)


def test_runs_columns_add_configuration_keys(tmp_path, fmnist_dir, capsys):
    from cnnbench import render

    run(tmp_path, fmnist_dir, "a", epochs=1, lr=0.02)
    (row,) = list_runs(tmp_path, ["lr", "batch_size", "label_smoothing"])
    assert row["config"] == {"lr": 0.02, "batch_size": 16, "label_smoothing": 0.1}
    capsys.readouterr()
    render.runs_table([row])
    header, line = [ln for ln in capsys.readouterr().out.splitlines() if "│" in ln
                    or "┃" in ln][:2]
    assert [c.strip() for c in header.split("┃")[3:6]] == ["lr", "batch_size", "label_smoothing"]
    assert [c.strip() for c in line.split("│")[3:6]] == ["0.02", "16", "0.1"]
    with pytest.raises(CnnbenchError, match="unknown column 'lrr'.*did you mean lr"):
        list_runs(tmp_path, ["lrr"])


def test_a_sweep_folder_is_not_listed_as_a_run(tmp_path):
    from cnnbench.runs import sweep_dirs

    (tmp_path / "sweep-lenet-1").mkdir()
    (tmp_path / "sweep-lenet-1" / "sweep.yaml").write_text("runs: []\n")
    (tmp_path / "sweep-lenet-1" / ".lock").write_text("1\n")
    assert list_runs(tmp_path) == []
    assert sweep_dirs(tmp_path) == [str(tmp_path / "sweep-lenet-1")]


def test_a_run_stopped_during_its_test_is_tested_on_resume(tmp_path, fmnist_dir):
    first = run(tmp_path, fmnist_dir, "r", epochs=1)
    (tmp_path / "r" / "results.json").unlink()  # killed between the last epoch and results
    again = resume(tmp_path / "r")
    assert again["test_acc"] == first["test_acc"] and (tmp_path / "r" / "results.json").exists()
    with pytest.raises(CnnbenchError, match="already trained 1 of 1"):
        resume(tmp_path / "r")
