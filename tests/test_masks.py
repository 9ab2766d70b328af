"""``masks:PATH``: the user's own segmentation masks, checked by a round trip of the scenes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnbench import recipe as cfg
from cnnbench.data import scenes
from cnnbench.data.sources import load_data
from cnnbench.tasks.segmentation import Segmentation
from cli_run import cli

pytestmark = pytest.mark.usefixtures("scene_cache")


def export_scenes(fmnist_dir, root, count=20):
    """The built-in training scenes written as ``images/NNN.png``, ``masks/NNN.png`` and
    ``classes.txt``; returns them as loaded (uint8 images [N, 1, 96, 96], masks [N, 96, 96])."""
    config = cfg.resolve("unet", None, {"data": f"scenes:{fmnist_dir}", "scenes": count,
                                        "test_scenes": 4, "val_size": 0, "limit": count})
    train = load_data(config, Segmentation).train
    for part in ("images", "masks"):
        (root / part).mkdir(parents=True)
    for i, (image, mask) in enumerate(zip(train.images, train.targets["masks"])):
        Image.fromarray(image[0].numpy()).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask.to(torch.uint8).numpy()).save(root / "masks" / f"{i:03d}.png")
    (root / "classes.txt").write_text("\n".join(scenes.CLASS_NAMES) + "\n")
    return train.images, train.targets["masks"]


def test_exported_scenes_read_back_as_the_same_pixels_and_masks(fmnist_dir, tmp_path):
    images, masks = export_scenes(fmnist_dir, tmp_path / "export")
    data = load_data(cfg.resolve("unet", None, {"data": f"masks:{tmp_path / 'export'}",
                                                "val_size": 4}), Segmentation)
    assert data.class_names == list(scenes.CLASS_NAMES)
    seen = []
    for split in (data.train, data.val, data.test):
        for k, file in enumerate(split.files):
            i = int(file.rsplit("/", 1)[1][:3])
            seen.append(i)
            assert torch.equal(split.images[k], images[i])
            assert torch.equal(split.targets["masks"][k], masks[i].to(torch.uint8))
    assert sorted(seen) == list(range(len(images)))
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 4)


def test_unet_trains_from_exported_masks(fmnist_dir, tmp_path):
    export_scenes(fmnist_dir, tmp_path / "export", count=12)
    assert cli(["train", "unet", "-m", "width=4", "--data", f"masks:{tmp_path / 'export'}",
                "--epochs", "1", "--batch-size", "4", "--set", "val_size=2", "--run-dir",
                tmp_path / "run", "-q"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0.0 <= results["test_miou"] <= 1.0 and results["task"] == "segmentation"


@pytest.mark.parametrize("case, message", [
    ("mask of another size", "is 48x48, its image 96x96"),
    ("class index beyond the classes", "has class index 11, beyond the 10 classes"),
    ("image without its mask", "has no counterpart in"),
])
def test_a_bad_mask_is_one_line_exit_2_and_leaves_nothing(case, message, fmnist_dir, tmp_path,
                                                         capsys, monkeypatch):
    root = tmp_path / "export"
    export_scenes(fmnist_dir, root, count=8)
    if case == "mask of another size":
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(root / "masks" / "003.png")
    elif case == "class index beyond the classes":
        Image.fromarray(np.full((96, 96), 11, np.uint8)).save(root / "masks" / "003.png")
    else:
        (root / "masks" / "003.png").unlink()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    capsys.readouterr()
    code = cli(["train", "unet", "-m", "width=4", "--data", f"masks:{root}", "--epochs", "1",
                "-q"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not list(work.iterdir())
