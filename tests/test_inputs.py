"""What a user types for the model and its input: `--input-size`, `--model-arg`, `--batch-size`.

Every bad value is refused before any work, as one line on stderr and exit code 2.
"""

import json
import sys

import pytest
import torch
from torch import nn

from cnnbench import building, cli, registry
from cnnbench.building import build, check_memory, largest_activation
from cnnbench.errors import CnnbenchError
from cnnbench.inputs import model_input_size, parse_input_size
from cnnbench.models import get_model_info

GB = 10**9


def run_cli(monkeypatch, capsys, *args):
    """Run ``cnnbench ARGS`` in this process: exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["cnnbench", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


@pytest.fixture
def free_8gb(monkeypatch):
    """Pretend 8 GB are free, so the memory checks do not depend on this machine."""
    monkeypatch.setattr(building, "free_memory", lambda device="cpu": 8 * GB)


# -- the input's channels follow in_channels --

def test_summary_input_follows_in_channels(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "summary", "unet", "-m", "in_channels=3",
                             "-m", "num_classes=2", "-m", "width=4", "--json", "--depth", "1")
    assert code == 0, err
    data = json.loads(out)
    assert data["input_size"] == [1, 3, 96, 96] and data["outputs"] == [1, 2, 96, 96]


def test_receptive_field_input_follows_in_channels(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "receptive-field", "lenet", "-m",
                             "in_channels=3", "--json")
    assert code == 0, err
    assert json.loads(out)["input_size"] == [3, 28, 28]


def test_height_and_width_alone_take_the_channels_from_in_channels():
    info = get_model_info("unet")
    assert parse_input_size("64", info, {"in_channels": 3}) == (3, 64, 64)
    assert parse_input_size("40x48", info, {"in_channels": 2}) == (2, 40, 48)
    assert parse_input_size(None, info) == (1, 96, 96)
    assert model_input_size(info, {"in_channels": 3}) == (3, 96, 96)
    assert parse_input_size("64", get_model_info("torchvision:resnet18")) == (3, 64, 64)


def test_explicit_channels_that_contradict_in_channels_are_an_error():
    info = get_model_info("unet")
    assert parse_input_size("3x96x96", info, {"in_channels": 3}) == (3, 96, 96)
    with pytest.raises(CnnbenchError, match="1x96x96 does not match in_channels=3"):
        parse_input_size("1x96x96", info, {"in_channels": 3})
    # The library's own entry point says the same, not "does not run at any size".
    with pytest.raises(CnnbenchError, match="input has 1 channels but unet is built with "
                                            "in_channels=3"):
        build("unet", {"in_channels": 3, "width": 4}, in_channels=1, device="meta")


# -- bad input: one line, exit 2 --

BAD_INPUTS = [
    (["summary", "unet", "-m", "in_channels=3", "-i", "1x96x96"], "does not match in_channels=3"),
    (["summary", "vgg11", "-m", "ratio=0"], "ratio must be a whole number >= 1"),
    (["summary", "unet", "-m", "width=-1"], "width must be a whole number >= 1"),
    (["summary", "unet", "-m", "width=abc"], "bad option width='abc' for unet"),
    (["summary", "unet", "-m", "in_channels=0"], "in_channels must be a whole number >= 1"),
    (["summary", "vgg11", "-m", "dropout=nan"], "dropout must be a finite number"),
    (["summary", "unet", "-m", "bilinear=1"], "bilinear must be True or False"),
    (["summary", "vgg11", "-m", "ratoi=4"], "no option 'ratoi' (did you mean ratio?)"),
    (["summary", "vgg11", "-m", "dropout=2"], "cannot build vgg11 with dropout=2: dropout"),
    (["summary", "fpn", "-m", "head=foo"], "cannot build fpn with head='foo': unknown head"),
    (["summary", "fpn", "-m", "layers=[1,1]"], "cannot build fpn with layers=[1, 1]"),
    (["summary", "vgg11", "-m", "ratio=1000"], "vgg11 with ratio=1000 has an empty layer"),
    (["summary", "resnet18", "-i", "100000"],
     "the input alone would take 40 GB for a batch of 1 at 1x100000x100000"),
    (["summary", "resnet18", "-b", "100000000"], "the input alone would take 3.69 TB"),
    (["summary", "resnet18", "-b", "60000"], "its largest activation alone would take 35.4 GB"),
    (["summary", "torchvision:resnet50", "-m", "weights=NOPE"],
     "weights=NOPE is not one of resnet50's: DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2"),
    (["summary", "torchvision:resnet50", "-m", "pretrained=True"],
     "pretrained=True refused: cnnbench downloads no weights"),
    (["summary", "torchvision:fcn_resnet50", "-m", "weights_backbone=DEFAULT"],
     "weights_backbone=DEFAULT refused"),
    (["receptive-field", "vgg11", "-m", "ratio=0"], "ratio must be a whole number >= 1"),
    (["bench", "lenet", "-m", "width=2"], "'lenet' has no option 'width'"),
    (["summary", "lenet", "--dept", "2"],
     "No such option: --dept (Possible options: --depth"),
    (["runs", "--root", "x"], "No such option: --root"),
    (["summary", "lenet", "--depth", "two"], "Invalid value for '--depth'"),
    (["summary"], "Missing argument"),
]


@pytest.mark.parametrize("argv,fragment", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, monkeypatch, capsys, free_8gb):
    code, out, err = run_cli(monkeypatch, capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err
    assert out == ""  # nothing, e.g. no download URL


def test_builder_errors_name_the_options(monkeypatch, capsys):
    assert "lenet" in registry.list_models()  # the families load before the copy below
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register_model("test-divides", task="classification", image_size=(8, 8),
                             source="test")
    def divides(in_channels: int = 1, num_classes: int = 10, groups: int = 1) -> nn.Module:
        return nn.Linear(in_channels * 64 // (groups - 1), num_classes)

    code, _, err = run_cli(monkeypatch, capsys, "summary", "test-divides", "-m", "groups=1")
    assert code == 2 and err.count("\n") == 1
    assert "cannot build test-divides with groups=1: integer division or modulo by zero" in err


def test_memory_check_refuses_only_what_cannot_fit(free_8gb):
    check_memory((1, 96, 96), 20_000)  # 0.7 GB of input, no model to look at
    with pytest.raises(CnnbenchError, match="the input alone"):
        check_memory((1, 96, 96), 300_000)
    # ResNet-18's stem makes 64x48x48 from 1x96x96: 16 times the input.
    check_memory((1, 96, 96), 10_000, name="resnet18")
    with pytest.raises(CnnbenchError, match="largest activation alone would take 9.44 GB"):
        check_memory((1, 96, 96), 16_000, name="resnet18")
    with torch.device("meta"):
        model = registry.get_model("resnet18")
    assert largest_activation(model, (1, 96, 96)) == 64 * 48 * 48
    assert largest_activation(model, (1, 1, 1)) == 512  # b5's 512 channels at 1x1
