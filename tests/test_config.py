import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnbench import recipe as cfg
from cnnbench import keys
from cnnbench.keys import parse_set
from cnnbench.errors import CnnbenchError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# d2l zh v2, chapter 7 (and seed 003 for ResNet): lr, batch size, input size.
BOOK = {"lenet": (0.9, 256, 28), "lenet-bn": (1.0, 256, 28), "alexnet": (0.01, 128, 224),
        "vgg11": (0.05, 128, 224), "nin": (0.1, 128, 224), "googlenet": (0.1, 128, 96),
        "resnet18": (0.05, 256, 96), "densenet": (0.1, 256, 96)}


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_command_line_overrides_beat_the_yaml_file(tmp_path):
    path = write(tmp_path, "model: lenet\nlr: 0.5\nepochs: 3\nlabel_smoothing: 0.2\n")
    config = cfg.resolve(None, path, {"lr": 0.1, "label_smoothing": None})
    assert config["lr"] == 0.1 and config["epochs"] == 3 and config["label_smoothing"] == 0.2
    assert config["model"] == "lenet" and config["task"] == "classification"


def test_defaults_fill_what_the_file_leaves_out_and_input_size_comes_from_the_model(tmp_path):
    config = cfg.resolve("densenet", write(tmp_path, "epochs: 1\n"))
    assert config["input_size"] == [1, 96, 96] and config["optimizer"] == "sgd"
    assert cfg.resolve("densenet", write(tmp_path, "input_size: 64\n"))["input_size"] == [1, 64, 64]


def test_train_model_uses_its_recipe_when_there_is_one():
    assert cfg.default_recipe("lenet") == EXPERIMENTS / "lenet.yaml"
    from_recipe = yaml.safe_load((EXPERIMENTS / "lenet.yaml").read_text())
    assert cfg.resolve("lenet")["lr"] == from_recipe["lr"]


@pytest.mark.parametrize("key, suggestion", [("epoch", "epochs"),
                                             ("label_smoothin", "label_smoothing"),
                                             ("weight_decy", "weight_decay")])
def test_unknown_key_is_rejected_with_the_nearest_valid_key(tmp_path, key, suggestion):
    with pytest.raises(CnnbenchError, match=f"unknown key '{key}'.*did you mean {suggestion}"):
        cfg.resolve("lenet", write(tmp_path, f"{key}: 1\n"))


@pytest.mark.cli
def test_unknown_key_on_the_command_line_is_one_line_and_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "cnnbench", "train", "lenet", "--set", "epoch=3"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "did you mean epochs" in proc.stderr


def test_values_of_the_wrong_type_or_choice_are_rejected(tmp_path):
    with pytest.raises(CnnbenchError, match="lr must be float"):
        cfg.resolve("lenet", write(tmp_path, "lr: fast\n"))
    with pytest.raises(CnnbenchError, match="optimizer must be one of"):
        cfg.resolve("lenet", None, {"optimizer": "lion"})
    assert cfg.resolve("lenet", write(tmp_path, "lr: 1e-3\n"))["lr"] == 0.001  # YAML 1.1 string


def test_set_values_are_read_as_yaml_scalars():
    assert parse_set(["lr=0.1", "hflip=true", "betas=[0.9, 0.99]", "data=/x"]) == {
        "lr": 0.1, "hflip": True, "betas": [0.9, 0.99], "data": "/x"}


@pytest.mark.parametrize("model", sorted(BOOK))
def test_d2l_recipes_use_the_books_settings(model):
    lr, batch_size, size = BOOK[model]
    config = cfg.resolve(None, EXPERIMENTS / f"{model}-d2l.yaml")
    assert config["model"] == model and config["optimizer"] == "sgd" and config["momentum"] == 0
    assert config["schedule"] == "constant" and config["weight_decay"] == 0
    assert (config["lr"], config["batch_size"], config["input_size"][1:]) == (lr, batch_size,
                                                                             [size, size])
    assert config["epochs"] == 10 and config["label_smoothing"] == 0
    if model == "vgg11":
        assert config["model_args"] == {"ratio": 4}


@pytest.mark.parametrize("model", sorted(BOOK))
def test_our_recipe_keeps_the_architecture_and_ten_epochs(model):
    config = cfg.resolve(None, EXPERIMENTS / f"{model}.yaml")
    book = cfg.resolve(None, EXPERIMENTS / f"{model}-d2l.yaml")
    assert config["model"] == model and config["epochs"] == 10
    assert config["model_args"] == book["model_args"]


def test_set_and_model_arg_read_values_with_one_yaml_parser():
    from cnnbench.inputs import parse_model_args

    assert parse_set(["x=1e-3", "y=-2E+2", "z=1e3x", "w="]) == {
        "x": 0.001, "y": -200.0, "z": "1e3x", "w": None}  # PyYAML alone reads '1e-3', a string
    assert parse_model_args(["flag=true", "ratio=4", "name=abc", "sizes=[1, 2]",
                             "rate=5e-2"]) == {"flag": True, "ratio": 4, "name": "abc",
                                               "sizes": [1, 2], "rate": 0.05}
    with pytest.raises(CnnbenchError, match="--set gives lr twice"):
        parse_set(["lr=0.1", "lr=0.2"])
    with pytest.raises(CnnbenchError, match="bad --model-arg 'ratio'"):
        parse_model_args(["ratio"])


def test_a_recipe_reads_exponent_floats_as_floats(tmp_path):
    assert cfg.read_yaml(write(tmp_path, "lr: 1e-3\nbetas: [9e-1, 0.99]\n")) == {
        "lr": 0.001, "betas": [0.9, 0.99]}


@pytest.mark.parametrize("args, message", [
    (["train", "lenet", "--seed", "0", "--seed", "1"], "--seed given twice"),
    (["train", "lenet", "--seed=0", "-e", "1", "--seed", "1"], "--seed given twice"),
    (["train", "lenet", "--compile", "--no-compile"], "--compile and --no-compile both given"),
    (["train", "-e", "1", "lenet", "--epochs", "2"], "-e and --epochs both given"),
    (["sweep", "lenet", "--parallel", "2", "-p", "2"], "--parallel and -p both given"),
])
def test_an_option_of_one_value_given_twice_is_one_line_and_exit_2(monkeypatch, capsys, args,
                                                                     message):
    from cnnbench import cli

    monkeypatch.setattr(sys, "argv", ["cnnbench", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_repeatable_options_and_values_that_look_like_options_are_not_repeats():
    from cnnbench.cli import repeated_option

    assert repeated_option(["train", "lenet", "--set", "lr=0.1", "--set", "epochs=2",
                            "-m", "a=1", "-m", "b=2"]) is None
    assert repeated_option(["train", "lenet", "--run-dir", "--seed", "--seed", "1"]) is None
    assert repeated_option(["train", "lenet", "--", "--seed", "--seed"]) is None


def test_the_train_request_rules_live_in_the_library(tmp_path):
    from cnnbench import train

    config = train.run("lenet", None, {"lr": 1e-3}, dry_run=True)
    assert config["lr"] == 0.001 and config["model"] == "lenet"
    for kwargs, message in [(dict(dry_run=True, resume_dir="r"), "does not take --resume"),
                            (dict(model="lenet", resume_dir="r"), "takes the model and config"),
                            (dict(resume_dir="r", run_dir="d"), "does not take --run-dir")]:
        with pytest.raises(CnnbenchError, match=message):
            train.run(**kwargs)
    assert not list(tmp_path.iterdir())


# --- the key declarations (keys.Key beside the code that reads them) ---

def test_every_key_has_help_and_a_default_of_its_type():
    from cnnbench.registry import TASKS
    from cnnbench.tasks.base import get_task
    declared = [*cfg.trainer_keys().values()]
    declared += [k for name, path in TASKS.items() if path for k in get_task(name).options]
    assert len(declared) > 60
    for key in declared:
        assert key.help, key.name
        if key.default is not None and key.type is not None:
            assert keys.check(key.name, key.default, {key.name: key}) == key.default, key.name


def test_declaring_a_key_twice_is_an_error_at_import():
    from cnnbench.keys import Key, declare
    from cnnbench.tasks.base import Task
    with pytest.raises(ValueError, match="'lr' is declared twice"):
        declare(Key("lr", 0.01, float, help="again"))
    with pytest.raises(ValueError, match="'flip' is declared twice"):
        type("Twice", (Task,), {"options": (Key("flip", 0.5, float), Key("flip", 0.1, float))})
    assert cfg.trainer_keys()["lr"].default == 0.1  # the first declaration stands


def test_a_task_key_named_like_a_trainer_key_is_an_error(monkeypatch):
    from cnnbench.keys import Key
    from cnnbench.tasks.segmentation import Segmentation
    monkeypatch.setattr(Segmentation, "options", (Key("epochs", 3, int, help="clash"),))
    with pytest.raises(ValueError, match="'epochs' is declared twice"):
        cfg.schema("segmentation")


def test_a_task_options_bounds_are_enforced():
    with pytest.raises(CnnbenchError, match=r"dice_weight must be >= 0, not -1.0"):
        cfg.resolve("unet", None, {"dice_weight": -1})
    with pytest.raises(CnnbenchError, match=r"threshold must be in \[0, 1\], not 1.5"):
        cfg.resolve("multi-label", None, {"threshold": 1.5})
    assert cfg.resolve("unet", None, {"dice_weight": 2})["dice_weight"] == 2.0


def test_defaults_hold_the_tasks_keys_and_fresh_containers():
    config = cfg.defaults("detection")
    assert config["lr"] == 0.1 and config["nms_iou"] == 0.45 and "dice_weight" not in config
    config["model_args"]["width"] = 2
    assert cfg.defaults()["model_args"] == {}


def test_key_rows_list_every_key_with_its_default_and_the_recipes_value():
    rows = {r["key"]: r for r in cfg.key_rows()}
    assert set(rows) == set(cfg.trainer_keys())
    assert rows["lr"]["default"] == 0.1 and rows["lr"]["group"] == "optimizers"
    assert rows["optimizer"]["choices"] == ["sgd", "adamw", "adam"]
    lenet = {r["key"]: r for r in cfg.key_rows("lenet")}
    assert lenet["label_smoothing"]["group"] == "task classification"
    assert lenet["lr"]["value"] == cfg.resolve("lenet")["lr"]


@pytest.mark.cli
def test_train_keys_lists_every_key_as_json():
    import json
    proc = subprocess.run([sys.executable, "-m", "cnnbench", "train", "unet", "--keys", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {r["key"]: r for r in json.loads(proc.stdout)}
    assert rows["dice_weight"]["bounds"] == "[0, inf)" and rows["epochs"]["default"] == 10
    assert rows["model"]["value"] == "unet" and all(r["help"] for r in rows.values())
