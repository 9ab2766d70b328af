"""``coco:ANNOTATIONS.json[,IMAGES_DIR]``: COCO JSON boxes, checked by a scenes round trip."""

import json
import shutil

import pytest
import torch
import yaml

from cnnbench import recipe as cfg
from cnnbench.data import coco, scenes, scenes_export
from cnnbench.data.sources import load_data
from cnnbench.errors import CnnbenchError
from cnnbench.tasks.detection import Detection
from cli_run import cli

pytestmark = pytest.mark.usefixtures("scene_cache")


@pytest.fixture(scope="module")
def exported(fmnist_dir, tmp_path_factory):
    """20 training and 6 test scenes as JPEG + COCO JSON (read-only: copy before editing)."""
    root = tmp_path_factory.mktemp("scenes_export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNBENCH_SCENES_CACHE", str(tmp_path_factory.getbasetemp() / "scenes"))
        scenes_export.export(root, fmnist_dir, scenes_count=20, test_scenes=6, formats=("coco",))
    return root / "coco"


def built_in(fmnist_dir):
    """The scenes source at the export's sizes (``limit`` only to accept the tests' small files:
    it samples nothing away)."""
    return load_data(cfg.resolve("ssd-resnet", None, {
        "data": f"scenes:{fmnist_dir}", "scenes": 20, "test_scenes": 6, "val_size": 4,
        "limit": 20}), Detection)


def test_the_export_reads_back_as_the_built_in_splits(exported, fmnist_dir):
    data = load_data(cfg.resolve("ssd-resnet", None, {"data": f"coco:{exported / 'train.json'}",
                                                      "val_size": 4}), Detection)
    same = built_in(fmnist_dir)
    assert data.class_names == list(scenes.CLASS_NAMES)
    assert data.info["splits"]["test"] == str(exported / "test.json")
    for split in ("train", "val", "test"):
        ours, theirs = getattr(data, split), getattr(same, split)
        assert len(ours) == len(theirs) == {"train": 16, "val": 4, "test": 6}[split]
        m = ours.targets["labels"].shape[1]  # the scenes pad to 4 objects, the JSON to its most
        assert torch.equal(ours.targets["labels"], theirs.targets["labels"][:, :m])
        assert (theirs.targets["labels"][:, m:] == -1).all()
        assert torch.equal(ours.targets["boxes"], theirs.targets["boxes"][:, :m])
        assert torch.equal(ours.targets["multi_hot"], theirs.targets["multi_hot"])
        # JPEG at quality 95: grey pixels within a few levels, on average well under one
        diff = (ours.images.float() - theirs.images.float()).abs()
        assert ours.images.shape == theirs.images.shape and diff.mean() < 1.0 and diff.max() < 24


def test_the_json_is_cocos_layout(exported, fmnist_dir):
    drawn = json.loads((exported / "train.json").read_text())
    first = drawn["annotations"][0]
    scene = built_in(fmnist_dir).train  # image id 1 is the first training scene: in train
    x0, y0, x1, y1 = scene.targets["boxes"][0, 0].tolist()
    assert first["image_id"] == 1 and first["bbox"] == [x0, y0, x1 - x0, y1 - y0]
    assert first["category_id"] == scene.targets["labels"][0, 0] + 1
    assert [c["id"] for c in drawn["categories"]] == list(range(1, 11))
    assert drawn["images"][0] == {"id": 1, "file_name": "train/000000.jpg", "width": 96,
                                  "height": 96}


def _edit(exported, tmp_path, change):
    """A copy of the export with ``change(train JSON object, folder)`` applied."""
    root = tmp_path / "coco"
    shutil.copytree(exported, root)
    data = json.loads((root / "train.json").read_text())
    change(data, root)
    (root / "train.json").write_text(json.dumps(data))
    return root


def test_category_ids_need_not_be_contiguous_and_are_sorted(exported, tmp_path):
    def renumber(data, root):
        new = {c["id"]: 100 - 7 * c["id"] for c in data["categories"]}  # descending, with gaps
        for c in data["categories"]:
            c["id"] = new[c["id"]]
        for a in data["annotations"]:
            a["category_id"] = new[a["category_id"]]
    root = _edit(exported, tmp_path, renumber)
    ann = coco.read(root / "train.json", root)
    names = list(scenes.CLASS_NAMES)
    assert ann.class_names == names[::-1]
    original = coco.read(exported / "train.json", exported)
    assert [[9 - k for k in lab] for lab in original.labels] == ann.labels


def test_crowd_and_zero_area_boxes_are_ignored_and_counted(exported, tmp_path, capsys):
    def mark(data, root):
        data["annotations"][0]["iscrowd"] = 1
        data["annotations"][1]["bbox"][2] = 0
    root = _edit(exported, tmp_path, mark)
    ann = coco.read(root / "train.json", root)
    original = coco.read(exported / "train.json", exported)
    assert (ann.crowd, ann.empty) == (1, 1)
    assert sum(map(len, ann.boxes)) == sum(map(len, original.boxes)) - 2
    coco.load_bundle(f"{root / 'train.json'}", cfg.resolve("ssd-resnet", None, {"val_size": 4}),
                     False, print)
    out = capsys.readouterr().out
    assert "1 crowd annotations (iscrowd 1) ignored" in out
    assert "1 boxes of zero width or height ignored" in out


def test_single_object_leaves_out_images_without_a_box(exported, tmp_path, capsys):
    def empty_first(data, root):
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1]
    root = _edit(exported, tmp_path, empty_first)
    config = cfg.resolve("single-object", None, {"val_size": 4})
    kept = coco.load_bundle(f"{root / 'train.json'}", config, True, print)
    every = coco.load_bundle(f"{root / 'train.json'}", config, False, print)
    assert len(kept.train) + len(kept.val) == 19 and len(every.train) + len(every.val) == 20
    assert "1 images of train.json without a box left out" in capsys.readouterr().out


def test_a_val_sibling_is_the_test_split_and_its_images_folder_follows(exported, tmp_path):
    root = tmp_path / "cocolike"
    (root / "annotations").mkdir(parents=True)
    for split, other in (("train", "train2017"), ("test", "val2017")):
        shutil.copytree(exported / split, root / other / split)
        shutil.copy(exported / f"{split}.json", root / "annotations" /
                    f"instances_{other}.json")
    found = coco.siblings(root / "annotations" / "instances_train2017.json", root / "train2017")
    assert found == {"val": (root / "annotations" / "instances_val2017.json", root / "val2017")}
    data = load_data(cfg.resolve("ssd-resnet", None, {
        "data": f"coco:{root / 'annotations' / 'instances_train2017.json'},{root / 'train2017'}",
        "val_size": 4}), Detection)
    assert len(data.test) == 6 and data.test.files[0].startswith(str(root / "val2017"))


def test_without_a_test_json_a_test_split_is_held_out_and_said(exported, tmp_path, capsys):
    root = tmp_path / "alone"
    shutil.copytree(exported, root)
    (root / "test.json").unlink()
    data = coco.load_bundle(f"{root / 'train.json'}",
                            cfg.resolve("ssd-resnet", None, {"val_size": 4}), False, print)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 4)
    assert "no test JSON beside" in capsys.readouterr().out


@pytest.mark.parametrize("model, metric", [("ssd-resnet", "test_map50"),
                                           ("single-object", "test_box_iou"),
                                           ("multi-label", "test_f1")])
def test_the_box_tasks_train_from_a_coco_export(model, metric, exported, tmp_path):
    args = ["-m", "width=4", "-i", "64"] + (["-m", "head_channels=16"] if model == "ssd-resnet"
                                            else [])  # the 96 px images fitted to 64
    assert cli(["train", model, *args, "--data", f"coco:{exported / 'train.json'}", "--epochs",
                "1", "--batch-size", "8", "--set", "val_size=4", "--run-dir", tmp_path / "run",
                "-q"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert 0.0 <= results[metric] <= 1.0 and config["data"].startswith("coco:")


def test_detection_trains_bitwise_alike_from_memory_and_from_a_stream(exported, keep_threads):
    """The boxes stay in memory, the images stream from the JPEGs in two workers: the same
    batches, so the same weights as in memory (CPU, same seed, the dense augmentation on)."""
    from cnnbench.data.stream import FileSplit
    from cnnbench.training.build import build_trainer

    weights = {}
    for mode in ("memory", "stream"):
        trainer = build_trainer(cfg.resolve("ssd-resnet", None, {
            "data": f"coco:{exported / 'train.json'}", "data_mode": mode, "workers": 2,
            "val_size": 4, "epochs": 1, "batch_size": 8, "threads": 1, "input_size": [1, 64, 64],
            "model_args": {"width": 4, "head_channels": 16}}), callbacks=[])
        trainer.fit()
        weights[mode] = trainer.model.state_dict()
    assert isinstance(trainer.train_split, FileSplit)
    assert all(torch.equal(weights["memory"][k], weights["stream"][k]) for k in weights["memory"])


def _outside(data, root):
    data["annotations"][2]["bbox"] = [80, 10, 30, 20]  # to x 110 on a 96 px image


def _negative(data, root):
    data["annotations"][2]["bbox"][2] = -5


def _no_file(data, root):
    (root / "train" / "000003.jpg").unlink()


def _no_category(data, root):
    data["annotations"][2]["category_id"] = 42


def _no_image(data, root):
    data["annotations"][2]["image_id"] = 999


def _twice(data, root):
    data["images"][3]["id"] = data["images"][2]["id"]


def _no_images(data, root):
    del data["images"]


def _other_size(data, root):
    data["images"][3]["width"] = 120


def _bad_bbox(data, root):
    data["annotations"][2]["bbox"] = [1, 2, 3]


@pytest.mark.parametrize("change, message", [
    (_outside, "outside its image (image id"),
    (_negative, "with a negative width"),
    (_no_file, "no image file"),
    (_no_category, "names category id 42, which is not in categories"),
    (_no_image, "names image id 999, which is not in images"),
    (_twice, "image id 3 is given twice"),
    (_no_images, "has no 'images' list"),
    (_other_size, "is 96x96 pixels, the JSON says 120x96"),
    (_bad_bbox, "four numbers [x, y, width, height] are needed"),
    ("not JSON", "is not valid JSON (line 1 column"),
    ("test categories", "categories differ from"),
])
def test_bad_coco_input_is_one_line_exit_2_and_leaves_nothing(change, message, exported,
                                                              tmp_path, capsys, monkeypatch):
    if change == "not JSON":
        root = _edit(exported, tmp_path, lambda data, root: None)
        (root / "train.json").write_text('{"images": [')
    elif change == "test categories":
        root = _edit(exported, tmp_path, lambda data, root: None)
        test = json.loads((root / "test.json").read_text())
        test["categories"][0]["name"] = "tee"
        (root / "test.json").write_text(json.dumps(test))
    else:
        root = _edit(exported, tmp_path, change)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    capsys.readouterr()
    code = cli(["train", "single-object", "-m", "width=4", "--data",
                f"coco:{root / 'train.json'}", "--epochs", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not list(work.iterdir())


def test_segmentation_does_not_take_coco(exported):
    from cnnbench.tasks.segmentation import Segmentation

    with pytest.raises(CnnbenchError, match="cannot train on coco data"):
        load_data(cfg.resolve("unet", None, {"data": f"coco:{exported / 'train.json'}"}),
                  Segmentation)


def test_the_export_refuses_a_folder_it_would_overwrite(exported):
    with pytest.raises(CnnbenchError, match="exists: remove it"):
        scenes_export.export(exported.parent, formats=("coco",))


def test_the_export_scenes_command_writes_both_layouts(fmnist_dir, tmp_path, capsys):
    capsys.readouterr()
    assert cli(["export-scenes", tmp_path / "out", "--scenes", "8", "--test-scenes", "4",
                "--data", fmnist_dir, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["coco"]["data"] == f"coco:{tmp_path / 'out' / 'coco' / 'train.json'}"
    assert result["masks"]["data"] == f"masks:{tmp_path / 'out' / 'masks'}"
    assert len(list((tmp_path / "out" / "coco" / "train").glob("*.jpg"))) == 8
    assert len(list((tmp_path / "out" / "masks" / "test" / "masks").glob("*.png"))) == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coco", "masks"]
