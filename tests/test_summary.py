"""`cnnbench summary` and `cnnbench models`: totals, FLOPs, the JSON contract, bad input."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cnnbench.cli import app
from cnnbench.registry import get_model, list_models
from cnnbench.summary import summarize, summarize_module

runner = CliRunner()


def run_cli(*args):
    """Run the real entry point in a subprocess: exit code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "cnnbench", *args], capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("name", list_models())
def test_summary_totals_equal_parameter_sum(name):
    with torch.device("meta"):
        expected = sum(p.numel() for p in get_model(name).parameters())
    s = summarize(name, depth=2)
    assert s["total_params"] == expected
    assert s["trainable_params"] + s["non_trainable_params"] == expected
    # Rows never count a parameter twice: they add up to the total.
    assert sum(layer["params"] for layer in s["layers"]) == expected
    assert sum(layer["flops"] for layer in s["layers"]) == s["flops"] > 0


def test_flops_of_a_lone_conv_are_two_per_multiply_add():
    cin, cout, k, h, w = 3, 8, 3, 10, 12
    s = summarize_module(nn.Sequential(nn.Conv2d(cin, cout, k)), (cin, h, w))
    h_out, w_out = h - k + 1, w - k + 1
    assert s["flops"] == 2 * cin * cout * k * k * h_out * w_out
    assert s["layers"][0]["flops"] == s["flops"]


def test_depth_controls_nesting():
    shallow = summarize("resnet18", depth=1)
    deep = summarize("resnet18", depth=3)
    assert {layer["depth"] for layer in shallow["layers"]} == {1}
    assert max(layer["depth"] for layer in deep["layers"]) == 3
    assert len(deep["layers"]) > len(shallow["layers"])
    assert shallow["total_params"] == deep["total_params"]


def test_summary_json_contract():
    code, out, err = run_cli("summary", "lenet", "--json", "--batch-size", "4")
    assert code == 0, err
    data = json.loads(out)
    assert data["model"] == "lenet" and data["input_size"] == [4, 1, 28, 28]
    assert isinstance(data["total_params"], int) and data["total_params"] == 61_706
    assert data["trainable_params"] == 61_706 and isinstance(data["flops"], int)
    for layer in data["layers"]:
        assert {"name", "type", "output_shape", "params", "trainable", "flops"} <= set(layer)
    assert data["layers"][0] == {"name": "0", "type": "Conv2d", "depth": 1,
                                 "output_shape": [4, 6, 28, 28], "params": 156,
                                 "trainable": True, "flops": 2 * 25 * 6 * 28 * 28 * 4}


def test_multi_output_models_show_every_output():
    fpn = summarize("fpn", (3, 64, 64), depth=1)
    assert fpn["outputs"] == [[1, 256, s, s] for s in (16, 8, 4, 2)]
    ssd = summarize("ssd", depth=1)
    assert len(ssd["outputs"]) == 3
    assert any("anchors on map 6" in note for note in ssd["notes"])


def test_torchvision_model_summarises():
    s = summarize("torchvision:resnet50", depth=1)
    assert s["total_params"] == 25_557_032
    assert s["outputs"] == [1, 1000]


def test_input_size_and_model_args_are_applied():
    s = summarize("vgg11", (1, 224, 224), model_args={"ratio": 4}, depth=1)
    assert s["layers"][0]["output_shape"] == [1, 16, 112, 112]


def test_table_output_names_units_and_totals():
    result = runner.invoke(app, ["summary", "densenet"])
    assert result.exit_code == 0, result.output
    assert "758,226" in result.output
    assert "1 multiply-add = 2 FLOPs" in result.output
    assert "1.DenseBlock" not in result.output and "(DenseBlock)" in result.output


def test_models_lists_every_name_with_params():
    code, out, _ = run_cli("models", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == set(list_models())
    assert rows["densenet"]["params"] == 758_226
    assert rows["lenet"]["input_size"] == [1, 28, 28]


@pytest.mark.parametrize("args,message", [
    (["summary", "densnet"], "did you mean densenet"),
    (["summary", "torchvision:resnet5"], "did you mean resnet50"),
    (["summary", "alexnet", "--input-size", "100"], "smallest that works is 1x200x200"),
    (["summary", "ssd", "--input-size", "300"], "smallest that works is 3x352x352"),
    (["summary", "unet", "--input-size", "1x8x8"], "smallest that works is 1x16x16"),
    (["summary", "lenet", "--input-size", "64"], "28-31 px"),
    (["summary", "lenet", "--input-size", "2x2x2x2"], "bad --input-size"),
    (["summary", "lenet", "--model-arg", "oops"], "bad --model-arg"),
    (["summary", "vgg11", "--model-arg", "rati=4"], "did you mean ratio"),
    (["models", "--task", "detect"], "did you mean detection"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    code, out, err = run_cli(*args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_version_and_help():
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("cnnbench ")
    result = runner.invoke(app, ["summary", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output
