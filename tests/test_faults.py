"""Faults: a process killed at every write of an epoch's end, damaged files of each kind the tool
reads, unreadable and looping paths, and a property test over recipe values and ``--set``
strings. Every case ends in exit 0, or exit 2 with one line and no traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_run import cli
from cnnbench.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"epoch_seconds", "images_per_second", "started", "finished", "test_seconds",
          "train_seconds", "minutes", "run_dir"}


def train_argv(data, run_dir) -> list[str]:
    return ["train", "lenet", "--data", str(data), "--limit", "48", "--epochs", "2",
            "--run-dir", str(run_dir), "-q", "--set", "val_size=16", "--set", "threads=1",
            "--set", "log_graph=false"]


def killed_run(name: str, n: int, mode: str, data, run_dir) -> int:
    """``cnnbench train`` in its own process, killed right after the ``n``th write of ``name``."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "kill_at_write.py"), name,
                           str(n), mode, *train_argv(data, run_dir)], env=env,
                          capture_output=True, text=True, timeout=300).returncode


def without_timing(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


def folder_facts(run: Path) -> dict:
    """What must not depend on a kill: the log and the results without their clocks, and the
    weights and epochs of both checkpoints."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    facts = {"rows": [without_timing(r) for r in rows],
             "results": without_timing(json.loads((run / "results.json").read_text()))}
    for name in ("last", "best"):
        state = load_checkpoint(run / "checkpoints" / f"{name}.pt")
        facts[name] = (state["epoch"], {k: v.clone() for k, v in state["model"].items()})
    return facts


def assert_same_facts(got: dict, want: dict) -> None:
    assert got["rows"] == want["rows"]
    assert got["results"] == want["results"]
    for name in ("last", "best"):
        assert got[name][0] == want[name][0]
        assert all(torch.equal(got[name][1][k], v) for k, v in want[name][1].items())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fmnist_dir):
    run = tmp_path_factory.mktemp("reference") / "run"
    assert killed_run("-", 0, "after", fmnist_dir, run) == 0
    return folder_facts(run)


# (file, its Nth write, mode): every write of a 2-epoch run's epoch ends and its results.
KILL_POINTS = [("last.pt", 1, "after"), ("best.pt", 1, "after"), ("metrics.jsonl", 1, "torn"),
               ("metrics.jsonl", 1, "after"), ("last.pt", 2, "after"),
               ("metrics.jsonl", 2, "torn"), ("metrics.jsonl", 2, "after"),
               ("results.json", 1, "after")]


@pytest.mark.parametrize("name,n,mode", KILL_POINTS,
                         ids=[f"{m}-{name}-{n}" for name, n, m in KILL_POINTS])
def test_a_run_killed_at_any_write_resumes_to_the_uninterrupted_folder(
        name, n, mode, uninterrupted, fmnist_dir, tmp_path, keep_threads, capsys):
    run = tmp_path / "run"
    assert killed_run(name, n, mode, fmnist_dir, run) == 137
    code = cli(["train", "--resume", run, "-q"])
    err = capsys.readouterr().err
    if name == "results.json":  # nothing was lost: the run is complete
        assert code == 2 and "already trained 2 of 2" in err, err
    else:
        assert code == 0, err
    assert_same_facts(folder_facts(run), uninterrupted)
