"""`cnnbench export`: the file computes what the eager model computes, at any batch size, and
says what it takes and returns; bad requests are one line."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from cnnbench.checkpoints import load_checkpoint
from cnnbench.files import save_torch
from cnnbench.data import fashion_mnist as fm
from cnnbench.errors import CnnbenchError
from cnnbench.export import check_images, eager_outputs, export, open_exported, _load_run
from cnnbench.tasks.classification import FMNIST_MEAN, FMNIST_STD
from cnnbench.train import train
from cli_run import cli


@pytest.fixture
def lenet_run(lenet_256):
    return lenet_256


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_onnx_export_computes_the_eager_models_logits_at_any_batch_size(lenet_run, tmp_path):
    result = export(lenet_run, "onnx", out=tmp_path / "lenet.onnx")
    assert result["max_abs_diff"] <= 1e-5 and result["checked_images"] == 64
    loaded = _load_run(lenet_run)
    images = check_images(loaded, 7)
    want = eager_outputs(loaded, images)[0]
    # Read with onnxruntime alone: nothing of cnnbench is needed to use the file.
    session = ort.InferenceSession(str(tmp_path / "lenet.onnx"),
                                   providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    assert given.name == "images" and given.type == "tensor(uint8)"
    assert given.shape[1:] == [1, 28, 28] and not isinstance(given.shape[0], int)
    for n in (7, 1, 3):
        (logits,) = session.run(None, {"images": images[:n].numpy()})
        assert logits.shape == (n, 10)
        assert np.abs(logits - want[:n].numpy()).max() <= 1e-5
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == list(fm.CLASS_NAMES)
    info = json.loads(meta["cnnbench"])
    assert info["input"]["dtype"] == "uint8" and info["checkpoint"] == "best"
    assert info["normalisation"] == {"mean": [pytest.approx(FMNIST_MEAN)],
                                     "std": [pytest.approx(FMNIST_STD)], "scale": "pixel / 255"}


def test_torchscript_export_takes_floats_when_told_and_keeps_its_metadata(lenet_run):
    result = export(lenet_run, "torchscript", checkpoint="last", input_dtype="float32")
    path = lenet_run / "export" / "last.torchscript.pt"
    assert result["file"] == str(path) and result["max_abs_diff"] <= 1e-5
    extra = {"cnnbench.json": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra["cnnbench.json"])
    assert meta["input"]["dtype"] == "float32" and meta["class_names"] == list(fm.CLASS_NAMES)
    loaded = _load_run(lenet_run, "last")
    images = check_images(loaded, 5)
    got = module(images.float() / 255)
    assert (got - eager_outputs(loaded, images)[0]).abs().max() <= 1e-5
    assert open_exported(path).meta == meta


SMALL = {"scene_size": 32, "input_size": "1x32x32"}
DENSE = {  # model: (model_args, extra config, output shapes for a batch of 3)
    "unet": ({"width": 4}, SMALL, [(3, 11, 32, 32)]),
    "single-object": ({"width": 4}, SMALL, [(3, 4), (3, 10)]),
    "ssd-resnet": ({"width": 4, "head_channels": 16}, {}, None),
}


@pytest.fixture(scope="module", params=list(DENSE))
def dense_run(request, tmp_path_factory, fmnist_dir):
    """A one-epoch run of each dense model on a few small scenes (a low lr: sane outputs)."""
    model = request.param
    model_args, extra, shapes = DENSE[model]
    root = tmp_path_factory.mktemp(model)
    (root / "none.yaml").write_text("")
    overrides = {"limit": 8, "val_size": 4, "epochs": 1, "batch_size": 4, "log_graph": False,
                 "log_images": False, "data": str(fmnist_dir), "model_args": model_args,
                 "scenes": 16, "test_scenes": 8, "lr": 1e-3, **extra}
    with pytest.MonkeyPatch.context() as patch:  # the scene_cache fixture, for a module
        patch.setenv("CNNBENCH_SCENES_CACHE", str(tmp_path_factory.getbasetemp() / "scenes"))
        train(model, config_file=root / "none.yaml", overrides=overrides, run_dir=root / "run")
    return root / "run", shapes


@pytest.mark.usefixtures("scene_cache")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_dense_exports_equal_the_eager_model_with_their_decoding(dense_run, fmt, tmp_path):
    run, shapes = dense_run
    result = export(run, fmt, out=tmp_path / f"model{'.onnx' if fmt == 'onnx' else '.pt'}")
    assert result["checked_images"] == 8 and result["max_abs_output"] < 100
    assert result["max_abs_diff"] <= 1e-5
    loaded = _load_run(run)
    got = open_exported(result["file"])(check_images(loaded, 3))
    if shapes is None:  # detection: the decoded boxes of every anchor, and their scores
        boxes, scores = got
        assert boxes.shape[0] == 3 and boxes.shape[2] == 4 and scores.shape[:2] == boxes.shape[:2]
        assert scores.shape[2] == 10 and 0 <= boxes.min() and boxes.max() <= 1
        assert "no NMS" in result["outputs"]["text"]
    else:
        assert [o.shape for o in got] == shapes


def test_deformable_convolution_is_refused_in_one_line(lenet_run, tmp_path):
    """A run of resnet18-dcn (its checkpoint made here, not trained) is refused before any
    file is written."""
    from cnnbench.building import build

    run = tmp_path / "dcn"
    shutil.copytree(lenet_run, run, ignore=shutil.ignore_patterns("export"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.update(model="resnet18-dcn", input_size=[1, 32, 32])
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    model, _ = build("resnet18-dcn", {"num_classes": 10}, in_channels=1)
    save_torch({**state, "model": model.state_dict()}, run / "checkpoints" / "best.pt")
    with pytest.raises(CnnbenchError, match="deformable convolutions, which cannot be exported"):
        export(run, "onnx")
    assert not (run / "export").exists()


BAD = {  # id: (argv, a fragment of the one line)
    "unknown format": (["export", "{run}", "--format", "tflite"], "onnx or torchscript"),
    "missing run": (["export", "{root}/nothing"], "no run folder"),
    "bad checkpoint": (["export", "{run}", "--checkpoint", "middle"], "best or last"),
    "wrong suffix": (["export", "{run}", "--out", "{root}/m.pt"], "ends in .onnx"),
    "bad input dtype": (["export", "{run}", "--input-dtype", "int8"], "uint8 or float32"),
    "out is a folder": (["export", "{run}", "-f", "torchscript", "--out", "{root}/d.pt"],
                        "is a folder"),
    "bench not exported": (["bench", "{run}/checkpoints/best.pt"], "not a TorchScript file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_export_request_is_one_line_exit_2_and_writes_nothing(case, lenet_run, tmp_path,
                                                                  capsys):
    (tmp_path / "d.pt").mkdir()
    argv, fragment = BAD[case]
    argv = [a.format(root=tmp_path, run=lenet_run) for a in argv]
    before, in_run = listing(tmp_path), listing(lenet_run)
    capsys.readouterr()
    code = cli(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert listing(tmp_path) == before and listing(lenet_run) == in_run


def test_bench_times_the_file_beside_eager_pytorch(lenet_run, tmp_path, capsys):
    export(lenet_run, "onnx", out=tmp_path / "lenet.onnx")
    assert cli(["bench", tmp_path / "lenet.onnx", "-b", "1,3", "--min-run-time", "0.01",
                "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["runtime"], r["infer_batch_size"]) for r in result["rows"]] == [
        ("onnxruntime (CPU provider)", 1), ("eager", 1),
        ("onnxruntime (CPU provider)", 3), ("eager", 3)]
    assert result["threads"] == 1 and "(1 thread" in result["device_name"]  # every runtime
    for r in result["rows"]:
        assert r["infer_input_size"] == [1, 28, 28] and r["infer_step_time"] > 0
        expected = 1.0 if r["runtime"] == "eager" else None
        assert r["speed_vs_eager"] == expected or (expected is None and r["speed_vs_eager"] > 0)


def test_bench_of_a_file_whose_run_is_gone_times_the_file_alone(lenet_run, tmp_path):
    from cnnbench.bench import bench_exported

    run = tmp_path / "run"
    shutil.copytree(lenet_run, run, ignore=shutil.ignore_patterns("export"))
    export(run, "torchscript", out=tmp_path / "lenet.pt")
    shutil.rmtree(run)
    result = bench_exported(tmp_path / "lenet.pt", batch_sizes=[2], min_run_time=0.01)
    assert [r["runtime"] for r in result["rows"]] == ["torch.jit (TorchScript)"]
    assert any("is not here" in note for note in result["notes"])
