"""benchmarks/results_md.py and benchmarks/reproduce.py: the results table from run folders."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_md  # noqa: E402


def fake_run(folder: Path, model: str, value: float, **config) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": model, **config}))
    (folder / "results.json").write_text(json.dumps({
        "model": model, "task": "classification", "monitor": "acc", "test_acc": value,
        "device_name": "NVIDIA H100 80GB HBM3", "epochs": 10, "minutes": 0.5,
        "images_per_second": 12345.6}))


def test_rows_recipes_and_the_seed_spread(tmp_path):
    book = {"init": "xavier_uniform", "optimizer": "sgd", "momentum": 0.0, "profile": "cuda"}
    fake_run(tmp_path / "vgg11-d2l-s0", "vgg11", 0.91, **book)
    fake_run(tmp_path / "vgg11-d2l-s1", "vgg11", 0.93, **book)
    fake_run(tmp_path / "vgg11-s0", "vgg11", 0.935, optimizer="sgd", momentum=0.9)
    text = results_md.markdown([results_md.row(f) for f in results_md.run_folders([tmp_path])])
    assert "## NVIDIA H100 80GB HBM3" in text
    assert "| vgg11 | d2l | cuda | acc | 0.9100 | 0.920 | 10 | 0.50 | 12,346 | vgg11-d2l-s0 |" \
        in text
    assert "| vgg11 | ours | none | acc | 0.9350 | 0.920 |" in text
    # two seeds of the book's recipe: mean 0.92, range 0.91-0.93, on the book's row
    assert "| vgg11 | d2l | cuda |  | acc | 2 | 0.9200 | 0.9100 | 0.9300 | +0.0000 |" in text
    assert text.count("| vgg11 | ours |") == 1  # one run: no spread row


def test_the_seed_spread_groups_by_the_whole_configuration_but_the_seed(tmp_path):
    adamw = {"optimizer": "adamw", "schedule": "onecycle", "lr": 0.003}
    sgd = {"optimizer": "sgd", "schedule": "step", "lr": 0.1, "momentum": 0.9}
    fake_run(tmp_path / "a0", "resnet18", 0.90, seed=0, threads=4, **adamw)
    fake_run(tmp_path / "a1", "resnet18", 0.92, seed=1, threads=8, data="/elsewhere", **adamw)
    fake_run(tmp_path / "s0", "resnet18", 0.80, seed=0, **sgd)
    fake_run(tmp_path / "s1", "resnet18", 0.84, seed=1, **sgd)
    text = results_md.markdown([results_md.row(f) for f in results_md.run_folders([tmp_path])])
    # two groups of two (seed, threads and the data path do not split a group), each named by
    # the keys that set it apart from the other
    assert ("| resnet18 | ours | none | optimizer=adamw, lr=0.003, momentum=0.0, "
            "schedule=onecycle | acc | 2 | 0.9100 | 0.9000 | 0.9200 |") in text
    assert ("| resnet18 | ours | none | optimizer=sgd, lr=0.1, momentum=0.9, schedule=step | "
            "acc | 2 | 0.8200 | 0.8000 | 0.8400 |") in text


def test_reproduce_dry_trains_each_recipe_and_keeps_the_folders_small(tmp_path, fmnist_dir):
    env = dict(os.environ, CNNBENCH_DATA=str(fmnist_dir), PYTHONPATH=str(ROOT))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), str(out),
                           "--dry", "--recipes", "lenet-d2l", "--seeds", "0", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for seed in (0, 1):
        run = out / "runs" / f"lenet-d2l-s{seed}"
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
        assert json.loads((run / "results.json").read_text())["epochs"] == 1
        assert not (run / "checkpoints").exists() and not (run / "tensorboard").exists()
    table = (out / "results.md").read_text()
    assert "lenet-d2l-s1 |" in table and "| lenet | d2l | none |  | acc | 2 |" in table


def test_reproduce_refuses_an_unknown_recipe_before_training(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reproduce.py"),
                           str(tmp_path / "out"), "--recipes", "vgg12"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "experiments/vgg12.yaml" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_throughput_profile_labels_each_part_of_a_step(tmp_path, fmnist_dir):
    env = dict(os.environ, CNNBENCH_DATA=str(fmnist_dir), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"),
                           "--device", "cpu", "--models", "lenet", "--steps", "2", "--warmup",
                           "1", "--limit", "96", "--profile", str(tmp_path), "--profile-steps",
                           "3"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout.splitlines()[0])
    assert row["profile"] == "none"  # the recipe's device profile, beside the profiler's figures
    p = row["profiler"]
    parts = p["parts"]
    assert set(parts) == {"take", "forward+loss", "optimizer", "metrics", "backward and rest"}
    assert all(parts[k]["host_ms"] > 0 for k in parts)
    # the parts add up to the labelled step, which the wall clock bounds
    assert abs(sum(t["host_ms"] for t in parts.values()) - p["step_host_ms"]) < 1e-2
    assert p["step_host_ms"] <= p["wall_ms"] * 1.01
    assert any(op["op"] == "aten::convolution_backward" for op in p["top_ops"])
    trace = json.loads((tmp_path / "lenet-trace.json").read_text())
    assert any(e.get("name") == "forward+loss" for e in trace["traceEvents"])
    assert "forward+loss" in proc.stderr  # the table, for people
