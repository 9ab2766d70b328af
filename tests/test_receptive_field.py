"""Receptive fields: hand-derived figures, the gradient check on every model, the CLI contract."""

import json
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnnbench import cli, plots, rf
from cnnbench.building import build
from cnnbench.errors import CnnbenchError
from cnnbench.rf.rules import RULES, identity, rule
from cnnbench.rf.verify import Linearised
from cnnbench.models import get_model_info, list_models


def by_name(result):
    return {layer["name"]: layer for layer in result["layers"]}


def field(layer):
    return layer["receptive_field"], layer["stride"], layer["start"]


def test_lenet_fields_match_hand_derivation():
    # conv 5x5 pad 2: r=5, j=1, start -2+2=0; pool 2/2: r=5+1=6, j=2, start 0.5;
    # conv 5x5: r=6+4*2=14, start 0.5+2*2=4.5; pool 2/2: r=14+2=16, j=4, start 5.5.
    layers = by_name(rf.receptive_fields("lenet"))
    assert field(layers["0"]) == ([5, 5], [1, 1], [0, 0])
    assert field(layers["2"]) == ([6, 6], [2, 2], [0.5, 0.5])
    assert field(layers["3"]) == ([14, 14], [2, 2], [4.5, 4.5])
    assert field(layers["5"]) == ([16, 16], [4, 4], [5.5, 5.5])
    # The first dense layer reads all 5x5 units: 16 + 4*4 = 32 px, the whole 28x28 input.
    assert layers["7"]["receptive_field"] == [32, 32]
    assert layers["7"]["whole_input"] and "whole input" in " ".join(layers["7"]["notes"])


def test_chain_with_stride_and_dilation():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1),   # r 3, j 2, start 0
                        nn.Conv2d(2, 2, 3, dilation=2, padding=2),  # k_eff 5: r 3+4*2=11
                        nn.MaxPool2d(3, stride=2))                   # r 11+2*2=15, j 4, s 0+1*2
    layers = by_name(rf.module_fields(net, (1, 33, 33)))
    assert field(layers["0"]) == ([3, 3], [2, 2], [0, 0])
    assert field(layers["1"]) == ([11, 11], [2, 2], [0, 0])
    assert field(layers["2"]) == ([15, 15], [4, 4], [2, 2])
    assert rf.verify_module(net, (1, 33, 33))["agree"]


def test_asymmetric_kernel_and_stride_give_per_axis_fields():
    net = nn.Sequential(nn.Conv2d(1, 1, (3, 5), stride=(1, 2), padding=(0, 2)),
                        nn.Conv2d(1, 1, (1, 3)))
    layers = by_name(rf.module_fields(net, (1, 20, 30)))
    assert field(layers["0"]) == ([3, 5], [1, 2], [1, 0])
    assert field(layers["1"]) == ([3, 9], [1, 2], [1, 2])
    assert rf.verify_module(net, (1, 20, 30))["agree"]


class TwoBranch(nn.Module):
    """A 3x3 branch and a 5x5 (two 3x3) branch, joined by ``how``."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.small = nn.Conv2d(1, 2, 3, padding=1)
        self.large = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))

    def forward(self, x):
        a, b = torch.relu(self.small(x)), self.large(x)
        return torch.cat((a, b), dim=1) if self.how == "cat" else a + b


@pytest.mark.parametrize("how", ["cat", "add"])
def test_where_branches_meet_the_larger_field_wins(how):
    net = nn.Sequential(TwoBranch(how), nn.Conv2d(4 if how == "cat" else 2, 1, 1))
    layers = by_name(rf.module_fields(net, (1, 16, 16)))
    assert layers["0.small"]["receptive_field"] == [3, 3]
    assert layers["0.large"]["receptive_field"] == [5, 5]
    assert layers["0"]["receptive_field"] == [5, 5]
    assert not any("misaligned" in n for n in layers["0"]["notes"])
    assert rf.verify_module(net, (1, 16, 16))["agree"]


class Misaligned(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 1, 1)
        self.b = nn.Conv2d(1, 1, 3)

    def forward(self, x):
        return self.a(x)[..., :-2, :-2] + self.b(x)  # centres 0 and 1: off by a pixel


def test_paths_with_different_centres_are_reported_misaligned():
    result = rf.module_fields(Misaligned(), (1, 12, 12))
    notes = " ".join(by_name(result)["b"]["notes"] + result["notes"]
                     + [n for l in result["layers"] for n in l["notes"]])
    assert "misaligned" in notes


def test_upsampling_divides_the_stride_and_is_verified():
    net = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1),
                        nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.ConvTranspose2d(1, 1, 2, stride=2))
    layers = by_name(rf.module_fields(net, (1, 16, 16)))
    assert layers["1"]["stride"] == [1, 1]
    assert layers["2"]["stride"] == [0.5, 0.5]
    assert rf.verify_module(net, (1, 16, 16))["agree"]


class Opaque(nn.Module):
    def forward(self, x):
        return torch.fft.ifft2(torch.fft.fft2(x)).real  # every output reads every input


def test_an_operation_without_a_rule_is_flagged_not_taken_for_identity():
    layers = rf.module_fields(nn.Sequential(nn.Conv2d(1, 1, 3), Opaque()), (1, 10, 10))["layers"]
    assert any("uninterpreted" in n for n in layers[-1]["notes"])


def test_a_second_rule_for_an_operation_is_refused():
    with pytest.raises(ValueError, match="two receptive-field rules for 'relu'"):
        rule("relu")(lambda call: None)


def test_each_rule_runs_as_its_linearisation_in_the_check():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 6)
    with Linearised():
        # Activations and normalisation: the identity; max pooling: the average of its window.
        assert torch.equal(torch.relu(x), x) and torch.equal(F.group_norm(x, 1), x)
        assert torch.equal(F.max_pool2d(x, 2), F.avg_pool2d(x, 2))
        # Convolution and dense layers: every weight 1/fan-in, no bias.
        conv = F.conv2d(x, torch.randn(3, 2, 3, 3), torch.randn(3), padding=1)
        dense = F.linear(x, torch.randn(4, 6), torch.randn(4))
        summed = x.add(1.0)  # arithmetic runs as it is
    window_mean = F.avg_pool2d(x.mean(1, keepdim=True), 3, 1, 1, count_include_pad=True)
    assert torch.allclose(conv, window_mean.expand(1, 3, 6, 6), atol=1e-6)
    assert torch.allclose(dense, x.mean(-1, keepdim=True).expand(1, 2, 6, 4))
    assert torch.equal(summed, x + 1)
    assert RULES["relu"].linear is identity and RULES["add"].linear is None


def test_deformable_layers_say_offsets_can_extend_the_field():
    layers = by_name(rf.receptive_fields("resnet18-dcn", (1, 64, 64)))
    assert "learned offsets" in " ".join(layers["2.0.conv1"]["notes"])
    plain = by_name(rf.receptive_fields("resnet18", (1, 64, 64)))
    assert layers["4"]["receptive_field"] == plain["4"]["receptive_field"] == [435, 435]


def test_torchvision_resnet50_layer4_field_is_427():
    layers = by_name(rf.receptive_fields("torchvision:resnet50"))
    assert field(layers["layer4"])[:2] == ([427, 427], [32, 32])
    assert "whole input" in " ".join(layers["avgpool"]["notes"] + layers["fc"]["notes"])


# Width options shrink the heaviest families without changing any geometry.
LIGHT = {"ratio": 8, "width": 8}


def smallest_input(name: str) -> tuple:
    info = get_model_info(name)
    c, h, w = info.input_size
    model, _ = build(name, light_options(name), device="meta")
    for s in (16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 352, 416, 512):
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, c, s, s, device="meta"))
            return (c, s, s)
        except (RuntimeError, ValueError, IndexError):
            continue
    return info.input_size


def light_options(name: str) -> dict:
    return {k: v for k, v in LIGHT.items() if k in get_model_info(name).options}


@pytest.mark.parametrize("name", list_models())
def test_analytic_field_equals_gradient_box(name):
    size = smallest_input(name)
    options = light_options(name)
    names = [l["name"] for l in rf.receptive_fields(name, size, model_args=options)["layers"]]
    # To stay fast, deep models and large fixed inputs (dense heads at 224 px, SSD's 352 px)
    # check a spread of layers, always including the last ones, rather than every layer.
    most = 4 if size[1] > 128 else 32
    layers = None if len(names) <= most else sorted(
        set(names[:: len(names) // most + 1] + names[-2:]))
    checked = rf.verify(name, size, model_args=options, layers=layers)
    bad = [c for c in checked["checked"] if not c["agree"]]
    assert checked["checked"] and not bad, bad[:3]


def test_grid_view_of_ssd_lists_six_maps():
    result = rf.grid_view("ssd")
    grids = [m["grid"] for m in result["maps"]]
    assert grids == [[11, 11], [9, 9], [7, 7], [5, 5], [3, 3], [1, 1]]
    first = result["maps"][0]
    assert first["stride"] == [32, 32] and len(first["layers"]) == 2  # class and box heads
    assert first["rows"][0][0] == 0 and first["rows"][-1][1] == 351


def test_effective_field_is_inside_the_theoretical_one(tmp_path):
    erf = rf.effective_field("lenet", layer="3", samples=4, data="random")
    sides = [erf["mass_sides"][k] for k in ("50%", "90%", "99%")]
    assert sides == sorted(sides) and sides[-1][0] <= erf["seen"][0] == 14
    # The squares are centred where the unit's field is, so none leaves the field.
    for (r0, r1), (c0, c1) in erf["mass_boxes"].values():
        (fr0, fr1), (fc0, fc1) = erf["seen_box"]
        assert fr0 <= r0 <= r1 <= fr1 and fc0 <= c0 <= c1 <= fc1
    path = tmp_path / "erf.png"
    plots.save_erf_png(erf, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_effective_field_centre_unit_is_the_one_centred_on_the_input():
    # 28 px, field 16 at stride 4 from 7.5: unit 2's field is centred at 13.5, the middle.
    lenet = rf.effective_field("lenet", layer="5", samples=1, data="random")
    assert lenet["unit"] == [2, 2] and lenet["unit_centre"] == [13.5, 13.5] and lenet["centred"]
    assert lenet["mass_sides"]["99%"][0] % 2 == 0  # an even square around a half pixel
    # resnet18 layer 3 at 96 px: units every 16 px from 0; (2, 2) would sit at pixel 32.
    resnet = rf.effective_field("resnet18", (1, 96, 96), layer="3", samples=1, data="random")
    assert resnet["unit"] == [3, 3] and resnet["unit_centre"] == [48, 48]
    assert not resnet["centred"] and resnet["centre"] == [48, 48]


def test_checkpoint_dict_or_bare_state_dict_loads_and_garbage_is_one_error(tmp_path):
    model, _ = build("lenet")
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    for f in ("ckpt.pt", "bare.pt"):
        rf.load_checkpoint(build("lenet")[0], str(tmp_path / f))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CnnbenchError, match="cannot read checkpoint"):
        rf.load_checkpoint(model, str(tmp_path / "bad.pt"))


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["cnnbench", "receptive-field", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_json_contract(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "lenet", "--json")
    data = json.loads(out)
    assert code in (0, None) and data["model"] == "lenet" and data["input_size"] == [1, 28, 28]
    for layer in data["layers"]:
        assert {"name", "type", "receptive_field", "stride", "start"} <= set(layer)
        assert len(layer["receptive_field"]) == len(layer["stride"]) == len(layer["start"]) == 2


def test_bad_layer_name_is_one_line_and_exit_2(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "lenet", "--layer", "conv9")
    assert code == 2 and err.count("\n") == 1 and "no layer 'conv9'" in err


def test_a_1d_input_is_one_line_error_not_an_index_error():
    with pytest.raises(CnnbenchError, match=r"images \(C, H, W\)"):
        rf.module_fields(nn.Sequential(nn.Conv1d(2, 4, 3)), (2, 16))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_scripted_submodule_is_flagged_not_followed_through():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), torch.jit.script(nn.Conv2d(2, 2, 3)),
                        nn.Conv2d(2, 2, 3))
    layers = by_name(rf.module_fields(net, (1, 12, 12)))
    assert field(layers["0"]) == ([3, 3], [1, 1], [1, 1])
    assert any("uninterpreted" in n and "TorchScript" in n for n in layers["1"]["notes"])
    assert any("uninterpreted" in n for n in layers["2"]["notes"])
