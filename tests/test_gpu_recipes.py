"""Device profiles, --dry-run, init:, compile modes and the fallback, static batches (issue 12)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cnnbench import recipe as cfg
from cnnbench.cli import app
from cnnbench.errors import CnnbenchError
from cnnbench.training import compiling, profiles, weight_init
from cnnbench.training.build import build_trainer
from cnnbench.training.loop import Callback, batch_starts

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
D2L_BOOK = {  # d2l chapter 7 (Fashion-MNIST, train_ch6): lr, batch, resize
    "lenet": (0.9, 256, 28), "lenet-bn": (1.0, 256, 28), "alexnet": (0.01, 128, 224),
    "vgg11": (0.05, 128, 224), "nin": (0.1, 128, 224), "googlenet": (0.1, 128, 96),
    "resnet18": (0.05, 256, 96), "densenet": (0.1, 256, 96),
}
DENSE = ("unet", "fpn-seg", "retinanet", "ssd-resnet", "single-object", "multi-label", "ssd")


def recipe(name: str, **overrides) -> dict:
    return cfg.resolve(config_file=EXPERIMENTS / f"{name}.yaml", overrides=overrides)


def test_cuda_block_merges_only_for_a_cuda_device_and_options_still_win():
    cpu, cuda = recipe("unet", device="cpu"), recipe("unet", device="cuda")
    assert (cpu["profile"], cpu["model_args"], cpu["batch_size"], cpu["amp"]) == \
        ("none", {"width": 8}, 32, "none")
    assert (cuda["profile"], cuda["model_args"], cuda["batch_size"], cuda["amp"]) == \
        ("cuda", {"width": 64}, 64, "bf16")
    assert cuda["compile"] == "default" and cpu["compile"] is False
    mine = recipe("unet", device="cuda", batch_size=8, model_args={"width": 16})
    assert (mine["batch_size"], mine["model_args"]) == (8, {"width": 16})
    forced = recipe("unet", device="cpu", profile="cuda")  # a profile can be asked for by name
    assert forced["model_args"] == {"width": 64}


def test_cuda_block_merges_model_args_key_by_key():
    merged = profiles.apply_profile({"model_args": {"width": 8, "pool": "concat"},
                                  "cuda": {"model_args": {"width": 64}}}, "cuda")
    assert merged == {"model_args": {"width": 64, "pool": "concat"}, "profile": "cuda"}
    assert profiles.apply_profile({"cuda": {"lr": 1.0}}, "cpu") == {"profile": "none"}
    with pytest.raises(CnnbenchError, match="cuda: block"):
        profiles.apply_profile({"cuda": [1]}, "cuda")


@pytest.mark.parametrize("name", [*D2L_BOOK, *(f"{m}-d2l" for m in D2L_BOOK), *DENSE])
def test_every_recipe_has_a_cuda_block_that_resolves(name):
    cpu, cuda = recipe(name, device="cpu"), recipe(name, device="cuda")
    assert cuda["profile"] == "cuda" and cuda != {**cpu, "device": "cuda", "profile": "cuda"}
    compiling.compile_mode(cuda["compile"])
    if not name.endswith("-d2l"):
        assert cuda["amp"] == "bf16" and cuda["compile"] not in (False, None)


@pytest.mark.parametrize("model", D2L_BOOK)
def test_d2l_recipes_are_train_ch6(model):
    lr, batch, size = D2L_BOOK[model]
    for device in ("cpu", "cuda"):
        c = recipe(f"{model}-d2l", device=device)
        assert (c["lr"], c["batch_size"], c["input_size"][-1]) == (lr, batch, size)
        assert (c["init"], c["optimizer"], c["momentum"], c["weight_decay"]) == \
            ("xavier_uniform", "sgd", 0.0, 0.0)
        assert (c["schedule"], c["epochs"], c["val_size"], c["limit"]) == ("constant", 10, 0, None)
        assert (c["normalize"], c["hflip"], c["crop_padding"], c["random_erasing"],
                c["label_smoothing"], c["amp"]) == (False, False, 0, 0.0, 0.0, "none")
        assert not compiling.drop_last(c, torch.device(device))  # every image, every epoch


def test_dry_run_prints_the_cuda_recipe_without_making_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "unet", "--device", "cuda", "--dry-run",
                                      "--json", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert (config["profile"], config["model_args"], config["epochs"]) == ("cuda", {"width": 64}, 3)
    assert list(tmp_path.iterdir()) == []  # no runs/ folder, no data cache
    plain = CliRunner().invoke(app, ["train", "lenet", "--dry-run", "--device", "cpu"])
    assert plain.exit_code == 0 and "profile: none" in plain.stdout


@pytest.mark.cli
def test_dry_run_rejects_a_bad_compile_mode_in_one_line():
    cli = [sys.executable, "-m", "cnnbench", "train", "lenet", "--dry-run", "--set",
           "compile=fast"]
    done = subprocess.run(cli, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: compile must be")
    assert len(done.stderr.splitlines()) == 1


def test_compile_key_takes_bools_and_modes():
    assert [compiling.compile_mode(v) for v in (False, None, True, "default", "reduce-overhead",
                                            "max-autotune")] == \
        [None, None, "default", "default", "reduce-overhead", "max-autotune"]
    assert cfg.resolve("lenet", overrides={"compile": True})["compile"] is True


@pytest.mark.parametrize("name", ["xavier_uniform", "xavier_normal", "kaiming_uniform",
                                  "kaiming_normal"])
def test_init_sets_weights_by_fan_and_leaves_biases(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 5), nn.ConvTranspose2d(32, 8, 2), nn.Linear(400, 300))
    biases = [m.bias.clone() for m in model]
    weight_init.init_weights(model, name)
    for module, bias in zip(model, biases):
        w = module.weight
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
        std = {"xavier_uniform": math.sqrt(2 / (fan_in + fan_out)),
               "xavier_normal": math.sqrt(2 / (fan_in + fan_out)),
               "kaiming_uniform": math.sqrt(2 / fan_in),
               "kaiming_normal": math.sqrt(2 / fan_in)}[name]
        if name.endswith("uniform"):  # U(-a, a) with a = sqrt(3) std
            assert w.abs().max() <= math.sqrt(3) * std + 1e-6
            assert w.abs().max() > 0.95 * math.sqrt(3) * std
        assert w.std().item() == pytest.approx(std, rel=0.1)
        assert torch.equal(module.bias, bias)


def test_init_is_seeded_and_default_changes_nothing():
    def drawn(name):
        torch.manual_seed(3)
        return weight_init.init_weights(nn.Linear(20, 10), name).weight.detach().clone()
    assert torch.equal(drawn("xavier_uniform"), drawn("xavier_uniform"))
    assert not torch.equal(drawn("xavier_uniform"), drawn("default"))
    default = drawn("default")
    torch.manual_seed(3)
    assert torch.equal(default, nn.Linear(20, 10).weight.detach())
    with pytest.raises(CnnbenchError, match="xavier_uniform"):
        weight_init.init_weights(nn.Linear(2, 2), "xavier")


def test_trainer_applies_init_and_trains_with_an_empty_validation_split(tmp_path, fmnist_dir):
    (tmp_path / "none.yaml").write_text("")
    config = cfg.resolve("lenet", tmp_path / "none.yaml", dict(
        data=str(fmnist_dir), limit=48, val_size=0, batch_size=16, epochs=1, lr=0.1,
        init="xavier_uniform"))
    trainer = build_trainer(config, callbacks=[])
    conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d))
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(conv.weight)
    assert conv.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-6
    results = trainer.fit()
    assert len(trainer.val_split) == 0 and 0 <= results["test_acc"] <= 1


def test_a_step_keeps_its_metrics_on_the_device(tmp_path, fmnist_dir):
    (tmp_path / "none.yaml").write_text("")
    config = cfg.resolve("lenet", tmp_path / "none.yaml", dict(
        data=str(fmnist_dir), limit=48, val_size=16, batch_size=16, epochs=1))
    trainer = build_trainer(config, callbacks=[])
    steps = []

    class Spy(Callback):
        def after_step(self, trainer, step):
            steps.append(step)

    trainer.add_callbacks(Spy())
    trainer.train_epoch(1)
    assert steps and all(isinstance(s.loss, torch.Tensor) for s in steps)
    totals = [trainer.meter.loss.total, *(m.total for m in trainer.meter.metrics.values())]
    assert all(isinstance(t, torch.Tensor) for t in totals)  # summed on the device, read once


def test_static_batches_skip_only_a_partial_last_batch():
    assert list(batch_starts(100, 32, drop_last=True)) == [0, 32, 64]
    assert list(batch_starts(100, 32)) == [0, 32, 64, 96]
    assert list(batch_starts(20, 32, drop_last=True)) == [0]  # never an empty epoch
    config = {"compile": "reduce-overhead"}
    assert compiling.drop_last(config, torch.device("cuda"))
    assert not compiling.drop_last(config, torch.device("cpu"))
    assert not compiling.drop_last({"compile": "default"}, torch.device("cuda"))


def test_a_failing_compile_warns_once_and_trains_eagerly(tmp_path, fmnist_dir, capsys,
                                                         monkeypatch):
    (tmp_path / "none.yaml").write_text("")
    config = cfg.resolve("lenet", tmp_path / "none.yaml", dict(
        data=str(fmnist_dir), limit=48, val_size=16, batch_size=16, epochs=1, compile=True))

    def broken(fn, mode=None):
        def fails(*args):
            raise RuntimeError("no compiler here\nsecond line")
        return fails
    monkeypatch.setattr(compiling.torch, "compile", broken)
    trainer = build_trainer(config, callbacks=[])
    stats = trainer.train_epoch(1)
    assert stats.images == len(trainer.train_split)
    assert trainer.forward == trainer._forward_loss  # the eager function
    err = capsys.readouterr().err
    assert err.count("warning: torch.compile") == 1 and "no compiler here" in err
    assert "second line" not in err


def compiled_step(tmp_path, fmnist_dir, capsys):
    """One training step of LeNet through :class:`compiling.CompiledForward`."""
    (tmp_path / "none.yaml").write_text("")
    config = cfg.resolve("lenet", tmp_path / "none.yaml", dict(
        data=str(fmnist_dir), limit=32, val_size=0, batch_size=16, epochs=1,
        compile="default"))
    trainer = build_trainer(config, callbacks=[])
    assert isinstance(trainer.forward, compiling.CompiledForward)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    images, targets = trainer.train_split.take(slice(0, 16))
    output, _, loss = trainer.train_step(images, targets)
    if "warning: torch.compile" in capsys.readouterr().err:
        pytest.skip("inductor cannot compile here (no working C compiler)")
    assert trainer.forward.proven and torch.isfinite(loss)
    assert output.shape == (16, 10)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_a_compiled_training_step_runs_on_the_cpu(tmp_path, fmnist_dir, capsys, monkeypatch):
    """Dynamo and AOT autograd (the graphs inductor would get), without inductor's C build."""
    compile_ = torch.compile
    monkeypatch.setattr(compiling.torch, "compile",
                        lambda model, mode=None: compile_(model, backend="aot_eager"))
    compiled_step(tmp_path, fmnist_dir, capsys)


@pytest.mark.slow  # inductor's C++ build: about 100 s on 2 busy cores
def test_an_inductor_compiled_training_step_runs_on_the_cpu(tmp_path, fmnist_dir, capsys):
    pytest.importorskip("torch._inductor")
    compiled_step(tmp_path, fmnist_dir, capsys)


@pytest.mark.cli
def test_the_overhead_benchmark_runs_on_the_cpu_with_a_limit(fmnist_dir):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "trainer_overhead.py"
    done = subprocess.run([sys.executable, str(script), "--limit", "64", "--rounds", "1",
                           "--no-d2l", "--device", "cpu"], capture_output=True, text=True,
                          cwd=script.parents[1], env={**os.environ,
                                                      "CNNBENCH_DATA": str(fmnist_dir)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["device"] == "cpu" and set(result["seconds"]) == {"cnnbench", "hand"}
    assert 0 < result["images"] <= 64 and result["cnnbench_over_hand"] > 0


def test_the_start_line_says_amp_and_compile_before_the_slow_first_steps(tmp_path, fmnist_dir):
    import io

    from rich.console import Console

    from cnnbench.render import TrainReporter

    (tmp_path / "none.yaml").write_text("")
    lines = []
    for compile_ in ("reduce-overhead", False):
        config = cfg.resolve("lenet", tmp_path / "none.yaml", dict(
            data=str(fmnist_dir), limit=32, val_size=0, epochs=1, compile=compile_))
        trainer = build_trainer(config, callbacks=[])
        text = io.StringIO()
        TrainReporter(quiet=True, console=Console(file=text, width=300)).start(trainer.describe())
        lines.append(text.getvalue())
    assert "(torch.compile reduce-overhead, compiling at the first steps)" in lines[0]
    assert "torch.compile" not in lines[1] and "(" not in lines[1].split("params)")[1]
