"""`cnnbench summary` and `cnnbench models`: totals, FLOPs, the JSON contract, bad input."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cnnbench.cli import app
from cnnbench.models import get_model, get_model_info, list_models
from cnnbench.errors import CnnbenchError
from cnnbench.summary import parse_columns, summarize, summarize_module

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


TORCHVISION = ["torchvision:densenet121", "torchvision:googlenet"]
# The full sweep takes ~12 s; by default a subset covers each way a row can go wrong:
# containers iterated by their owner (densenet), heads never called (googlenet's auxiliary
# classifiers), one head called on every map (retinanet), deep nesting (unet).
EVERY_DEPTH_DEFAULT = {"densenet", "googlenet", "retinanet", "unet", *TORCHVISION}


def meta_model(name: str) -> nn.Module:
    options = {"weights": None} if name.startswith("torchvision:") else {}
    with torch.device("meta"):
        return get_model(name, **options)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in EVERY_DEPTH_DEFAULT else pytest.mark.slow)
    for n in list_models() + TORCHVISION])
def test_rows_add_up_to_totals_at_every_depth(name):
    model = meta_model(name)
    size = get_model_info(name).input_size
    deepest = max(n.count(".") + 1 for n, _ in model.named_modules())
    for depth in range(1, deepest + 1):
        s = summarize_module(model, size, depth=depth)
        assert sum(layer["params"] for layer in s["layers"]) == s["total_params"], depth
        assert sum(layer["flops"] for layer in s["layers"]) == s["flops"] > 0, depth
        assert {layer["depth"] for layer in s["layers"]} == set(range(1, depth + 1))


def test_densenet_block_keeps_only_what_its_children_do_not_show():
    # The block iterates over its child `net` without calling it: `net` gets a row (no output
    # shape), and the block no longer repeats the counts of the layers shown below it.
    layers = {layer["name"]: layer for layer in summarize("densenet")["layers"]}
    assert layers["1"]["params"] == 0 and layers["1"]["flops"] == 0
    assert layers["1.net"]["output_shape"] is None and layers["1.net"]["depth"] == 2
    assert layers["1.net.0"]["params"] == 18_592
    assert sum(layer["params"] for layer in layers.values()) == 758_226


def test_modules_never_called_are_listed_with_their_parameters():
    s = summarize("torchvision:googlenet", depth=4)
    layers = {layer["name"]: layer for layer in s["layers"]}
    assert s["total_params"] == sum(layer["params"] for layer in s["layers"]) == 13_004_888
    aux1 = layers["aux1"]
    assert aux1["output_shape"] is None and aux1["flops"] == 0
    # The rows held only the 6,624,904 parameters of the modules that ran; the rest is here.
    aux = sum(v["params"] for k, v in layers.items() if k.startswith("aux"))
    assert aux == 13_004_888 - 6_624_904 == 3_188_968 + 3_191_016
    # Listed where they are defined: after inception5b, before avgpool.
    names = [layer["name"] for layer in s["layers"] if layer["depth"] == 1]
    assert names.index("inception5b") < names.index("aux1") < names.index("aux2") \
        < names.index("avgpool")
    assert any(n.endswith(": aux1, aux2") for n in s["notes"])
    result = runner.invoke(app, ["summary", "torchvision:googlenet", "--depth", "1"])
    assert result.exit_code == 0
    assert any("aux1 (InceptionAux)" in line and "--" in line and "3,188,968" in line
               for line in result.output.splitlines())


class TiedHead(nn.Module):
    """Two layers sharing one weight, a list its owner iterates over, a head never called."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.encoder = nn.Linear(4, 4, bias=False)
        self.decoder = nn.Linear(4, 4, bias=False)
        self.decoder.weight = self.encoder.weight
        self.unused = nn.Linear(4, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.decoder(self.encoder(x))


def test_uncalled_heads_iterated_lists_and_shared_weights_add_up():
    s = summarize_module(TiedHead(), (4,), depth=2)
    rows = {layer["name"]: layer for layer in s["layers"]}
    assert list(rows) == ["blocks", "blocks.0", "blocks.1", "encoder", "decoder", "unused"]
    assert rows["unused"] == {"name": "unused", "type": "Linear", "depth": 1,
                              "output_shape": None, "params": 10, "trainable": True, "flops": 0}
    assert rows["blocks"]["output_shape"] is None and rows["blocks.0"]["output_shape"] == [1, 4]
    assert rows["encoder"]["params"] == 16 and rows["decoder"]["params"] == 0  # shared: once
    assert sum(r["params"] for r in rows.values()) == s["total_params"] == 40 + 16 + 10
    assert [r["flops"] for r in rows.values()] == [0, 32, 32, 32, 32, 0] and s["flops"] == 128
    assert s["notes"] == ["not run by this forward pass (output shape --): unused"]


def test_operators_left_out_of_flops_are_named():
    s = summarize("lenet")
    assert s["uncounted_ops"] == ["avg_pool2d", "sigmoid"] and s["device"] == "cpu"
    assert summarize_module(nn.Sequential(nn.Conv2d(1, 1, 3)), (1, 5, 5))["uncounted_ops"] == []
    result = runner.invoke(app, ["summary", "lenet"])
    assert "Not in FLOPs          avg_pool2d, sigmoid" in result.output


@pytest.mark.parametrize("why", ["slow", "too big"])
def test_meta_device_takes_over_where_the_cpu_is_slow_or_memory_short(monkeypatch, why):
    from cnnbench import summary

    if why == "slow":
        monkeypatch.setattr(summary, "CPU_SECONDS", 0.0)
    else:
        monkeypatch.setattr(summary, "_available_bytes", lambda: 1024)
    on_meta = summarize("googlenet", depth=1)
    assert on_meta["device"] == "meta"
    monkeypatch.undo()
    reference = summarize("googlenet", depth=1, device="cpu")  # auto may pick meta under load
    assert reference["device"] == "cpu"
    assert {k: v for k, v in on_meta.items() if k != "device"} == \
        {k: v for k, v in reference.items() if k != "device"}


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
    assert list(fpn["outputs"]) == [[1, 256, s, s] for s in (16, 8, 4, 2)]  # a tuple, as returned
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
    (["summary", "lenet", "--columns", "kernal"], "did you mean kernel"),
    (["summary", "lenet", "--mode", "test"], "unknown --mode 'test'"),
    (["summary", "lenet", "--dtype", "int8"], "unknown --dtype 'int8'"),
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


# --- options at parity with torchinfo (issue 11) ---

def test_columns_take_torchinfo_names_and_keep_display_order():
    assert parse_columns(None) == ("output_shape", "params", "trainable", "flops")
    assert parse_columns("mult_adds,input_size,num_params,kernel_size") == \
        ("input_shape", "kernel", "params", "flops")
    assert parse_columns("all")[-1] == "rf"
    with pytest.raises(CnnbenchError, match="did you mean params_percent"):
        parse_columns("params_percnt")


def test_extra_columns_give_input_shape_kernel_percent_and_receptive_field():
    s = summarize("lenet", columns=("input_shape", "kernel", "params_percent", "rf"))
    rows = {layer["name"]: layer for layer in s["layers"]}
    assert rows["3"]["input_shape"] == [1, 6, 14, 14] and rows["3"]["kernel_size"] == [5, 5]
    assert rows["2"]["kernel_size"] == [2, 2] and rows["7"]["kernel_size"] is None
    assert rows["7"]["params_percent"] == pytest.approx(100 * 48_120 / 61_706)
    assert sum(r["params_percent"] for r in rows.values()) == pytest.approx(100)
    # conv 5 -> pool 2 (field 6, stride 2) -> conv 5 (6 + 4 * 2 = 14) -> pool 2 (16, stride 4)
    assert [rows[n]["receptive_field"] for n in "0235"] == [[5, 5], [6, 6], [14, 14], [16, 16]]
    assert rows["5"]["stride"] == [4, 4]
    assert rows["7"]["receptive_field"] is None  # after the flatten: no spatial map
    assert "kernel_size" not in summarize("lenet")["layers"][0]  # only when asked


def test_verbose_lists_each_weight_and_partly_frozen_layers():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    model[0].weight.requires_grad_(False)
    s = summarize_module(model, (1, 8, 8), verbose=True)
    conv, bn = s["layers"]
    assert conv["trainable"] == "partly" and bn["trainable"] is True
    assert conv["weights"] == [
        {"name": "weight", "shape": [4, 1, 3, 3], "params": 36, "trainable": False},
        {"name": "bias", "shape": [4], "params": 4, "trainable": True}]
    assert s["trainable_params"] == 4 + 8 and s["non_trainable_params"] == 36
    whole = summarize_module(model, (1, 8, 8), depth=0)
    assert whole["layers"] == []
    seq = summarize_module(nn.Sequential(model), (1, 8, 8), depth=1)
    assert seq["layers"][0]["trainable"] == "partly"


class TwoInputs(nn.Module):
    """A forward with two tensors and a head that runs only in training."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, stride=2)
        self.b = nn.Conv2d(3, 2, 1)
        self.aux = nn.Linear(2, 5)

    def forward(self, big, small):
        y = self.a(big)[..., :32, :32] + self.b(small)  # [N, 2, 32, 32]
        if self.training:
            return y, self.aux(y.mean((2, 3)))
        return y


def test_several_inputs_and_train_mode():
    model = TwoInputs().eval()
    s = summarize_module(model, [(1, 96, 96), (3, 32, 32)], columns="input_shape")
    rows = {layer["name"]: layer for layer in s["layers"]}
    assert s["input_size"] == [[1, 1, 96, 96], [1, 3, 32, 32]]
    assert rows["a"]["output_shape"] == [1, 2, 47, 47]
    assert rows["b"]["input_shape"] == [1, 3, 32, 32]
    assert rows["aux"]["output_shape"] is None and s["outputs"] == [1, 2, 32, 32]
    trained = summarize_module(model, [(1, 96, 96), (3, 32, 32)], mode="train")
    assert {r["name"]: r for r in trained["layers"]}["aux"]["output_shape"] == [1, 5]
    assert list(trained["outputs"]) == [[1, 2, 32, 32], [1, 5]]
    assert not model.training  # the mode is put back


def test_dtype_and_device():
    bf16 = summarize("lenet", dtype="bfloat16")
    fp32 = summarize("lenet")
    assert bf16["param_bytes"] * 2 == fp32["param_bytes"] and bf16["input_bytes"] == 28 * 28 * 2
    assert bf16["layers"] == fp32["layers"] and bf16["flops"] == fp32["flops"]
    meta = summarize("lenet", device="meta")
    assert meta["device"] == "meta" and meta["layers"] == fp32["layers"]
    if not torch.cuda.is_available():
        with pytest.raises(CnnbenchError, match="--device cuda"):
            summarize("lenet", device="cuda")


def test_cli_shows_new_columns_and_weight_rows():
    result = runner.invoke(app, ["summary", "lenet", "--verbose",
                                 "--columns", "kernel_size,num_params,params_percent,rf",
                                 "--dtype", "float64", "--mode", "train"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("RF / stride" in line and "params %" in line for line in lines)
    assert any("5x5" in line and "0.25 %" in line and "5 / 1" in line for line in lines)
    assert any("· weight [6, 1, 5, 5]" in line and "150" in line for line in lines)
    assert "Parameter memory      482.08 KiB" in result.output  # float64: twice float32's
    data = json.loads(runner.invoke(app, ["summary", "lenet", "--json", "--columns", "rf"]).output)
    assert data["layers"][2]["receptive_field"] == [6, 6]


def test_flops_equal_flop_counter_modes_count_without_importing_dynamo():
    from torch.utils.flop_counter import FlopCounterMode

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(2, 3, 8, 8))
    assert summarize_module(model, (3, 8, 8), batch_size=2)["flops"] == \
        counter.get_total_flops() > 0
    code = ("import sys; from cnnbench.summary import summarize; summarize('lenet'); "
            "print('torch._dynamo' in sys.modules)")  # a 1.3 s import a summary does not need
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- what torchinfo's own tests cover: TorchScript children, pruning, 1-D and 3-D models ---

class _ScriptedBody(nn.Module):
    """A plain stem and head around a scripted Sequential, as a TorchScript export might hold."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.jit.script(nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU(),
                                                   nn.Conv2d(8, 4, 1)))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_scripted_child_gets_a_row_with_its_shape_params_and_flops():
    model = _ScriptedBody()
    s = summarize_module(model, (3, 8, 8), depth=2, columns="all")
    rows = {layer["name"]: layer for layer in s["layers"]}
    assert rows["body"]["type"] == "Sequential"
    assert rows["body"]["output_shape"] == [1, 4, 6, 6]
    assert rows["body"]["input_shape"] == [1, 8, 8, 8]
    # Its children show their parameters (as torchinfo's rows do) but were not seen running.
    assert [rows[f"body.{i}"]["params"] for i in range(3)] == [8 * 8 * 9 + 8, 0, 8 * 4 + 4]
    assert rows["body.0"]["output_shape"] is None and rows["body.0"]["type"] == "Conv2d"
    # Its FLOPs (counted by the dispatch mode, which TorchScript goes through) are on its row.
    assert rows["body"]["flops"] == 2 * (8 * 8 * 9 * 36 + 8 * 4 * 36)
    assert s["total_params"] == sum(p.numel() for p in model.parameters())
    assert sum(layer["params"] for layer in s["layers"]) == s["total_params"]
    assert any("TorchScript" in n and "body" in n for n in s["notes"])
    assert not any(n.startswith("not run") for n in s["notes"])
    # Collapsed to depth 1 the row carries the children's parameters.
    assert summarize_module(model, (3, 8, 8), depth=1)["layers"][1]["params"] == 620


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_scripted_model_is_summarised_by_its_parameters():
    model = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    s = summarize_module(model, (3, 6, 6))
    assert s["model"] == "Sequential" and s["outputs"] == [1, 4, 4, 4]
    assert s["total_params"] == 112 and s["flops"] == 2 * 108 * 16


def _pruned_net():
    from torch.nn.utils import prune

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    prune.l1_unstructured(net[0], "weight", amount=0.5)
    prune.random_unstructured(net[3], "weight", amount=0.25)
    return net


def test_pruned_weights_count_their_unmasked_entries_with_a_note():
    s = summarize_module(_pruned_net(), (3, 8, 8), verbose=True)
    conv, linear = s["layers"][0], s["layers"][3]
    assert conv["params"] == 108 + 8 and linear["params"] == 2160 + 10
    assert {w["name"]: w["params"] for w in conv["weights"]} == {"bias": 8, "weight_orig": 108}
    assert s["total_params"] == s["trainable_params"] == 116 + 2170
    assert any("pruned" in n and "0.weight, 3.weight" in n and "2,268 unmasked of 3,096" in n
               for n in s["notes"])


def test_pruned_parameter_counts_equal_torchinfos():
    torchinfo = pytest.importorskip("torchinfo")
    net = _pruned_net()
    theirs = torchinfo.summary(net, (1, 3, 8, 8), verbose=0)
    ours = summarize_module(net, (3, 8, 8))
    assert ours["total_params"] == theirs.total_params
    assert [layer["params"] for layer in ours["layers"]] == \
        [row.num_params for row in theirs.summary_list[1:]]


@pytest.mark.parametrize("model,size", [
    (nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 3, stride=2)), (2, 16)),
    (nn.Sequential(nn.Conv3d(2, 4, 3), nn.ReLU(), nn.Conv3d(4, 4, 3, stride=2)), (2, 8, 8, 8)),
], ids=["conv1d", "conv3d"])
def test_rf_column_on_1d_and_3d_models_is_dashes(model, size):
    from cnnbench.render import _summary_cells

    s = summarize_module(model, size, columns="all")
    assert s["layers"][-1]["output_shape"] == [1, 4, *[(n - 2 - 3) // 2 + 1 for n in size[1:]]]
    assert all(layer["receptive_field"] is None for layer in s["layers"])
    assert {_summary_cells(layer)["rf"] for layer in s["layers"]} == {"--"}


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_attention_flops_count_every_matmul_on_cpu_and_meta(device):
    # On the CPU an eval-mode MultiheadAttention would take a fused fast path, and attention a
    # fused kernel, that torch's FLOP formulas miss.
    torch.manual_seed(0)
    with torch.device(device):
        layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32,
                                           batch_first=True)
    s = summarize_module(layer, (5, 16))
    projections, feed_forward, attention = 4 * 16 * 16 * 5, 2 * 16 * 32 * 5, 2 * 5 * 5 * 16
    assert s["flops"] == 2 * (projections + feed_forward + attention)
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def _torchinfo_compare():
    pytest.importorskip("torchinfo")
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import torchinfo_compare

    return torchinfo_compare


@pytest.mark.parametrize("name", ["lenet-bn", "nin"])
def test_torchinfo_comparison_has_no_unexplained_difference(name):
    r = _torchinfo_compare().compare(name, rounds=0)
    assert r["params"] == r["params_ti"] and r["bad"] == 0
    assert r["unexplained"] == []
    assert r["flops"] != r["flops_ti"]  # so the explanations below are what makes them agree
    assert any(why.startswith("bias adds") for why in r["explained"])


def test_torchinfo_comparison_flags_a_flop_count_off_by_one_layer():
    compare = _torchinfo_compare()
    conv = nn.Conv2d(2, 3, 3)
    call = type("Row", (), {"output_size": [1, 3, 4, 4], "input_size": [1, 2, 6, 6]})
    right = 2 * 54 * 16
    assert compare.explain(conv, [call], right, right + 2 * 3 * 16).startswith("bias adds")
    assert compare.explain(conv, [call], right + 2, right + 2 * 3 * 16) is None


def test_a_builder_that_reads_tensor_values_is_summarised():
    # torchvision's regnets size their stages with tensor arithmetic: no build on meta.
    s = summarize("torchvision:regnet_x_400mf", depth=1)
    assert s["total_params"] == 5_495_976
