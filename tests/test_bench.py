"""`cnnbench bench`: the deformconv rows, a small model's timm columns, several models, the
training step's optimizer and split, out-of-memory retries, threads, errors as one line."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from cnnbench import bench
from cnnbench.bench import models, timing
from cnnbench.cli import app
from cnnbench.errors import CnnbenchError

DEFORM_KEYS = {"impl", "device", "dtype", "batch", "channels", "height", "width", "fwd_ms",
               "fwd_bwd_ms", "peak_mem_mb", "max_abs_err"}
TIMM_COLUMNS = {"infer_samples_per_sec", "infer_step_time", "infer_batch_size", "infer_img_size",
                "train_samples_per_sec", "train_step_time", "param_count", "gmacs"}
QUICK = ["--min-run-time", "0.01", "--threads", "1"]


# Tiny workloads: threads only add synchronisation (and the machine may be shared).
pytestmark = pytest.mark.usefixtures("one_thread")


def _json(args):
    result = CliRunner().invoke(app, ["bench", *args, *QUICK, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_deformconv_json_has_one_row_per_implementation_with_the_issue_keys():
    data = _json(["deformconv", "--shape", "2,4,6,6,3", "--device", "cpu"])
    rows = data["rows"]
    assert [r["impl"] for r in rows] == ["ours", "torchvision", "notes", "conv2d"]
    for row in rows:
        assert DEFORM_KEYS <= set(row)
        assert (row["batch"], row["channels"], row["height"], row["width"]) == (2, 4, 6, 6)
        assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 and row["peak_mem_mb"] >= 0
        assert row["dtype"] == "float32" and row["device"] == "cpu"
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["ours"]["max_abs_err"] < 1e-4
    assert set(by_impl["ours"]["errors"]) == {"output", "input", "offset", "mask", "weight",
                                              "bias"}
    assert by_impl["notes"]["max_abs_err"] < 1e-4  # padding 1: the notes' clamp changes nothing
    assert by_impl["torchvision"]["max_abs_err"] == 0
    assert by_impl["conv2d"]["max_abs_err"] is None
    assert any("fastest is" in line for line in data["summary"])


def test_deformconv_sweep_batch_gives_rows_per_shape():
    result = bench.bench_deformconv((1, 2, 4, 4, 3), device="cpu", min_run_time=0.01,
                                    sweep="batch", impls=("ours",))
    assert [r["batch"] for r in result["rows"]] == [1, 2, 4, 8, 16]


def test_deformconv_table_names_the_fastest():
    result = CliRunner().invoke(app, ["bench", "deformconv", "--shape", "1,2,5,5", *QUICK])
    assert result.exit_code == 0, result.output
    assert "fastest is" in result.stdout and "torchvision" in result.stdout


def test_bench_lenet_json_has_timm_columns(tmp_path):
    path = tmp_path / "lenet.csv"
    data = _json(["lenet", "--batch-sizes", "1,2", "--csv", str(path)])
    rows = data["rows"]
    assert [r["infer_batch_size"] for r in rows] == [1, 2]
    for row in rows:
        assert TIMM_COLUMNS <= set(row)
        assert row["infer_img_size"] == 28 and row["param_count"] > 0 and row["gmacs"] > 0
        assert row["infer_step_time_iqr"] >= 0 and row["train_step_time"] > 0
    with open(path) as f:
        header = next(csv.reader(f))
    assert TIMM_COLUMNS <= set(header)


def test_few_cores_mean_one_thread_unless_told(monkeypatch):
    monkeypatch.setattr(timing, "available_cores", lambda: 2)
    assert bench.choose_threads() == (1, "default with 2 cores; --threads N to change")
    assert bench.choose_threads(3) == (3, "--threads")
    monkeypatch.setattr(timing, "available_cores", lambda: 16)
    assert bench.choose_threads() == (torch.get_num_threads(), "PyTorch's default")
    with pytest.raises(CnnbenchError, match="--threads must be >= 1"):
        bench.choose_threads(0)


def test_bench_runs_on_the_chosen_threads_and_says_so(monkeypatch):
    monkeypatch.setattr(timing, "available_cores", lambda: 4)
    torch.set_num_threads(2)  # the one_thread fixture restores it
    seen = []
    monkeypatch.setattr(models, "time_call", lambda fn, *a, **k: seen.append(
        torch.get_num_threads()) or {"median_ms": 1.0, "iqr_ms": 0.0, "runs": 1})
    result = CliRunner().invoke(app, ["bench", "lenet", "-b", "1", "--no-train"])
    assert result.exit_code == 0, result.output
    assert seen == [1]
    assert "1 CPU thread (default with 4 cores; --threads N to change)" in result.stdout
    assert torch.get_num_threads() == 2  # put back afterwards


def test_wildcards_expand_to_registered_and_torchvision_names():
    names = bench.expand_models(["lenet", "lenet*", "torchvision:resnet1*"])
    assert names == ["lenet", "lenet-bn", "torchvision:resnet101", "torchvision:resnet152",
                     "torchvision:resnet18"]
    with pytest.raises(CnnbenchError, match="no model matches 'vgg9\\*'"):
        bench.expand_models(["vgg9*"])
    with pytest.raises(CnnbenchError, match="unknown model"):
        bench.expand_models(["lenet", "lenett"])


def test_several_models_give_a_list_and_one_table(tmp_path):
    path = tmp_path / "rows.csv"
    data = _json(["lenet", "lenet-b*", "-b", "1", "--no-train", "--csv", str(path)])
    assert [d["model"] for d in data] == ["lenet", "lenet-bn"]
    with open(path) as f:
        assert [row["model"] for row in csv.DictReader(f)] == ["lenet", "lenet-bn"]
    result = CliRunner().invoke(app, ["bench", "lenet", "lenet-bn", "-b", "1", "--no-train",
                                      *QUICK])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("2 models on") and "lenet-bn: params" in result.stdout
    # A wildcard is a list even when it matches one model; deformconv runs alone.
    assert isinstance(_json(["lenet-b?", "-b", "1", "--no-train"]), list)
    result = CliRunner().invoke(app, ["bench", "lenet", "deformconv"])
    assert isinstance(result.exception, CnnbenchError) and "alone" in str(result.exception)


def test_training_step_uses_the_recipe_optimizer_or_the_option():
    adamw = bench.training_optimizer("lenet")  # experiments/lenet.yaml: adamw, lr 0.01, wd 0.01
    assert adamw == {"name": "adamw", "lr": 0.01, "betas": [0.9, 0.999], "weight_decay": 0.01,
                     "source": "experiments/lenet.yaml"}
    sgd = bench.training_optimizer("lenet", "sgd")
    assert sgd["name"] == "sgd" and sgd["source"] == "--optimizer" and sgd["lr"] == 0.01
    assert bench.training_optimizer("torchvision:resnet18")["source"] == "the trainer's default"
    made = bench.make_optimizer(torch.nn.Linear(2, 2), adamw)
    assert isinstance(made, torch.optim.AdamW)
    assert made.defaults["weight_decay"] == 0.01 and made.defaults["betas"] == (0.9, 0.999)
    with pytest.raises(CnnbenchError, match="bad --optimizer 'adan': use sgd, adamw, adam"):
        bench.training_optimizer("lenet", "adan")


def test_detail_splits_the_training_step_into_forward_backward_and_optimizer():
    result = bench.bench_model("lenet", batch_sizes=[2], device="cpu", min_run_time=0.01,
                               detail=True, optimizer="sgd")
    row = result["rows"][0]
    for key in ("train_fwd_time", "train_bwd_time", "train_opt_time"):
        assert row[key] > 0 and row[key + "_iqr"] >= 0
    assert result["optimizer"]["name"] == "sgd"
    # The split is taken within the same steps: together they are about one step.
    assert 0.2 < sum(row[k] for k in ("train_fwd_time", "train_bwd_time",
                                      "train_opt_time")) / row["train_step_time"] < 5
    phases = bench.time_phases({"a": lambda: None, "b": lambda: sum(range(20000))}, 0.01,
                               torch.device("cpu"))
    assert phases["b"]["median_ms"] > phases["a"]["median_ms"]


def _out_of_memory_above(limit, monkeypatch):
    """Inputs above ``limit`` samples fail to allocate, as on a full GPU."""
    make = models._example_input

    def example_input(batch, size, setup):
        if batch > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch} MiB")
        return make(batch, size, setup)

    monkeypatch.setattr(models, "_example_input", example_input)


def test_out_of_memory_is_retried_at_half_the_batch(monkeypatch):
    _out_of_memory_above(3, monkeypatch)
    result = bench.bench_model("lenet", batch_sizes=[1, 12], device="cpu", min_run_time=0.01)
    small, big = result["rows"]
    assert "infer_oom_batch_sizes" not in small and small["train_batch_size"] == 1
    assert (big["infer_batch_size"], big["train_batch_size"]) == (3, 3)
    assert big["infer_oom_batch_sizes"] == big["train_oom_batch_sizes"] == [12, 6]
    assert any("out of memory at batch 12, 6; measured at batch 3" in n for n in result["notes"])


def test_out_of_memory_at_batch_one_is_one_line_naming_what_to_reduce(monkeypatch):
    _out_of_memory_above(0, monkeypatch)
    with pytest.raises(CnnbenchError) as info:
        bench.bench_model("lenet", batch_sizes=[2], device="cpu", min_run_time=0.01)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("out of memory on cpu in inference of lenet at batch 1, input "
                              "1x28x28: try a smaller --input-size")


def test_json_file_beside_the_table_or_the_json(tmp_path):
    path = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "lenet", "-b", "1", "--no-train",
                                      "--json-file", str(path), *QUICK])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("lenet on")  # the table on stdout
    saved = json.loads(path.read_text())
    assert saved["model"] == "lenet" and saved["rows"][0]["infer_batch_size"] == 1
    printed = _json(["lenet", "-b", "1", "--no-train", "--json-file", str(path)])
    assert printed.keys() == json.loads(path.read_text()).keys()


@pytest.mark.parametrize("option", ["--csv", "--plot", "--json-file"])
def test_unwritable_output_fails_before_the_benchmark(option, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "bench_models", lambda *a, **k: pytest.fail("benchmark ran"))
    missing = tmp_path / "no" / "such" / "out.file"
    result = CliRunner().invoke(app, ["bench", "lenet", option, str(missing)])
    assert isinstance(result.exception, CnnbenchError)
    assert str(result.exception) == f"cannot write {option} {missing}: no folder {missing.parent}"
    result = CliRunner().invoke(app, ["bench", "lenet", option, str(tmp_path)])
    assert str(result.exception) == f"cannot write {option} {tmp_path}: it is a folder"


def test_bench_sweep_size_grows_the_image_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "sweep.png"
    result = bench.bench_model("resnet18", batch_sizes=[1], input_size=(1, 32, 32), device="cpu",
                               min_run_time=0.01, train=False, sweep="size")
    sizes = [r["infer_img_size"] for r in result["rows"]]
    assert sizes == sorted(sizes) and len(sizes) >= 3
    bench.plot_sweep(result, str(plot))
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_batch_sweep_plot_has_a_log2_axis(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = bench.bench_model("lenet", batch_sizes=[4], device="cpu", min_run_time=0.01,
                               train=False, sweep="batch")
    assert [r["infer_batch_size"] for r in result["rows"]] == [1, 2, 4]
    saved = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    bench.plot_sweep([result, result], str(tmp_path / "sweep.png"))
    ax_time = saved[0].axes[0]
    assert ax_time.get_xscale() == "log"
    assert [t.get_text() for t in ax_time.get_xticklabels()] == ["1", "2", "4"]
    assert [t.get_text() for t in ax_time.get_legend().get_texts()] == ["lenet infer"] * 2


def test_generic_loss_trains_any_float_output():
    out = {"boxes": torch.ones(2, 4, requires_grad=True), "labels": torch.ones(2).long()}
    loss = bench.generic_loss(out)
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and out["boxes"].grad is not None


def test_bad_inputs_are_cnnbench_errors():
    with pytest.raises(CnnbenchError, match="shape"):
        bench.parse_shape("8,64,56")
    with pytest.raises(CnnbenchError, match="batch"):
        bench.parse_int_list("1,x", "--batch-sizes")
    with pytest.raises(CnnbenchError, match="precision"):
        bench.bench_model("lenet", precision="fp8")
    with pytest.raises(CnnbenchError, match="sweep"):
        bench.bench_model("lenet", sweep="depth", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_asked_but_absent_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "cnnbench", "bench", "lenet", "--device", "cuda"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cuda" in proc.stderr.lower()
    assert "Traceback" not in proc.stderr


@pytest.mark.usefixtures("keep_threads")
def test_the_plot_names_the_threads_the_timings_used(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(3)  # bench's own choice (1 here) must be what the title says
    result = bench.bench_model("lenet", batch_sizes=[2], device="cpu", min_run_time=0.01,
                               train=False, sweep="batch", threads=1)
    assert result["threads"] == 1 and result["device_name"].endswith("(1 thread)")
    saved = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    bench.plot_sweep(result, str(tmp_path / "sweep.png"))
    title = saved[0].get_suptitle()
    assert title.startswith("lenet: step time and throughput against the batch size, on ")
    assert "(1 thread)" in title and "3 threads" not in title
