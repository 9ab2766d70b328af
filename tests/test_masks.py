"""``masks:PATH``: the user's own segmentation masks, checked by a round trip of the scenes."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cnnbench import recipe as cfg
from cnnbench.data import scenes, scenes_export
from cnnbench.data.sources import load_data
from cnnbench.tasks.segmentation import Segmentation
from cli_run import cli

pytestmark = pytest.mark.usefixtures("scene_cache")


def export_scenes(fmnist_dir, root, count=20):
    """The built-in scenes (``count`` training, 4 test) written by ``scenes_export`` in masks:'s
    split layout under ``root``; returns the scenes source's bundle at the same sizes."""
    scenes_export.export(root, fmnist_dir, scenes_count=count, test_scenes=4, formats=("masks",))
    return load_data(cfg.resolve("unet", None, {"data": f"scenes:{fmnist_dir}", "scenes": count,
                                                "test_scenes": 4, "val_size": 4,
                                                "limit": count}), Segmentation)


def test_exported_scenes_read_back_as_the_built_in_splits(fmnist_dir, tmp_path):
    same = export_scenes(fmnist_dir, tmp_path / "export")
    data = load_data(cfg.resolve("unet", None, {"data": f"masks:{tmp_path / 'export' / 'masks'}",
                                                "val_size": 4}), Segmentation)
    assert data.class_names == list(scenes.CLASS_NAMES)
    for split in ("train", "val", "test"):
        ours, theirs = getattr(data, split), getattr(same, split)
        assert len(ours) == {"train": 16, "val": 4, "test": 4}[split]
        assert torch.equal(ours.images, theirs.images)
        assert torch.equal(ours.targets["masks"], theirs.targets["masks"])
        assert torch.equal(ours.targets["multi_hot"], theirs.targets["multi_hot"])


def test_a_flat_folder_holds_out_val_and_test(fmnist_dir, tmp_path):
    export_scenes(fmnist_dir, tmp_path / "export")
    flat = tmp_path / "export" / "masks" / "train"  # images/, masks/ and classes.txt alone
    shutil.copy(flat.parent / "classes.txt", flat)
    data = load_data(cfg.resolve("unet", None, {"data": f"masks:{flat}", "val_size": 4}),
                     Segmentation)
    drawn = scenes.load_scenes(scenes.SceneParams(count=20), fmnist_dir, strict_count=False)
    seen = []
    for split in (data.train, data.val, data.test):
        for k, file in enumerate(split.files):
            i = int(file.rsplit("/", 1)[1][:6])
            seen.append(i)
            assert torch.equal(split.images[k], drawn["images"][i])
            assert torch.equal(split.targets["masks"][k], drawn["masks"][i])
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 4)
    assert sorted(seen) == list(range(20))


def test_unet_trains_from_exported_masks(fmnist_dir, tmp_path):
    export_scenes(fmnist_dir, tmp_path / "export", count=12)
    assert cli(["train", "unet", "-m", "width=4", "--data",
                f"masks:{tmp_path / 'export' / 'masks'}",
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
    export_scenes(fmnist_dir, tmp_path / "export", count=8)
    root = tmp_path / "export" / "masks"
    mask = root / "train" / "masks" / "000003.png"
    if case == "mask of another size":
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(mask)
    elif case == "class index beyond the classes":
        Image.fromarray(np.full((96, 96), 11, np.uint8)).save(mask)
    else:
        mask.unlink()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    capsys.readouterr()
    code = cli(["train", "unet", "-m", "width=4", "--data", f"masks:{root}", "--epochs", "1",
                "-q"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not list(work.iterdir())
