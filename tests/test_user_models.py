"""The user's own model: ``module:callable`` in train, summary, bench and receptive-field."""

import json
import sys
import textwrap

import pytest
import torch

from cli_run import cli

NETS = '''
    from torch import nn

    def build_net(in_channels: int = 1, num_classes: int = 10, width: int = 8):
        """A tiny convnet of the user's own."""
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def returns_no_module():
        return 42

    def raises(**kwargs):
        raise RuntimeError("the user's bug")

    VALUE = 3
    '''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """``usernets_i24`` importable from the folder the command runs in."""
    (tmp_path / "usernets_i24.py").write_text(textwrap.dedent(NETS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usernets_i24"
    sys.modules.pop("usernets_i24", None)


def test_train_a_model_of_ones_own_with_its_options(nets, fmnist_dir, tmp_path):
    assert cli(["train", f"{nets}:build_net", "-m", "width=4", "--data",
                f"fashion-mnist:{fmnist_dir}", "--limit", "40", "--input-size", "28", "--epochs", "1",
                "--run-dir", tmp_path / "run", "-q"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["model"] == f"{nets}:build_net" and results["task"] == "classification"
    assert results["params"] == 1 * 4 * 9 + 4 + 4 * 10 + 10  # conv 3x3 1->4, linear 4->10
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["model"]["0.weight"].shape == (4, 1, 3, 3)
    assert cli(["train", "--resume", tmp_path / "run", "--epochs", "2", "-q"]) == 0


def test_summary_bench_and_receptive_field_take_it(nets, capsys):
    assert cli(["summary", f"{nets}:build_net", "--input-size", "1x28x28", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total_params"] == 8 * 9 + 8 + 8 * 10 + 10
    assert summary["input_size"] == [1, 1, 28, 28]
    assert cli(["receptive-field", f"{nets}:build_net", "--input-size", "1x28x28",
                "--json"]) == 0
    field = json.loads(capsys.readouterr().out)
    assert any(layer.get("receptive_field") == [3, 3] for layer in field["layers"]), field
    assert cli(["bench", f"{nets}:build_net", "-b", "1", "--no-train", "--input-size",
                "1x28x28", "--min-run-time", "0.01", "--json"]) == 0
    row, = json.loads(capsys.readouterr().out)["rows"]
    assert row["model"] == f"{nets}:build_net" and row["infer_input_size"] == [1, 28, 28]
    assert row["flops_per_sample"] == 2 * (28 * 28 * 8 * 9 + 8 * 10)  # conv and linear MACs


@pytest.mark.parametrize("model, message", [
    (":build_net", "a model of your own is module:callable"),
    ("no_such_module_i24:build", "not registered (`cnnbench models`) and "
                                 "'no_such_module_i24' cannot be imported"),
    ("{nets}:bulid_net", "usernets_i24 has no 'bulid_net' (did you mean build_net?)"),
    ("{nets}:VALUE", "VALUE is a int, not a callable that returns an nn.Module"),
    ("{nets}:returns_no_module", "returned int, not an nn.Module"),
    ("{nets}:raises", "cannot build usernets_i24:raises: it raised RuntimeError: the user's bug"),
])
def test_a_bad_model_of_ones_own_is_one_line_exit_2_and_leaves_nothing(model, message, nets,
                                                                       fmnist_dir, tmp_path,
                                                                       capsys):
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    code = cli(["train", model.format(nets=nets), "--data", f"fashion-mnist:{fmnist_dir}",
                "--limit", "40", "--epochs", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == before
