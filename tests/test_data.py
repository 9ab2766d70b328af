import gzip

import pytest
import torch

from cnnbench.data import fashion_mnist as fm
from cnnbench.data import transforms as T
from cnnbench.data.splits import Split, holdout, sample, sample_indices
from cnnbench.errors import CnnbenchError
from idx_files import write_fashion_mnist


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_reads_the_files_the_test_writes(tmp_path, gz):
    arrays = write_fashion_mnist(tmp_path, n_train=12, n_test=5, gz=gz)
    images, labels = fm.load_split("train", tmp_path, strict_count=False)
    assert images.dtype == torch.uint8 and images.shape == (12, 1, 28, 28)
    assert labels.dtype == torch.int64
    assert torch.equal(images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(labels, torch.from_numpy(arrays["train"][1]).long())


def test_truncated_idx_file_names_the_problem_and_the_fix(tmp_path):
    write_fashion_mnist(tmp_path, n_train=12, n_test=5, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CnnbenchError, match="truncated.*apt-get install"):
        fm.load_split("train", tmp_path, strict_count=False)


def test_damaged_gzip_and_bad_magic_are_rejected(tmp_path):
    write_fashion_mnist(tmp_path, n_train=12, n_test=5)
    gz = tmp_path / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:30])
    with pytest.raises(CnnbenchError, match="damaged"):
        fm.load_split("train", tmp_path, strict_count=False)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(8)))
    with pytest.raises(CnnbenchError, match="magic"):
        fm.load_split("test", tmp_path, strict_count=False)


def test_wrong_image_count_is_rejected_in_strict_mode(tmp_path):
    write_fashion_mnist(tmp_path, n_train=12, n_test=5)
    with pytest.raises(CnnbenchError, match="holds 12 images, not Fashion-MNIST.s 60,000"):
        fm.load_split("train", tmp_path)


def test_missing_data_says_how_to_install_it(tmp_path):
    with pytest.raises(CnnbenchError, match="dataset-fashion-mnist"):
        fm.find_dir(tmp_path / "nowhere")


@pytest.mark.skipif(not (fm.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST is not installed")
def test_installed_fashion_mnist_has_the_official_sizes():
    train_images, train_labels = fm.load_split("train", fm.DEBIAN_DIR)
    test_images, test_labels = fm.load_split("test", fm.DEBIAN_DIR)
    assert train_images.shape == (60000, 1, 28, 28) and test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train_labels).tolist() == [6000] * 10
    assert torch.bincount(test_labels).tolist() == [1000] * 10


def test_validation_split_is_fixed_disjoint_and_complete():
    split = Split(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100))
    train, val = holdout(split, 20)
    train2, val2 = holdout(split, 20)
    assert torch.equal(val.targets, val2.targets) and len(val) == 20 and len(train) == 80
    assert sorted(train.targets.tolist() + val.targets.tolist()) == list(range(100))


def test_limit_keeps_every_class_in_proportion_with_a_fixed_seed():
    """--limit 300 of 1,000 images in class order (600, 300, 90, 10) was the first 300: class 0
    alone. Now each class keeps its share, the smallest at least one image."""
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 90 + [3] * 10)
    split = Split(torch.zeros(1000, 1, 1, 1, dtype=torch.uint8), labels, [f"{i}.png" for i in
                                                                         range(1000)])
    kept = sample(split, 300)
    assert torch.bincount(kept.targets).tolist() == [180, 90, 27, 3]
    assert kept.files == [f"{i}.png" for i in sample_indices(1000, 300, labels).tolist()]
    assert torch.equal(sample(split, 300).targets, kept.targets)  # seeded: the same each time
    assert torch.bincount(sample(split, 4).targets).tolist() == [1, 1, 1, 1]  # one of each
    assert torch.bincount(sample(split, 7).targets).tolist() == [3, 2, 1, 1]
    assert sample(split, 5000) is split
    # multi-label rows stratify on their first class; other targets draw a plain seeded sample
    rows = torch.nn.functional.one_hot(labels, 4).float()
    assert torch.bincount(sample(Split(split.images, {"multi_hot": rows}), 4).targets[
        "multi_hot"].argmax(1)).tolist() == [1, 1, 1, 1]
    assert len(sample(Split(split.images, {"boxes": torch.zeros(1000, 4)}), 10)) == 10


def test_load_bundle_holds_out_validation_and_applies_limit(tmp_path):
    write_fashion_mnist(tmp_path, n_train=40, n_test=10)
    data = fm.load_bundle(tmp_path, val_size=8, limit=20)
    assert (len(data.train), len(data.val), len(data.test)) == (20, 8, 10)
    assert data.class_names[0] == "T-shirt/top"


def test_shift_matches_padding_then_cropping():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    dy, dx = torch.tensor([2, -1]), torch.tensor([-2, 0])
    shifted = T.shift(x, dy, dx, padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        top, left = 2 - int(dy[i]), 2 - int(dx[i])
        assert torch.equal(shifted[i], padded[i, :, top:top + 6, left:left + 6])


def test_hflip_flips_exactly_the_images_it_reports():
    x = torch.rand(16, 1, 4, 5)
    flipped, which = T.random_hflip(x)
    assert torch.equal(flipped[which], x[which].flip(-1))
    assert torch.equal(flipped[~which], x[~which])


def test_random_erasing_fills_one_rectangle_per_image():
    x = torch.ones(8, 1, 20, 20)
    erased = T.random_erasing(x, p=1.0)
    for img in erased[:, 0]:
        rows, cols = (img == 0).nonzero(as_tuple=True)
        assert len(rows) > 0
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == len(rows)  # the zeros form a full rectangle
    assert torch.equal(T.random_erasing(x, p=0.0), x)


def test_resize_reaches_the_models_input_size():
    x = T.to_float(torch.full((3, 1, 28, 28), 255, dtype=torch.uint8))
    assert T.resize(x, (96, 96)).shape == (3, 1, 96, 96)
    assert torch.allclose(T.resize(x, (224, 224)), torch.ones(3, 1, 224, 224))
