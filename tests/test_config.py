import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnbench import config as cfg
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
    assert cfg.parse_set(["lr=0.1", "hflip=true", "betas=[0.9, 0.99]", "data=/x"]) == {
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


# --- the key declarations (keys.Key beside the code that reads them) ---

def test_every_key_has_help_and_a_default_of_its_type():
    from cnnbench.tasks import TASKS
    from cnnbench.tasks.base import get_task
    keys = [*cfg.trainer_keys().values()]
    keys += [k for name, path in TASKS.items() if path for k in get_task(name).options]
    assert len(keys) > 60
    for key in keys:
        assert key.help, key.name
        if key.default is not None and key.type is not None:
            assert cfg.check(key.name, key.default, {key.name: key}) == key.default, key.name


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
