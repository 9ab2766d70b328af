"""Every command on every recipe in experiments/: ``train`` (one optimizer step), ``eval``
(``--limit``: other data than the run's), ``predict``, ``summary`` (the model the run trained,
parameter for parameter) and ``receptive-field`` (its effective field on the run's checkpoint),
from the command line, in this process, so that a command broken on some recipes shows.

Tiny inputs keep each recipe to seconds: the synthetic IDX files of ``fmnist_dir``, one batch
of 8 images, small widths and input sizes where the model allows. The slowest recipes are
marked ``slow`` (deselected in CI; ``pytest -m slow tests/test_every_command.py`` runs them).
One step trains too little to show the one-cycle ``eval --limit`` bug (it needs more training
steps than evaluation ones): ``test_eval.py`` pins that on each recipe's schedule.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from cli_run import cli

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
RECIPES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
# One optimizer step: 8 training images (and 4 to validate, 8 to test) in one batch of 8, on
# one thread, in fp32 (so a shared 2-core machine runs the file in minutes, not tens of them;
# test_loop_features.py covers bf16 autocast, some recipes' choice on the CPU).
STEP = ["--epochs", "1", "-s", "val_size=4", "-s", "threads=1", "--amp", "none"]
BATCH = {"ssd": 2}  # images per split and per batch; default 8
SCENES = ["-s", "scene_size=32", "-i", "1x32x32"]  # 32-pixel scenes
SMALL = {  # recipe family: what keeps it tiny (widths, input sizes)
    "alexnet": ["-i", "200"], "vgg11": ["-i", "224"], "nin": ["-i", "68"],  # their smallest
    "googlenet": ["-i", "32"], "resnet18": ["-i", "32"], "densenet": ["-i", "32"],
    "body-classifier": ["-i", "32"], "resnet18-imagenet": ["-i", "3x32x32"],
    "unet": [*SCENES, "-m", "width=4"],
    "fpn-seg": [*SCENES, "-m", "channels=16", "-m", "out_channels=16"],
    "fpn": [*SCENES, "-m", "out_channels=16"],
    "retinanet": [*SCENES, "-m", "out_channels=16"],
    "single-object": [*SCENES, "-m", "width=4"],
    "multi-label": [*SCENES, "-m", "width=4"],
    "ssd-resnet": ["-s", "scene_size=64", "-m", "width=4", "-m", "head_channels=16"],
    "ssd": ["-s", "scene_size=64"],  # 3x352x352: its smallest
}
# The slowest (their smallest inputs are 200-352 px; fpn is retinanet's detector again): in
# CI, the other 20 took 49 s in all on the shared 2-core machine (load average 3.7).
SLOW = {"ssd", "alexnet", "alexnet-d2l", "vgg11", "vgg11-d2l", "fpn"}


def family(recipe: str) -> str:
    return recipe.removesuffix("-d2l")


def model_options(run: Path) -> list[str]:
    """``-m KEY=VALUE`` for each of a run's model options, the data's (``num_classes``) too:
    the same model for summary."""
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    options = []
    for key, value in {**state["context"]["model_args"], **state["config"]["model_args"]}.items():
        options += ["-m", f"{key}={json.dumps(value) if isinstance(value, list) else value}"]
    return options


@pytest.mark.usefixtures("scene_cache", "keep_threads")
@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.slow) if r in SLOW else r
                                    for r in RECIPES])
def test_every_command_runs_on_the_recipe(recipe, tmp_path, fmnist_dir, capsys):
    run = tmp_path / "run"
    argv = ["train", "--config", EXPERIMENTS / f"{recipe}.yaml", "--device", "cpu",
            "--data", fmnist_dir, "--run-dir", run, "--quiet", "-s", "log_graph=false",
            "-s", "log_images=false", *STEP, *SMALL.get(family(recipe), [])]
    n = str(BATCH.get(recipe, 8))
    argv += ["--limit", n, "-b", n]
    if "scene_size" in " ".join(SMALL.get(family(recipe), [])):
        argv[argv.index("--data"):argv.index("--data") + 2] = []  # scenes drawn from ~/.cache
        argv += ["-s", f"data=scenes:{fmnist_dir}"]
    assert cli(argv) == 0, capsys.readouterr().err
    results = json.loads((run / "results.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert results["epochs"] == 1 and len((run / "metrics.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()

    assert cli(["eval", run, "--limit", "2", "--json", "--out", tmp_path / "eval"]) == 0, \
        capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["images"] == 2

    c, h, w = config["input_size"]
    Image.new("RGB" if c == 3 else "L", (w + 5, h + 3), 90).save(tmp_path / "some.png")
    assert cli(["predict", run, tmp_path / "some.png", "--json"]) == 0, capsys.readouterr().err
    (row,) = json.loads(capsys.readouterr().out)
    assert row["size"] == [w + 5, h + 3]

    size = ["-i", f"{c}x{h}x{w}"]
    assert cli(["summary", config["model"], *size, *model_options(run), "--depth", "1",
                "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["total_params"] == results["params"]

    assert cli(["receptive-field", config["model"], *size, *model_options(run),
                "--effective", "--checkpoint", run, "-n", "2", "--data", "random",
                "--json"]) == 0, capsys.readouterr().err
    field = json.loads(capsys.readouterr().out)
    assert field["effective"]["checkpoint"] == str(run)
