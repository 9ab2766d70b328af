"""cnnbench sweep: the plan, its checks before any folder, resuming, the table, --parallel."""

import hashlib
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from cnnbench import sweep
from cnnbench.errors import CnnbenchError
from cnnbench import train
from cnnbench.training.interrupt import Interrupted
from cnnbench.training.loop import Callback
from cnnbench.training.runs import read_metrics


pytestmark = pytest.mark.usefixtures("keep_threads")


def tiny(data_dir, **changes) -> dict:
    """80 training images in 5 steps of 16, one epoch, no graph or images logged."""
    fixed = dict(data=str(data_dir), limit=96, val_size=16, batch_size=16, epochs=1,
                 log_graph=False, log_images=False)
    fixed.update(changes)
    return fixed


def what(tmp_path, data_dir, grid=None, seeds=(0,), **changes) -> dict:
    (tmp_path / "none.yaml").write_text("")
    return sweep.spec("lenet", str(tmp_path / "none.yaml"), tiny(data_dir, **changes),
                      grid or {"lr": [0.05, 0.1]}, list(seeds))


def digests(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_grid_times_the_seeds_gives_one_named_run_each(tmp_path):
    grid = sweep.parse_grid(["lr=1e-3,0.01", "betas=[0.9,0.99],[0.8,0.9]"])
    assert grid == {"lr": [0.001, 0.01], "betas": [[0.9, 0.99], [0.8, 0.9]]}  # YAML, 1e-3 a float
    plan, configs = sweep.make_plan(sweep.spec("lenet", None, {"epochs": 1}, grid, [0, 1]))
    assert [r["name"] for r in plan["runs"]] == [
        "lr=0.001,betas=[0.9,0.99],seed=0", "lr=0.001,betas=[0.9,0.99],seed=1",
        "lr=0.001,betas=[0.8,0.9],seed=0", "lr=0.001,betas=[0.8,0.9],seed=1",
        "lr=0.01,betas=[0.9,0.99],seed=0", "lr=0.01,betas=[0.9,0.99],seed=1",
        "lr=0.01,betas=[0.8,0.9],seed=0", "lr=0.01,betas=[0.8,0.9],seed=1"]
    assert [(c["lr"], c["betas"], c["seed"], c["epochs"]) for c in configs[:3]] == [
        (0.001, [0.9, 0.99], 0, 1), (0.001, [0.9, 0.99], 1, 1), (0.001, [0.8, 0.9], 0, 1)]
    assert plan["config"].endswith("experiments/lenet.yaml")  # the model's recipe, and its hash
    assert len(plan["config_sha256"]) == 64


def test_a_sweep_file_is_a_recipe_with_a_grid_and_the_command_line_beats_it(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("model: lenet\ngrid: {lr: [1e-3, 0.01], batch_size: [64]}\nseeds: [3]\n"
                    "epochs: 2\nlabel_smoothing: 0.1\n")
    s = sweep.spec(fixed={"epochs": 1}, grid={"batch_size": [32, 128]}, file=path)
    assert s == {"model": "lenet", "config": None, "fixed": {"epochs": 1, "label_smoothing": 0.1},
                 "grid": {"lr": [0.001, 0.01], "batch_size": [32, 128]}, "seeds": [3]}
    plan, _ = sweep.make_plan(s)
    assert len(plan["runs"]) == 4 and plan["runs"][0]["name"] == "lr=0.001,batch_size=32,seed=3"


@pytest.mark.parametrize("grid, fixed, seeds, message", [
    ({"lrr": [0.1]}, {}, [0], "unknown key 'lrr'.*did you mean lr.*sweep run lrr=0.1,seed=0"),
    ({"lr": []}, {}, [0], "the grid gives no values for lr"),
    ({"lr": [0.1, -0.1]}, {}, [0], "lr must be > 0, not -0.1.*sweep run lr=-0.1,seed=0"),
    ({"momentum": [0.5, 1.5]}, {}, [0], r"momentum must be in \[0, 1\)"),
    ({"lr": [0.1, 0.1]}, {}, [0], "the grid gives lr=0.1 twice"),
    ({"seed": [1, 2]}, {}, [0], "--seeds"),
    ({"lr": [0.1]}, {"lr": 0.2}, [0], "lr is both fixed"),
    ({"lr": [0.1]}, {"epochs": 0}, [0], "epochs must be >= 1"),
    ({"lr": [0.1]}, {}, [], "no seed"),
    ({"model_args": [{"ratio": 4}]}, {}, [0], "model 'lenet' has no option 'ratio'"),
])
def test_bad_input_stops_the_whole_sweep_before_any_folder(tmp_path, grid, fixed, seeds,
                                                             message):
    s = sweep.spec("lenet", None, fixed, grid, seeds)
    with pytest.raises(CnnbenchError, match=message) as info:
        sweep.run_sweep(s, root=tmp_path / "runs")
    assert "\n" not in str(info.value)
    with pytest.raises(CnnbenchError):
        sweep.run_sweep(s, tmp_path / "mine")
    assert not list(tmp_path.iterdir())  # no folder at all


def test_bad_grid_options_are_one_line():
    with pytest.raises(CnnbenchError, match="bad --grid 'lr'"):
        sweep.parse_grid(["lr"])
    with pytest.raises(CnnbenchError, match="--grid gives lr twice"):
        sweep.parse_grid(["lr=0.1", "lr=0.2"])
    with pytest.raises(CnnbenchError, match="bad --seeds"):
        sweep.parse_seeds("0,one")


class SignalAt(Callback):
    """Sends SIGINT to this process after step ``batch`` (1-based) of epoch 1, once."""

    def __init__(self, batch):
        self.batch = batch

    def after_step(self, trainer, step):
        if (step.epoch, step.batch + 1) == (1, self.batch):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_rerun_skips_finished_runs_untouched_and_resumes_an_interrupted_one(
        tmp_path, fmnist_dir):
    s = what(tmp_path, fmnist_dir, epochs=2)
    folder = tmp_path / "sweep"
    plan, _, _ = sweep.prepare(s, folder)
    sweep.release_run(folder)
    second = plan["runs"][1]
    with pytest.raises(Interrupted):  # the second run stopped mid-epoch, resumable
        train.train("lenet", plan["config"], {**plan["fixed"], **second["overrides"]},
                    run_dir=folder / second["name"], callbacks=[SignalAt(3)])
    assert sweep.run_state(folder / second["name"]) == "resume"

    table = sweep.run_sweep(s, folder)
    assert [r["finished"] for r in table["rows"]] == [1, 1]
    assert [r["epoch"] for r in read_metrics(folder / second["name"])] == [1, 2]
    before = digests(folder)
    lines = []
    again = sweep.run_sweep(s, folder, say=lines.append)  # the same sweep: nothing to do
    assert lines == ["[1/2] lr=0.05,seed=0: finished, skipped",
                     "[2/2] lr=0.1,seed=0: finished, skipped"]
    assert digests(folder) == before and again == table
    with pytest.raises(CnnbenchError, match=r"holds another sweep \(its grid is .*0.1\]\}, "
                                            r"here .*0.2\]\}\)"):
        sweep.run_sweep(what(tmp_path, fmnist_dir, {"lr": [0.05, 0.2]}, epochs=2), folder)


def sigint_when(path) -> threading.Thread:
    """A watcher that sends this process SIGINT (Ctrl-C) as soon as ``path`` exists."""
    def watch():
        while not path.exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_ctrl_c_after_the_second_run_then_the_rerun_finishes_the_rest(tmp_path, fmnist_dir):
    """Figure (a) in small: 4 runs, SIGINT when the second run's results.json appears."""
    s = what(tmp_path, fmnist_dir, {"lr": [0.003, 0.01]}, seeds=(0, 1))
    folder = tmp_path / "sweep"
    second = folder / "lr=0.003,seed=1" / "results.json"
    watcher = sigint_when(second)
    with pytest.raises(Interrupted, match="SIGINT: the sweep stopped with 2 of 4 runs to go; "
                                          "continue with: cnnbench sweep --resume") as info:
        sweep.run_sweep(s, folder)
    watcher.join()
    assert info.value.exit_code == 130
    finished = [p.name for p in folder.iterdir() if (p / "results.json").exists()]
    assert sorted(finished) == ["lr=0.003,seed=0", "lr=0.003,seed=1"]
    before = {name: digests(folder / name) for name in finished}
    assert not (folder / ".lock").exists()

    table = sweep.run_sweep(sweep.spec(file=folder), folder, resume=True)  # --resume DIR
    assert [(r["setting"], r["finished"]) for r in table["rows"]] == [
        ({"lr": 0.003}, 2), ({"lr": 0.01}, 2)]
    assert {name: digests(folder / name) for name in finished} == before  # byte-identical


def fake_run(folder, val, test, metric, **config):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "lenet", "epochs": 2,
                                                        "task": "classification", **config}))
    rows = [{"epoch": 1, f"val_{metric}": val[0], "epoch_seconds": 30.0},
            {"epoch": 2, f"val_{metric}": val[1], "epoch_seconds": 30.0}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "results.json").write_text(json.dumps({"monitor": metric, f"test_{metric}": test}))


@pytest.mark.parametrize("monitor", ["acc", "loss"])
def test_the_table_gives_mean_and_spread_over_seeds_and_marks_the_best(tmp_path, monitor):
    folder = tmp_path / "sweep"
    runs = []
    values = {(0.1, 0): ([0.4, 0.5], 0.45), (0.1, 1): ([0.7, 0.6], 0.65),
              (0.2, 0): ([0.8, 0.7], 0.75), (0.2, 1): ([0.9, 0.9], 0.85),
              (0.4, 0): ([0.3, 0.2], 0.25)}  # its seed 1 did not run yet
    for lr in (0.1, 0.2, 0.4):
        for seed in (0, 1):
            name = f"lr={lr},seed={seed}"
            runs.append({"name": name, "overrides": {"lr": lr, "seed": seed}})
            if (lr, seed) in values:
                val, test = values[(lr, seed)]
                fake_run(folder / name, val, test, monitor, monitor=monitor, lr=lr, seed=seed)
    (folder / "sweep.yaml").write_text(yaml.safe_dump({
        "model": "lenet", "grid": {"lr": [0.1, 0.2, 0.4]}, "seeds": [0, 1], "runs": runs}))
    table = sweep.summarize(folder)
    assert table["varied"] == ["lr"] and table["monitor"] == monitor
    rows = {r["setting"]["lr"]: r for r in table["rows"]}
    # best validation value of each run: max (acc) or min (loss) over its epochs
    if monitor == "acc":
        bests = {0.1: [0.5, 0.7], 0.2: [0.8, 0.9], 0.4: [0.3]}
    else:
        bests = {0.1: [0.4, 0.6], 0.2: [0.7, 0.9], 0.4: [0.2]}
    for lr, vals in bests.items():
        mean = sum(vals) / len(vals)
        assert rows[lr]["best_val"]["mean"] == pytest.approx(mean)
        if len(vals) > 1:
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            assert rows[lr]["best_val"]["std"] == pytest.approx(std)
        else:
            assert rows[lr]["best_val"]["std"] is None
    assert rows[0.1]["test"] == pytest.approx({"mean": 0.55, "std": math.sqrt(0.02), "min": 0.45,
                                               "max": 0.65, "n": 2})
    assert (rows[0.4]["finished"], rows[0.4]["of"]) == (1, 2)
    assert rows[0.1]["minutes"] == pytest.approx(1.0)
    best = [lr for lr, r in rows.items() if r["best"]]
    assert best == ([0.2] if monitor == "acc" else [0.4])  # the highest mean acc, lowest loss
    assert table["mode"] == ("max" if monitor == "acc" else "min")


def test_parallel_2_finishes_four_tiny_runs_like_one_after_another(tmp_path, fmnist_dir):
    s = what(tmp_path, fmnist_dir, {"lr": [0.05, 0.1]}, seeds=(0, 1), threads=1)
    lines = []
    table = sweep.run_sweep(s, tmp_path / "parallel", parallel=2, say=lines.append)
    assert [r["finished"] for r in table["rows"]] == [2, 2]
    assert sum("(process 2 of 2)" in line for line in lines) >= 1
    sweep.run_sweep(what(tmp_path, fmnist_dir, {"lr": [0.1]}, seeds=(1,), threads=1),
                    tmp_path / "here")  # the same run in this process
    name = "lr=0.1,seed=1"
    a = torch.load(tmp_path / "parallel" / name / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "here" / name / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert "test on best.pt of epoch 1  loss" in (tmp_path / "parallel" / "logs" / f"{name}.log").read_text()


def test_parallel_asks_no_more_gpus_than_there_are(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(CnnbenchError, match="--parallel 2 runs one per GPU, but 1 GPU"):
        sweep.slots([{"device": "cuda", "threads": None}], 2)
    envs, extra = sweep.slots([{"device": "cuda", "threads": None}], 1)
    assert envs == [{"CUDA_VISIBLE_DEVICES": "0"}] and extra == {}
    with pytest.raises(CnnbenchError, match="--parallel 3 runs one per GPU"):
        sweep.run_sweep(sweep.spec("lenet", None, {"device": "cuda"}, {"lr": [0.1, 0.2]}, [0]),
                        tmp_path / "sweep", parallel=3)
    assert not (tmp_path / "sweep").exists()  # refused before the folder


def test_on_the_cpu_parallel_runs_share_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert sweep.slots([{"device": "cpu", "threads": None}], 2) == (None, {"threads": 4})
    assert sweep.slots([{"device": "cpu", "threads": 3}], 2) == (None, {})  # as given


@pytest.mark.parametrize("args, message", [
    (["--grid", "lrr=0.1,0.2"], "unknown key 'lrr'"),
    (["--grid", "lr="], "the grid gives no values for lr"),
    (["--grid", "lr=0.1,-1"], "lr must be > 0"),
    (["--seeds", "0,x"], "bad --seeds"),
])
def test_the_command_refuses_a_bad_sweep_in_one_line_with_exit_2(tmp_path, monkeypatch, capsys,
                                                                  args, message):
    from cnnbench import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["cnnbench", "sweep", "lenet", "--epochs", "1", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.iterdir())  # no runs/ folder


def test_ctrl_c_reaches_the_parallel_runs_once_and_the_rerun_finishes_them(tmp_path, fmnist_dir):
    s = what(tmp_path, fmnist_dir, {"lr": [0.05, 0.1]}, seeds=(0, 1), threads=1, epochs=2)
    folder = tmp_path / "sweep"
    first = folder / "lr=0.05,seed=0" / "metrics.jsonl"
    sigint_when(first)
    lines = []
    with pytest.raises(Interrupted, match="continue with: cnnbench sweep --resume") as info:
        sweep.run_sweep(s, folder, parallel=2, say=lines.append)
    assert info.value.exit_code == 130
    assert any("stopped, resumable" in line for line in lines), lines
    assert not any("failed" in line for line in lines), lines
    table = sweep.run_sweep(sweep.spec(file=folder), folder, resume=True, parallel=2)
    assert [r["finished"] for r in table["rows"]] == [2, 2]
    assert all([r["epoch"] for r in read_metrics(folder / name)] == [1, 2]
               for name in ("lr=0.05,seed=0", "lr=0.1,seed=1"))


def test_a_worker_process_is_told_the_configuration_the_plan_resolved(tmp_path, monkeypatch,
                                                                      capsys):
    from cnnbench import cli

    s = sweep.spec("lenet", None, {"epochs": 1, "data": "/some where/x", "hflip": True},
                   {"lr": [1e-3], "betas": [[0.9, 0.99]], "optimizer": ["adamw"]}, [3])
    plan, configs = sweep.make_plan(s)
    argv = sweep.worker_command(plan, plan["runs"][0], tmp_path / "run", "start", {"threads": 2})
    assert argv[1:5] == ["-m", "cnnbench", "train", "--quiet"]
    monkeypatch.setattr("sys.argv", ["cnnbench", *argv[3:], "--dry-run", "--json"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out) == {**configs[0], "threads": 2}
    assert sweep.worker_command(plan, plan["runs"][0], tmp_path / "run", "resume")[4:] == [
        "--quiet", "--resume", str(tmp_path / "run")]


def test_the_same_command_finds_the_same_default_folder_and_another_plan_another(
        tmp_path, fmnist_dir):
    root = tmp_path / "runs"
    s = what(tmp_path, fmnist_dir, {"lr": [0.05]})
    first = sweep.run_sweep(s, root=root)
    lines = []
    again = sweep.run_sweep(what(tmp_path, fmnist_dir, {"lr": [0.05]}), root=root,
                            say=lines.append)
    assert again["sweep"] == first["sweep"] and lines == ["[1/1] lr=0.05,seed=0: finished, "
                                                          "skipped"]
    plan, _ = sweep.make_plan(s)
    assert first["sweep"] == str(root / f"sweep-lenet-{sweep.plan_digest(plan)}")
    other, _ = sweep.make_plan(what(tmp_path, fmnist_dir, {"lr": [0.05]}, seeds=(1,)))
    assert sweep.default_folder(other, root) != sweep.default_folder(plan, root)
    assert [p.name for p in root.iterdir()] == [Path(first["sweep"]).name]
