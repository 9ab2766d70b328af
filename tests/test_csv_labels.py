"""``csv:LABELS.csv[,IMAGES_DIR]``: the user's own labels, one label or space-separated tags."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnbench import recipe as cfg
from cnnbench.data.sources import load_data
from cnnbench.tasks.classification import Classification
from cnnbench.tasks.multi_label import MultiLabel
from cli_run import cli

TAGS = ["cat", "dog", "cat dog", "eel", "dog eel", "cat"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_CACHE", str(tmp_path / "cache"))


def write(root, rows, header="fname,tags", images=None):
    """``root/labels.csv`` and a 32 px PNG per named file under ``images`` (default root)."""
    folder = images or root
    for f in (root, folder):
        f.mkdir(parents=True, exist_ok=True)
    lines = [header]
    for i, row in enumerate(rows):
        name = row[0]
        if not (folder / name).exists():
            array = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(array).save(folder / name)
        lines.append(",".join(row))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return f"csv:{root / 'labels.csv'}" + (f",{images}" if images else "")


def rows_of(n=30, tags=TAGS, split=None):
    return [(f"{i:03d}.png", tags[i % len(tags)], *((split(i),) if split else ()))
            for i in range(n)]


def test_single_labels_train_classification_with_the_csvs_split_column(tmp_path):
    rows = [(f"{i:03d}.png", ["cat", "dog", "eel"][i % 3], ["train", "valid", "test"][i % 5 % 3])
            for i in range(30)]
    data_arg = write(tmp_path / "d", rows, header="name,label,split",
                     images=tmp_path / "pictures")
    for mode in ("memory", "stream"):
        data = load_data(cfg.resolve("lenet", None, {"data": data_arg, "data_mode": mode}),
                         Classification)
        assert data.class_names == ["cat", "dog", "eel"]
        for split, name in ((data.train, "train"), (data.val, "valid"), (data.test, "test")):
            expected = [r for r in rows if r[2] == name]
            assert [f.rsplit("/", 1)[1] for f in split.files] == [r[0] for r in expected]
            assert split.targets.tolist() == [data.class_names.index(r[1]) for r in expected]
        first = np.array(Image.open(tmp_path / "pictures" / rows[0][0]))
        assert torch.equal(data.train.images[0:1][0],  # decoded, resized to LeNet's 28 px
                           torch.from_numpy(np.array(Image.fromarray(first).resize(
                               (28, 28), Image.Resampling.BILINEAR))).permute(2, 0, 1))


def test_space_separated_tags_train_the_multi_label_task(tmp_path):
    data_arg = write(tmp_path / "d", rows_of())
    data = load_data(cfg.resolve("multi-label", None, {"data": data_arg, "val_size": 6}),
                     MultiLabel)
    assert data.class_names == ["cat", "dog", "eel"]
    hot = torch.cat([data.train.targets["multi_hot"], data.val.targets["multi_hot"],
                     data.test.targets["multi_hot"]])
    assert hot.sum().item() == sum(len(TAGS[i % 6].split()) for i in range(30))
    assert cli(["train", "multi-label", "--data", data_arg, "--epochs", "1", "--batch-size",
                "8", "--input-size", "32", "--set", "val_size=6", "--run-dir",
                tmp_path / "run", "-q"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["report"]["per_class_f1"]) == ["cat", "dog", "eel"]


@pytest.mark.parametrize("case, message", [
    ("missing file", "line 3: no image file"),
    ("unknown column", "unknown column 'splt' (did you mean split?)"),
    ("duplicate name", "line 4: '000.png' is given twice (first on line 2)"),
    ("label not in classes", "line 3: label 'dgo' of '001.png' is not in classes (did you mean "
                             "dog?)"),
    ("two labels for classification", "line 4: '002.png' has 2 labels; the classification task "
                                      "takes one"),
    ("unknown split", "line 2: split 'tset' is not one of train, val, valid, test"),
])
def test_a_bad_csv_is_one_line_exit_2_and_leaves_nothing(case, message, tmp_path, capsys,
                                                         monkeypatch):
    root = tmp_path / "d"
    rows, extra = rows_of(6, ["cat", "dog", "eel"]), []
    if case == "missing file":
        write(root, rows)
        (root / "001.png").unlink()
    elif case == "unknown column":
        write(root, [(*r, "train") for r in rows], header="fname,label,splt")
    elif case == "duplicate name":
        write(root, rows[:2] + [rows[0]] + rows[3:])
    elif case == "label not in classes":
        write(root, [rows[0], ("001.png", "dgo"), *rows[2:]])
        extra = ["--set", "classes=[cat,dog,eel]"]
    elif case == "two labels for classification":
        write(root, rows[:2] + [("002.png", "cat dog")] + rows[3:])
    elif case == "unknown split":
        write(root, [(*r, "tset") for r in rows], header="fname,label,split")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    capsys.readouterr()
    code = cli(["train", "lenet", "--data", f"csv:{root / 'labels.csv'}", "--epochs", "1",
                "-q", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not list(work.iterdir())
