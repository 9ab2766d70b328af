"""Your own data: ``imagefolder:PATH`` and ``cifar10:PATH`` on tiny trees and batches made here."""

import json
import os
import pickle
import threading

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnbench import recipe as cfg
from cnnbench.data import cifar10, imagefolder, images
from cnnbench.data.sources import load_data, parse_data
from cnnbench.errors import CnnbenchError
from cnnbench.tasks.classification import Classification
from cli_run import cli


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every cache entry goes to this test's folder; a tiny tree counts as large."""
    monkeypatch.setenv("CNNBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(imagefolder, "CACHE_FROM", 0)
    return tmp_path / "cache"


def pixels(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_tree(root, splits=(("train", 4), ("val", 2), ("test", 2)),
               classes=("dog", "cat", "eel"), shape=(28, 28, 3)) -> dict:
    """``root/split/class/NN.png`` of random pixels; returns ``{split: [(array, label)]}`` in
    the order the loader reads them (classes sorted, files sorted)."""
    written = {}
    for s, (split, n) in enumerate(splits):
        rows = []
        for label, name in enumerate(sorted(classes)):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                array = pixels(1000 * s + 100 * label + i, shape)
                Image.fromarray(array).save(folder / f"{i:02d}.png")
                rows.append((array, label))
        written[split] = rows
    return written


def chw(array: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(array))
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)


def resolved(data, model="lenet", **overrides) -> dict:
    return cfg.resolve(model, None, {"data": str(data), **overrides})


def test_a_tree_loads_exact_pixels_with_sorted_class_names(tmp_path):
    written = write_tree(tmp_path / "tree")
    config = resolved(f"imagefolder:{tmp_path / 'tree'}")
    data = load_data(config, Classification)
    assert data.class_names == ["cat", "dog", "eel"]
    for split in ("train", "val", "test"):
        part = getattr(data, split)
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (3, 28, 28)
        assert torch.equal(part.images, torch.stack([chw(a) for a, _ in written[split]]))
        assert part.targets.tolist() == [label for _, label in written[split]]
    assert config["input_size"] == [3, 28, 28]  # a colour folder builds a colour LeNet


def test_own_images_are_normalised_with_their_own_channel_statistics(tmp_path, fmnist_dir):
    from cnnbench.models import get_model_info

    write_tree(tmp_path / "tree")
    config = resolved(f"imagefolder:{tmp_path / 'tree'}")
    data = load_data(config, Classification)
    context = Classification.setup(config, data, get_model_info("lenet"))
    x = data.train.images.float() / 255
    assert context.mean == pytest.approx(x.mean((0, 2, 3)).tolist())
    assert context.std == pytest.approx(x.std((0, 2, 3)).tolist())
    # the built-in data keep the published Fashion-MNIST statistics (the book's recipes)
    fm = resolved(fmnist_dir, limit=32, val_size=16)
    fm_context = Classification.setup(fm, load_data(fm, Classification), get_model_info("lenet"))
    assert fm_context.mean == (0.2860,) and fm_context.std == (0.3530,)


def test_images_are_resized_to_the_models_input_with_pillows_bilinear(tmp_path):
    written = write_tree(tmp_path / "tree", splits=(("train", 2),), shape=(40, 30, 3))
    data = load_data(resolved(tmp_path / "tree", val_size=0), Classification)
    expected = Image.fromarray(written["train"][0][0]).resize((28, 28), Image.Resampling.BILINEAR)
    assert data.train.images.shape[1:] == (3, 28, 28)
    assert torch.equal(data.train.images[0], chw(np.asarray(expected)))


def test_channels_the_user_sets_convert_the_images(tmp_path):
    colour = write_tree(tmp_path / "colour", splits=(("train", 2),))
    config = resolved(tmp_path / "colour", val_size=0, model_args={"in_channels": 1})
    data = load_data(config, Classification)
    grey = np.asarray(Image.fromarray(colour["train"][0][0]).convert("L"))
    assert torch.equal(data.train.images[0], chw(grey)) and config["input_size"][0] == 1
    greys = write_tree(tmp_path / "grey", splits=(("train", 2),), shape=(28, 28))
    config = resolved(tmp_path / "grey", val_size=0, input_size="3x28x28")
    data = load_data(config, Classification)
    assert torch.equal(data.train.images[0], chw(greys["train"][0][0]).expand(3, -1, -1))


def test_a_grey_folder_keeps_a_grey_model_grey(tmp_path):
    written = write_tree(tmp_path / "grey", splits=(("train", 2),), shape=(28, 28))
    config = resolved(tmp_path / "grey", val_size=0)
    data = load_data(config, Classification)
    assert data.train.images.shape[1] == 1 and config["input_size"] == [1, 28, 28]
    assert torch.equal(data.train.images[-1], chw(written["train"][-1][0]))


def test_other_files_are_ignored_and_extensions_are_case_blind(tmp_path):
    written = write_tree(tmp_path / "tree", splits=(("train", 2),), shape=(28, 28))
    (tmp_path / "tree" / "train" / "cat" / "notes.txt").write_text("not a picture")
    (tmp_path / "tree" / "train" / "cat" / ".hidden.png").write_bytes(b"junk")
    Image.fromarray(written["train"][0][0]).save(tmp_path / "tree" / "train" / "dog" / "z.PNG")
    data = load_data(resolved(tmp_path / "tree", val_size=0), Classification)
    everything = torch.cat([data.train.images, data.test.images])  # 7 images: 1 held out
    assert sorted(torch.cat([data.train.targets, data.test.targets]).tolist()) == \
        [0, 0, 1, 1, 1, 2, 2]
    assert (everything == chw(written["train"][0][0])).flatten(1).all(1).sum() == 2


def test_16_bit_grey_keeps_its_top_byte(tmp_path):
    deep = (np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 83)
    (tmp_path / "tree" / "a").mkdir(parents=True)
    Image.fromarray(deep).save(tmp_path / "tree" / "a" / "deep.png")
    (tmp_path / "tree" / "b").mkdir()
    Image.fromarray(deep).save(tmp_path / "tree" / "b" / "deep.png")
    data = load_data(resolved(tmp_path / "tree", val_size=0), Classification)
    assert torch.equal(data.train.images[0, 0], torch.from_numpy((deep >> 8).astype(np.uint8)))


def test_missing_val_and_test_are_held_out_of_train_a_fifth_each(tmp_path):
    write_tree(tmp_path / "flat", splits=((None, 10),), classes=("a", "b"))
    config = resolved(tmp_path / "flat")  # val_size 5000: capped at 20 // 5
    first, again = (load_data(dict(config), Classification) for _ in range(2))
    assert (len(first.train), len(first.val), len(first.test)) == (12, 4, 4)
    rows = {tuple(x.flatten().tolist()) for part in (first.train, first.val, first.test)
            for x in part.images}
    assert len(rows) == 20  # disjoint, and every image is somewhere
    assert torch.equal(first.test.images, again.test.images)
    no_val = load_data(resolved(tmp_path / "flat", val_size=0), Classification)
    assert (len(no_val.train), len(no_val.val), len(no_val.test)) == (16, 0, 4)


def test_limit_decodes_only_the_images_it_uses(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree", splits=(("train", 10), ("test", 5)))
    monkeypatch.setattr(imagefolder, "CACHE_FROM", 10**9)
    read = []
    real = images.read_image
    monkeypatch.setattr(images, "read_image", lambda p, *a: read.append(p) or real(p, *a))
    data = load_data(resolved(tmp_path / "tree", limit=2, val_size=3), Classification)
    assert (len(data.train), len(data.val), len(data.test)) == (2, 2, 2) and len(read) == 6


def test_a_second_load_reads_the_cache_and_a_changed_file_is_read_again(tmp_path, monkeypatch,
                                                                        own_cache):
    write_tree(tmp_path / "tree", splits=(("train", 3), ("test", 1)))
    config = resolved(tmp_path / "tree", val_size=2)
    first = load_data(dict(config), Classification)
    assert len(list((own_cache / "imagefolder").glob("*.pt"))) == 1
    real = images.read_image

    def refuse(*args):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(images, "read_image", refuse)
    second = load_data(dict(config), Classification)
    assert torch.equal(first.train.images, second.train.images)
    changed = tmp_path / "tree" / "train" / "cat" / "00.png"
    Image.fromarray(np.full((28, 28, 3), 7, np.uint8)).save(changed)
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_data(dict(config), Classification)
    monkeypatch.setattr(images, "read_image", real)
    third = load_data(dict(config), Classification)
    everything = torch.cat([third.train.images, third.val.images])
    assert (everything == 7).flatten(1).all(1).sum() == 1
    assert len(list((own_cache / "imagefolder").glob("*.pt"))) == 1  # the stale entry went


def test_large_files_decode_in_threads_to_the_same_pixels(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree", splits=(("train", 6),), shape=(40, 30, 3))
    config = resolved(tmp_path / "tree", val_size=0, skip_bad_images=False)
    alone = load_data(dict(config), Classification)
    monkeypatch.setattr(imagefolder, "CACHE_FROM", 10**9)
    monkeypatch.setattr(images, "THREADS_FROM_BYTES", 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # threads even on a 1-core machine
    threads = []
    real = images.read_image
    monkeypatch.setattr(images, "read_image",
                        lambda *a: threads.append(threading.get_ident()) or real(*a))
    threaded = load_data(dict(config), Classification)
    assert torch.equal(alone.train.images, threaded.train.images)
    assert threading.get_ident() not in threads


def test_a_slow_load_shows_a_bar_and_a_quick_one_none(monkeypatch):
    started = []

    class Bar:
        task_ids = [0]

        def update(self, task, completed):
            started.append(completed)

        def stop(self):
            started.append("stopped")

    monkeypatch.setattr(images, "_start_bar", lambda total, label: Bar())
    assert list(images.progress(range(200), 200, "x")) == list(range(200)) and not started
    monkeypatch.setattr(images, "PROGRESS_AFTER_S", 0.0)
    assert list(images.progress(range(200), 200, "x")) == list(range(200))
    assert started == [64, 128, 192, 200, "stopped"]


def test_bare_folders_are_read_by_the_source_whose_layout_they_have(tmp_path, fmnist_dir):
    write_tree(tmp_path / "tree", splits=(("train", 1),))
    write_cifar(tmp_path / "c")
    assert parse_data(str(tmp_path / "tree"), "fashion-mnist") == ("imagefolder",
                                                                  str(tmp_path / "tree"))
    assert parse_data(str(tmp_path / "c"), "fashion-mnist") == ("cifar10", str(tmp_path / "c"))
    assert parse_data(str(fmnist_dir), "fashion-mnist") == ("fashion-mnist", str(fmnist_dir))
    with pytest.raises(CnnbenchError, match="'imagefolders' is not a data source \\(did you "
                                            "mean imagefolder.*the sources are fashion-mnist"):
        parse_data("imagefolders:x", "fashion-mnist")


# --- CIFAR-10 -----------------------------------------------------------------------------

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck"]


def write_cifar(root, per_batch=4) -> dict:
    """``root/cifar-10-batches-py`` with batches of ``per_batch`` images, pickled (protocol 2)
    as the real files are: ``{"data": uint8 [N, 3072], "labels": [...]}``."""
    folder = root / cifar10.FOLDER
    folder.mkdir(parents=True)
    batches = {}
    for b, name in enumerate((*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH)):
        data = pixels(b, (per_batch, 3072))
        labels = [(b + i) % 10 for i in range(per_batch)]
        (folder / name).write_bytes(pickle.dumps({"batch_label": name, "data": data,
                                                  "labels": labels}, protocol=2))
        batches[name] = (data, labels)
    (folder / cifar10.META).write_bytes(pickle.dumps({"label_names": NAMES}, protocol=2))
    return batches


def test_cifar_batches_load_as_torchvision_reads_them(tmp_path):
    batches = write_cifar(tmp_path)
    for path in (tmp_path, tmp_path / cifar10.FOLDER):  # the root or the batches folder
        data = load_data(resolved(f"cifar10:{path}", val_size=0, input_size=32), Classification)
        train = np.concatenate([batches[n][0] for n in cifar10.TRAIN_BATCHES])
        assert torch.equal(data.train.images, torch.from_numpy(train).reshape(-1, 3, 32, 32))
        assert data.train.targets.tolist() == sum((batches[n][1]
                                                   for n in cifar10.TRAIN_BATCHES), [])
        assert len(data.test) == 4 and data.class_names == NAMES


def test_cifar_is_fitted_to_lenet_through_pillow_and_cached(tmp_path, own_cache):
    batches = write_cifar(tmp_path)
    config = resolved(f"cifar10:{tmp_path}", val_size=4)
    data = load_data(config, Classification)
    first = batches[cifar10.TEST_BATCH][0][0].reshape(3, 32, 32).transpose(1, 2, 0)
    expected = Image.fromarray(first).resize((28, 28), Image.Resampling.BILINEAR)
    assert torch.equal(data.test.images[0], chw(np.asarray(expected)))
    assert config["input_size"] == [3, 28, 28] and len(data.val) == 4
    assert len(list((own_cache / "cifar10").glob("*.pt"))) == 1
    grey = load_data(resolved(f"cifar10:{tmp_path}", input_size=32,
                              model_args={"in_channels": 1}), Classification)
    assert torch.equal(grey.test.images[0], chw(np.asarray(Image.fromarray(first).convert("L"))))


def test_a_cifar_pickle_that_asks_for_code_is_refused(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / cifar10.FOLDER / "data_batch_3").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(CnnbenchError, match="data_batch_3 is not a CIFAR-10 python batch .*"
                                            "system, which is refused"):
        load_data(resolved(f"cifar10:{tmp_path}"), Classification)
    assert not marker.exists()


# --- through the CLI ----------------------------------------------------------------------



def train_argv(data, run_dir, *extra):
    return ["train", "lenet", "--data", str(data), "--epochs", "1", "--batch-size", "8",
            "--run-dir", str(run_dir), "-q", *extra]


def test_train_and_resume_lenet_on_an_image_folder_end_to_end(tmp_path, capsys):
    write_tree(tmp_path / "tree", splits=(("train", 6), ("test", 2)), shape=(32, 32, 3))
    assert cli(train_argv(f"imagefolder:{tmp_path / 'tree'}", tmp_path / "run")) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["input_size"] == [3, 28, 28] and config["data"].startswith("imagefolder:")
    assert 0.0 <= results["test_acc"] <= 1.0
    assert list(results["report"]["per_class_acc"]) == ["cat", "dog", "eel"]
    assert sum(map(sum, results["report"]["confusion_matrix"])) == 6  # test/: 2 per class
    # A resumed run reads the folder again and builds the same colour model.
    assert cli(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "-q"]) == 0
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def damage(kind, root):
    """A tree with one kind of problem; returns the ``--data`` value and a message fragment."""
    if kind == "missing folder":
        return f"imagefolder:{root / 'nowhere'}", "no image folder at"
    if kind == "unknown source":
        return "myimgs:foo", "'myimgs' is not a data source"
    write_tree(root / "tree", splits=(("train", 2), ("val", 1)))
    if kind == "empty class folder":
        (root / "tree" / "train" / "fox").mkdir()
        return f"imagefolder:{root / 'tree'}", "class folder"
    if kind == "corrupt png":
        bad = root / "tree" / "train" / "cat" / "01.png"
        bad.write_bytes(bad.read_bytes()[:60])
        return f"imagefolder:{root / 'tree'}", f"cannot read image {bad}"
    if kind == "empty train folder":
        for p in sorted((root / "tree" / "train").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        return f"imagefolder:{root / 'tree'}", "train has no class folders"
    if kind == "val class not in train":
        (root / "tree" / "val" / "fox").mkdir()
        Image.fromarray(pixels(0, (8, 8, 3))).save(root / "tree" / "val" / "fox" / "a.png")
        return f"imagefolder:{root / 'tree'}", "class folder 'fox', which"
    if kind == "cifar batch missing":
        write_cifar(root / "c")
        (root / "c" / cifar10.FOLDER / "data_batch_5").unlink()
        return f"cifar10:{root / 'c'}", "lacks data_batch_5"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing folder", "unknown source", "empty class folder",
                                  "corrupt png", "empty train folder", "val class not in train",
                                  "cifar batch missing"])
def test_bad_data_is_one_line_exit_2_and_leaves_nothing(kind, tmp_path, capsys, monkeypatch,
                                                        own_cache):
    data, fragment = damage(kind, tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the default runs/ would be made here
    capsys.readouterr()
    code = cli(train_argv(data, work / "run"))
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert not list(work.iterdir())
    assert not [p for p in own_cache.rglob("*") if p.is_file()]  # no entry, no temporary file


def test_skip_bad_images_names_each_skipped_file_and_trains(tmp_path, capsys):
    write_tree(tmp_path / "tree", splits=(("train", 4), ("test", 1)))
    bad = tmp_path / "tree" / "train" / "dog" / "02.png"
    bad.write_bytes(b"not a png at all")
    argv = train_argv(f"imagefolder:{tmp_path / 'tree'}", tmp_path / "run", "--set",
                      "skip_bad_images=true", "--set", "val_size=2")
    capsys.readouterr()
    assert cli(argv) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped {bad} (cannot identify image file" in err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_acc"] >= 0


def test_limit_keeps_every_class_of_a_folder_in_every_split(tmp_path):
    """The issue's report: --limit on a folder kept the first files in class order."""
    write_tree(tmp_path / "tree", splits=(("train", 12), ("val", 4), ("test", 4)),
               classes=tuple("abcdefghi"), shape=(8, 8, 3))
    for mode in ("memory", "stream"):
        data = load_data(resolved(f"imagefolder:{tmp_path / 'tree'}", limit=9, data_mode=mode),
                         Classification)
        for split in (data.train, data.val, data.test):
            assert sorted(split.targets.tolist()) == list(range(9)), (mode, split.targets)
            assert [int(f.split("/")[-2] == data.class_names[t]) for f, t in
                    zip(split.files, split.targets.tolist())] == [1] * 9


def test_eval_names_the_file_of_each_top_loss(tmp_path, capsys):
    write_tree(tmp_path / "tree", splits=(("train", 6), ("test", 2)), shape=(32, 32, 3))
    assert cli(train_argv(f"imagefolder:{tmp_path / 'tree'}", tmp_path / "run")) == 0
    capsys.readouterr()
    assert cli(["eval", tmp_path / "run", "--json"]) == 0
    worst = json.loads(capsys.readouterr().out)["top_losses"]
    test = sorted(str(p) for p in (tmp_path / "tree" / "test").rglob("*.png"))
    assert len(worst) == 6 and sorted(w["file"] for w in worst) == test
    for w in worst:  # the file is the image the row is about: its folder is its class
        assert os.path.basename(os.path.dirname(w["file"])) == w["actual"]
        assert w["file"] == test[w["index"]]
    assert cli(["eval", tmp_path / "run"]) == 0
    table = capsys.readouterr().out.split("Top losses")[1]
    assert "file" in table.splitlines()[2] and str(tmp_path / "tree" / "test") in table


def kinds_of_file(folder) -> dict:
    """One 40x30 picture saved as each kind of file an image folder may hold."""
    rgb = pixels(7, (30, 40, 3))
    deep = (np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)
    made = {"grey.png": Image.fromarray(rgb[..., 0]), "grey16.png": Image.fromarray(deep),
            "rgb.png": Image.fromarray(rgb),
            "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
            "palette.png": Image.fromarray(rgb).quantize(16), "photo.jpg": Image.fromarray(rgb)}
    for name, image in made.items():
        image.save(folder / name)
    return made


@pytest.mark.parametrize("channels", [1, 3])
def test_predict_reads_every_kind_of_file_to_the_tensor_training_reads(tmp_path, channels):
    from cnnbench.predict import read_image

    kinds = kinds_of_file(tmp_path)
    for name in kinds:
        tree = tmp_path / name.replace(".", "-")
        for label in ("a", "b"):
            (tree / label).mkdir(parents=True)
            (tree / label / name).write_bytes((tmp_path / name).read_bytes())
        config = resolved(tree, val_size=0, input_size=[channels, 28, 28])
        trained = load_data(config, Classification).train.images[0]
        # a grey model takes colour files in colour: the run's channels are the data's
        predicted, size = read_image(tmp_path / name, trained.shape[0], (28, 28))
        assert torch.equal(predicted, trained), name
        assert size == (40, 30)


def test_a_16_bit_grey_png_has_the_same_mean_in_training_and_predict(tmp_path):
    """The defect: predict read a 16-bit grey PNG to a mean pixel of 254.5 (Pillow's ``L``
    conversion clips), training to 127.5 (its top byte)."""
    from cnnbench.predict import read_image

    ramp = np.arange(256 * 256, dtype=np.uint32).reshape(256, 256).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    predicted, _ = read_image(tmp_path / "ramp.png", 1, (256, 256))
    trained = images.read_image(tmp_path / "ramp.png", (256, 256), 1)
    assert predicted.double().mean() == 127.5 == trained.mean()
