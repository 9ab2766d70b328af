"""`cnnbench bench`: the deformconv rows, a small model's timm columns, errors as one line."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from cnnbench import bench
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


def test_bench_sweep_size_grows_the_image_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "sweep.png"
    result = bench.bench_model("resnet18", batch_sizes=[1], input_size=(1, 32, 32), device="cpu",
                               min_run_time=0.01, train=False, sweep="size")
    sizes = [r["infer_img_size"] for r in result["rows"]]
    assert sizes == sorted(sizes) and len(sizes) >= 3
    bench.plot_sweep(result, str(plot))
    assert plot.read_bytes()[:4] == b"\x89PNG"


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
