"""cnnbench sweep --search: the space, Optuna's study in the sweep folder, pruning, workers
sharing one study, a killed trial resumed, runs --sweep's table and pictures."""

import json
import os
import re
import signal

import optuna
import pytest

from cli_run import cli
from cnnbench import search, sweep
from cnnbench.errors import CnnbenchError
from cnnbench.launchers import LocalLauncher
from cnnbench.training.interrupt import Interrupted
from cnnbench.training.loop import Callback
from cnnbench.training.runs import read_metrics
from test_sweep import tiny

pytestmark = pytest.mark.usefixtures("keep_threads")
SPACE = ["lr=log:1e-5..0.1", "weight_decay=0,5e-4"]


def what(data_dir, **changes):
    return sweep.spec("lenet", None, tiny(data_dir, epochs=2, threads=1, **changes), {}, [0])


def test_a_space_reads_ranges_log_ranges_whole_numbers_and_choices():
    assert search.parse_space(["lr=log:1e-4..1e-1", "momentum=0.8..0.99",
                               "batch_size=int:16..64", "weight_decay=0,5e-4"]) == {
        "lr": {"low": 1e-4, "high": 0.1, "log": True, "int": False},
        "momentum": {"low": 0.8, "high": 0.99, "log": False, "int": False},
        "batch_size": {"low": 16, "high": 64, "log": False, "int": True},
        "weight_decay": {"choice": [0, 0.0005]}}


@pytest.mark.parametrize("items, message", [
    (["lr=0.1..0.1"], r"--space lr=0.1..0.1 is an empty range"),
    (["lr=0.1..0.01"], r"the bounds are reversed \(low 0.1 > high 0.01\)"),
    (["lr=log:0..0.1"], "a log range needs bounds > 0, not 0"),
    (["weight_decay=log:-1..1"], "a log range needs bounds > 0, not -1"),
    (["lr=a..b"], "the bounds must be numbers"),
    (["batch_size=int:1.5..8"], "the bounds must be whole numbers"),
    (["lr="], "--space gives no values for lr"),
    (["lr"], "bad --space 'lr'"),
])
def test_a_bad_space_is_one_line(items, message):
    with pytest.raises(CnnbenchError, match=message) as info:
        search.parse_space(items)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args, message", [
    (["--space", "lr=0.1..0.01"], "the bounds are reversed"),
    (["--space", "lr=log:-1..1"], "a log range needs bounds > 0"),
    (["--space", "lrr=0.1..0.2"], "unknown key 'lrr'"),
    (["--space", "momentum=0.5..1.5"], r"momentum must be in \[0, 1\)"),
    (["--space", "lr=0.1..0.2", "--storage", "sqlite:////no/such/folder/x.db"],
     "cannot open the storage sqlite:////no/such/folder/x.db: .*unable to open database file"),
    (["--space", "lr=0.1..0.2", "--storage", "nosuch://x"], "cannot open the storage nosuch://x"),
    (["--space", "lr=0.1..0.2", "--launcher", "ray"], "unknown launcher 'ray': use local or slurm"),
    (["--space", "lr=0.1..0.2", "--trials", "0"], "--trials must be >= 1"),
    (["--space", "lr=0.1..0.2", "--grid", "lr=0.1"], "--grid and --search"),
    (["--space", "lr=0.1..0.2", "--pruner", "halvng"], "unknown --pruner 'halvng'"),
    (["--space", "lr=0.1..0.2", "--pruner", "halving:reduction_factor=1"],
     r"bad --pruner 'halving:reduction_factor=1': .*reduction_factor >= 2"),
    (["--space", "lr=0.1..0.2", "--pruner", "median:startup=2"],
     r"bad --pruner 'median:startup=2': .*unexpected keyword argument 'startup'"),
    (["--space", "lr=0.1..0.2", "--pruner", "hyperband:3"], r"bad --pruner '3': use KEY=VALUE"),
    (["--space", "lr=0.1..0.2", "--search", "tpe:n_startup=4"],
     r"bad --search 'tpe:n_startup=4': .*unexpected keyword argument 'n_startup'"),
    (["--space", "lr=0.1..0.2", "--search", "tpe:seed=1"],
     r"--search 'tpe:seed=1': seed is not an option here \(it comes from --seeds\)"),
])
def test_the_command_refuses_a_bad_search_in_one_line_leaving_nothing(
        tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    trials = [] if "--trials" in args else ["--trials", "2"]
    tpe = [] if "--search" in args else ["--search", "tpe"]
    code = cli(["sweep", "lenet", *tpe, *trials, "--epochs", "1", "--limit", "32", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not list(tmp_path.iterdir())


def test_a_pruner_and_a_sampler_take_optunas_own_option_names_over_our_defaults():
    median = search.make_pruner("median")
    assert isinstance(median, optuna.pruners.MedianPruner) and median._n_startup_trials == 4
    two = search.make_pruner("median:n_startup_trials=2,n_warmup_steps=1")
    assert (two._n_startup_trials, two._n_warmup_steps) == (2, 1)
    halving = search.make_pruner("halving:min_resource=1,reduction_factor=3")
    assert isinstance(halving, optuna.pruners.SuccessiveHalvingPruner)
    assert (halving._min_resource, halving._reduction_factor) == (1, 3)
    band = search.make_pruner("hyperband:max_resource=4")
    assert isinstance(band, optuna.pruners.HyperbandPruner) and band._max_resource == 4
    tpe = search.make_sampler("tpe:n_startup_trials=4", seed=3)
    assert isinstance(tpe, optuna.samplers.TPESampler) and tpe._n_startup_trials == 4


def test_a_trial_that_trained_its_last_epoch_is_complete_never_pruned(tmp_path, fmnist_dir):
    # The median rule from epoch 2 (n_warmup_steps=2) of 2 on: it would judge trials at
    # their last epoch, when a stop saves nothing. Such a trial is complete and tested.
    table = search.run_search(what(fmnist_dir, monitor="loss"), search.parse_space(
        ["lr=log:1e-6..0.3"]), "random", 5, "median:n_startup_trials=1,n_warmup_steps=2",
        root=tmp_path)
    assert [(r["state"], r["epochs"]) for r in table["rows"]] == [("complete", 2)] * 5
    assert all(r["test_loss"] is not None for r in table["rows"])
    study = search.load_study(sweep.read_plan(tmp_path / table["sweep"].split("/")[-1]),
                              tmp_path / table["sweep"].split("/")[-1])
    assert all(len(t.intermediate_values) == 2 for t in study.trials)  # both epochs reported


class SignalAt(Callback):
    """SIGINT to this process after step ``batch`` of epoch ``epoch`` of the trial ``number``."""

    def __init__(self, epoch, batch):
        self.at = (epoch, batch)

    def after_step(self, trainer, step):
        if (step.epoch, step.batch + 1) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_search_prunes_by_the_epoch_value_and_the_same_command_continues_it(
        tmp_path, fmnist_dir):
    space = search.parse_space(["lr=log:1e-6..0.3"])
    root = tmp_path / "runs"
    s = what(fmnist_dir, monitor="loss")  # minimised: a continuous value, no ties
    lines = []
    table = search.run_search(s, space, "tpe", 7, root=root, say=lines.append)
    folder = root / table["sweep"].split("/")[-1]
    assert table["sweep"] == str(folder) and (folder / "optuna.journal").is_file()
    assert len(table["rows"]) == 7 and table["counts"]["running"] == 0
    assert table["direction"] == "minimize"
    study = search.load_study(sweep.read_plan(folder), folder)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for row in table["rows"]:  # each trial is a run folder; its value is its best val loss
        metrics = read_metrics(folder / row["run"])
        assert row["epochs"] == len(metrics)
        assert [m["val_loss"] for m in metrics] == list(
            study.trials[row["trial"]].intermediate_values.values())
        if row["state"] == "complete":
            assert row["value"] == min(m["val_loss"] for m in metrics) and row["epochs"] == 2
            results = json.loads((folder / row["run"] / "results.json").read_text())
            assert row["test_loss"] == results["test_loss"]
        else:  # pruned: worse than the median of the earlier trials at that epoch
            assert row["state"] == "pruned" and row["epochs"] < 2 and row["trial"] >= 4
            epoch = row["epochs"]
            earlier = sorted(t.intermediate_values[epoch] for t in study.trials
                             if t.number < row["trial"] and epoch in t.intermediate_values)
            median = (earlier[(len(earlier) - 1) // 2] + earlier[len(earlier) // 2]) / 2
            assert metrics[-1]["val_loss"] > median
    assert table["counts"]["pruned"] >= 1, [(r["params"], r["value"]) for r in table["rows"]]
    assert table["best"] == min(complete, key=lambda t: t.value).number
    assert table["epochs"] == sum(r["epochs"] for r in table["rows"])

    lines.clear()  # the same command: nothing left to do; more trials: the same study goes on
    again = search.run_search(s, space, "tpe", 7, root=root, say=lines.append)
    assert again["rows"] == table["rows"] and lines == []
    more = search.run_search(s, space, "tpe", 8, root=root)
    assert more["sweep"] == table["sweep"] and len(more["rows"]) == 8
    assert more["rows"][7]["params"] not in [r["params"] for r in table["rows"]]  # not redrawn


def test_a_trial_stopped_mid_epoch_resumes_as_the_same_trial(tmp_path, fmnist_dir):
    space = search.parse_space(SPACE)
    s = what(fmnist_dir)
    plan, folder = search.prepare(s, space, "random", 2, folder=tmp_path / "sweep")
    study = search.load_study(plan, folder)
    trial = study.ask()
    with pytest.raises(Interrupted):  # a worker killed in trial 0: the study holds it running
        real = search._pruning_callback
        search._pruning_callback = lambda *a: SignalAt(2, 3)
        try:
            search.run_trial(plan, folder, trial)
        finally:
            search._pruning_callback = real
    sweep.release_run(folder)
    params = study.trials[0].params
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
    lines = []
    table = search.run_search(s, space, "random", 2, folder=tmp_path / "sweep",
                              say=lines.append)
    assert lines[0] == "resuming trial(s) 0, left running"
    assert "trial-000 " in lines[1] and lines[1].endswith("resuming")
    assert [r["state"] for r in table["rows"]] == ["complete", "complete"]
    assert table["rows"][0]["params"] == params
    assert [m["epoch"] for m in read_metrics(folder / "trial-000")] == [1, 2]


@pytest.mark.cli
def test_two_workers_share_one_study_and_runs_sweep_draws_optunas_pictures(
        tmp_path, fmnist_dir, capsys):
    table = search.run_search(what(fmnist_dir), search.parse_space(SPACE), "random", 4,
                              folder=tmp_path / "sweep", launcher=LocalLauncher(2))
    folder = tmp_path / "sweep"
    assert sorted(r["trial"] for r in table["rows"]) == [0, 1, 2, 3]
    logs = [(folder / "logs" / f"worker-{k}.log").read_text() for k in (1, 2)]
    started = [line.split()[0] for log in logs for line in log.splitlines()
               if line.startswith("trial-") and line.endswith(": training")]
    assert sorted(started) == [f"trial-00{n}" for n in range(4)]  # each trial once, by one
    assert len({json.dumps(r["params"]) for r in table["rows"]}) == 4  # no point drawn twice
    assert cli(["runs", "--sweep", folder]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 trials" in out
    for name in ("optimization_history.png", "param_importances.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
