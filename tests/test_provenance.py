"""environment.json: where a run came from, in every run folder; runs --compare lists what differs."""

import json
import platform
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import cnnbench
from cnnbench.train import resume, train
from cnnbench.training.interrupt import Interrupted
from test_runs import SignalAt, tiny

pytestmark = pytest.mark.usefixtures("keep_threads")
REPO = Path(cnnbench.__file__).resolve().parent.parent


def test_every_run_folder_says_which_code_libraries_machine_and_command_made_it(
        tmp_path, fmnist_dir):
    with pytest.raises(Interrupted):
        train("lenet", None, tiny(fmnist_dir), run_dir=tmp_path / "run",
              callbacks=[SignalAt(1, 3)])
    first = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert first["ended"] is not None and first["earlier"] == []
    resume(tmp_path / "run")
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True,
                                text=True).stdout.strip())
    assert (env["git_commit"], env["git_dirty"]) == (commit or None, dirty if commit else None)
    assert env["cnnbench"] == cnnbench.__version__
    assert (env["python"], env["torch"], env["torchvision"]) == (
        platform.python_version(), torch.__version__, torchvision.__version__)
    assert env["cuda"] == torch.version.cuda and env["device"] == "cpu"
    assert env["host"] == socket.gethostname() and sys.argv[0] in env["command"]
    assert env["started"] <= env["ended"]
    assert [e["started"] for e in env["earlier"]] == [first["started"]]  # the first session


def test_compare_lists_the_environment_fields_that_differ(tmp_path, fmnist_dir, capsys):
    from cli_run import cli
    from cnnbench.runs import compare_runs

    for name in ("here", "there"):
        train("lenet", None, tiny(fmnist_dir, epochs=1), run_dir=tmp_path / name)
    assert compare_runs(["here", "there"], tmp_path)["environment_differ"] == []
    path = tmp_path / "there" / "environment.json"  # as if trained on another machine
    env = json.loads(path.read_text())
    path.write_text(json.dumps({**env, "host": "node17", "torch": "2.3.0"}))
    result = compare_runs(["here", "there"], tmp_path)
    assert result["environment_differ"] == ["torch", "host"]
    assert [r["environment"]["host"] for r in result["runs"]] == [socket.gethostname(), "node17"]
    assert cli(["runs", "--dir", tmp_path, "--compare", "here", "there"]) == 0
    out = capsys.readouterr().out
    assert "env host" in out and "node17" in out and "env torch" in out
