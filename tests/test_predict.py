"""`cnnbench predict` over folders: one CSV row per file, in batches, memory flat in the
number of files; the same predictions as one file at a time."""

import csv
import json

import pytest
from PIL import Image

from cnnbench import predict as P
from cnnbench.data import fashion_mnist as fm
from cnnbench.export import _load_run, eager_outputs
from cli_run import cli


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory, fashion_dir):
    """Ten Fashion-MNIST test images as PNG files in two nested folders, a note beside them."""
    root = tmp_path_factory.mktemp("images")
    images, labels = fm.load_split("test", fashion_dir)
    for i in range(10):
        folder = root / ("shoes" if i % 2 else "shirts/more")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0].numpy()).save(folder / f"{i:02d}.png")
    (root / "notes.txt").write_text("not an image, not listed")
    return root, images[:10]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_over_a_folder_has_one_row_per_image_file_with_the_models_top_classes(
        lenet_256, image_tree, tmp_path):
    root, images = image_tree
    calls = []
    result = P.predict_csv(lenet_256, [root], tmp_path / "out.csv", top=2, batch_size=3,
                           progress=lambda done, total: calls.append((done, total)))
    assert result["files"] == 10 and calls == [(3, 10), (6, 10), (9, 10), (10, 10)]
    rows = read_csv(tmp_path / "out.csv")
    assert list(rows[0]) == ["file", "width", "height", "class_1", "score_1", "class_2",
                             "score_2"]
    files = sorted(str(p) for p in root.rglob("*.png"))
    assert [r["file"] for r in rows] == files  # sorted, recursive, the .txt left out
    loaded = _load_run(lenet_256)
    by_index = {int(f.rsplit("/", 1)[1][:2]): r for f, r in zip(files, rows)}
    probs = eager_outputs(loaded, images)[0].softmax(1)
    for i, row in by_index.items():
        top = probs[i].topk(2)
        assert (row["width"], row["height"]) == ("28", "28")
        assert [row["class_1"], row["class_2"]] == [fm.CLASS_NAMES[int(k)] for k in top.indices]
        assert float(row["score_1"]) == pytest.approx(float(top.values[0]), abs=1e-5)
    # In batches of 3 as one file at a time: the same table.
    one_by_one = P.predict(lenet_256, files, top=2, batch_size=1)
    assert [[p["class"] for p in r["predictions"]] for r in one_by_one] == \
        [[r["class_1"], r["class_2"]] for r in rows]


def test_files_are_read_one_batch_at_a_time(lenet_256, image_tree, monkeypatch):
    root, _ = image_tree
    read = []
    original = P.read_image
    monkeypatch.setattr(P, "read_image", lambda path, *a: read.append(path) or original(path, *a))
    about, rows = P.predict_stream(lenet_256, [root], batch_size=4)
    assert about["files"] == 10 and read == []  # checked, nothing decoded yet
    next(rows)
    assert len(read) == 4
    assert len(list(rows)) == 9 and len(read) == 10


def test_segmentation_and_box_tables_name_their_columns():
    assert P.csv_columns("segmentation", 1) == ["file", "width", "height", "class_1", "share_1"]
    assert P.csv_columns("detection", 2)[3:] == ["class_1", "score_1", "box_1", "class_2",
                                                 "score_2", "box_2"]
    row = {"file": "a.png", "size": [90, 60],
           "predictions": [{"class": "Bag", "score": 0.5, "box": [1.5, 2.0, 30.0, 40.25]}]}
    assert P.csv_row(row, "detection", 2) == ["a.png", 90, 60, "Bag", "0.5", "1.5 2 30 40.25",
                                              "", "", ""]


def test_cli_csv_prints_a_summary_and_json(lenet_256, image_tree, tmp_path, capsys):
    root, _ = image_tree
    assert cli(["predict", lenet_256, root / "shoes", "--csv", tmp_path / "p.csv", "-b", "2",
                "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["files"] == 5 and result["csv"] == str(tmp_path / "p.csv")
    assert len(read_csv(tmp_path / "p.csv")) == 5


BAD = {  # id: (argv, a fragment of the one line)
    "empty folder": (["predict", "{run}", "{tmp}/empty"], "no image files in folder"),
    "missing path": (["predict", "{run}", "{tmp}/nothing"], "no image file or folder"),
    "csv is a folder": (["predict", "{run}", "{tree}", "--csv", "{tmp}/empty"], "is a folder"),
    "batch size 0": (["predict", "{run}", "{tree}", "--batch-size", "0"], "batch-size"),
    "bad file in folder": (["predict", "{run}", "{tmp}/bad", "--csv", "{tmp}/o.csv"],
                           "not an image Pillow can read"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_predict_request_is_one_line_and_writes_nothing(case, lenet_256, image_tree,
                                                            tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"not a png")
    argv, fragment = BAD[case]
    argv = [a.format(run=lenet_256, tmp=tmp_path, tree=image_tree[0]) for a in argv]
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    code = cli(argv)
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert sorted(tmp_path.rglob("*")) == before
