"""Fashion-MNIST scenes, box/mask-aware augmentation and the Pascal VOC reader."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from cnnbench.data import scenes as S
from cnnbench.data.dense_transforms import random_affine
from cnnbench.errors import CnnbenchError


@pytest.fixture(scope="module")
def items():
    """40 synthetic 28x28 'items' (a bright blob with a dark hole) and their labels."""
    g = torch.Generator().manual_seed(1)
    img = torch.zeros(40, 1, 28, 28, dtype=torch.uint8)
    for i in range(40):
        h, w = torch.randint(8, 26, (2,), generator=g).tolist()
        y, x = (28 - h) // 2, (28 - w) // 2
        img[i, 0, y:y + h, x:x + w] = 200
        img[i, 0, 13:15, 13:15] = 0
    return img, torch.arange(40) % 10


def test_scene_generator_is_deterministic(items):
    params = S.SceneParams(count=64, size=64)
    a, b = S.generate(params, *items), S.generate(params, *items, chunk=7)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    other = S.generate(S.SceneParams(count=64, size=64, seed=1), *items)
    assert not torch.equal(a["images"], other["images"])
    assert params.key() != S.SceneParams(count=64, size=64, seed=1).key()


def test_scene_boxes_are_tight_and_masks_match(items):
    out = S.generate(S.SceneParams(count=100, size=64), *items, return_instances=True)
    n, k = out["labels"].shape
    assert out["images"].shape == (100, 1, 64, 64) and out["masks"].shape == (100, 64, 64)
    counts = (out["labels"] >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 4
    for i in range(n):
        for j in range(k):
            visible = out["instances"][i] == j + 1
            if out["labels"][i, j] < 0:
                assert not visible.any() and out["boxes"][i, j].eq(0).all()
                continue
            ys, xs = torch.nonzero(visible, as_tuple=True)
            tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            assert torch.equal(out["boxes"][i, j], tight)
            assert (out["masks"][i][visible] == out["labels"][i, j] + 1).all()
        # The mask is the union of the visible items; the image is dark elsewhere.
        assert torch.equal(out["masks"][i] > 0, out["instances"][i] > 0)
        assert out["images"][i, 0][out["masks"][i] == 0].max() <= S.SceneParams.threshold
        present = set(out["labels"][i][out["labels"][i] >= 0].tolist())
        assert set(out["multi_hot"][i].nonzero().flatten().tolist()) == present


def test_scenes_are_cached_on_disk(tmp_path, monkeypatch, items):
    monkeypatch.setattr(S.fashion_mnist, "load_split", lambda split, data_dir=None, strict_count=True: items)
    params = S.SceneParams(split="test", count=16, size=48)
    first = S.load_scenes(params, cache_dir=tmp_path)
    assert (tmp_path / f"{params.key()}.pt").is_file()
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(S, "generate", lambda *a, **k: pytest.fail("drew the scenes again"))
    again = S.load_scenes(params, cache_dir=tmp_path)
    assert torch.equal(first["images"], again["images"])


def test_scenes_come_from_their_split(fmnist_dir):
    from cnnbench.data import fashion_mnist

    test_items = fashion_mnist.load_split("test", fmnist_dir, strict_count=False)
    out = S.generate(S.SceneParams(split="test", count=8), *test_items)
    assert out["images"].shape == (8, 1, 96, 96) and out["images"].max() > 100


def test_augmentation_moves_boxes_and_masks_with_the_pixels():
    n, size = 16, 64
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    images[:, :, 10:30, 20:50] = 255
    masks[:, 10:30, 20:50] = 3
    images[:, :, 40:60, 5:15] = 255
    masks[:, 40:60, 5:15] = 7
    boxes = torch.tensor([[20.0, 10, 50, 30], [5, 40, 15, 60]]).expand(n, 2, 4).clone()
    labels = torch.tensor([2, 6]).expand(n, 2).clone()
    g = torch.Generator().manual_seed(0)
    out, b, lab, m = random_affine(images, boxes, labels, masks, flip=0.5, scale=(0.8, 1.25),
                                   translate=0.1, generator=g)
    flipped = 0
    for i in range(n):
        for j, cls in enumerate((3, 7)):
            region = m[i] == cls
            if lab[i, j] < 0:
                continue
            ys, xs = torch.nonzero(region, as_tuple=True)
            tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            assert (b[i, j] - tight).abs().max() <= 1.0  # the box follows the mask
            assert (out[i, 0][region] > 127).float().mean() > 0.95  # the mask follows the pixels
        if lab[i, 1] >= 0:
            flipped += bool(b[i, 1, 0] + b[i, 1, 2] > 64)  # the left box went to the right
    assert (out[:, 0] > 127).eq(m > 0).float().mean() > 0.99
    assert 0 < flipped < n


def test_augmentation_drops_boxes_pushed_out_of_the_image():
    images = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 4.0]]])
    _, b, lab, _ = random_affine(images, boxes, torch.tensor([[1]]), flip=0.0, scale=(2.0, 2.0),
                                 translate=0.0)
    assert lab.tolist() == [[-1]] and b.eq(0).all()  # zoomed 2x about the centre: out of view


# --- Pascal VOC on a tiny VOC-layout folder ---

def _write_voc(root):
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation",
                "SegmentationClass"):
        (voc / sub).mkdir(parents=True)
    names = ["000001", "000002", "000003", "000004", "000005"]
    for k, name in enumerate(names):
        Image.fromarray(np.full((50, 100, 3), 40 * k, dtype=np.uint8)).save(
            voc / "JPEGImages" / f"{name}.jpg")
        ann = ET.Element("annotation")
        ET.SubElement(ann, "filename").text = f"{name}.jpg"
        size = ET.SubElement(ann, "size")
        for tag, v in (("width", 100), ("height", 50), ("depth", 3)):
            ET.SubElement(size, tag).text = str(v)
        for cls, box, difficult in (("dog", (11, 6, 60, 45), 0), ("person", (1, 1, 10, 10), 1),
                                    ("car", (51, 26, 100, 50), 0))[:min(k, 2) + 1]:
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = cls
            ET.SubElement(obj, "difficult").text = str(difficult)
            bb = ET.SubElement(obj, "bndbox")
            for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bb, tag).text = str(v)
        ET.ElementTree(ann).write(voc / "Annotations" / f"{name}.xml")
        mask = np.zeros((50, 100), dtype=np.uint8)
        mask[5:45, 10:60] = 12  # dog
        mask[4, 10:60] = 255  # void outline
        seg = Image.fromarray(mask, mode="P")
        seg.putpalette([0, 0, 0] * 256)
        seg.save(voc / "SegmentationClass" / f"{name}.png")
    for kind in ("Main", "Segmentation"):
        (voc / "ImageSets" / kind / "train.txt").write_text("\n".join(names[:2] + names[3:]))
        (voc / "ImageSets" / kind / "val.txt").write_text(names[2] + "\n")
    return voc


def test_voc_detection_reads_boxes_scaled_to_the_image(tmp_path):
    from cnnbench.data import voc

    _write_voc(tmp_path)
    images, targets = voc.load_detection(tmp_path / "VOCdevkit", "train", 64, limit=2)
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.uint8
    # Image 2 has a dog and a difficult person (left out): one box each, no padding needed.
    assert targets["labels"].tolist() == [[voc.VOC_CLASSES.index("dog")]] * 2
    _, targets = voc.load_detection(tmp_path / "VOCdevkit", "train", 64)
    dog, car = voc.VOC_CLASSES.index("dog"), voc.VOC_CLASSES.index("car")
    assert targets["labels"].tolist() == [[dog, -1], [dog, -1], [dog, car], [dog, car]]
    # VOC's 1-based inclusive (11, 6, 60, 45) on 100x50 -> pixel edges (10, 5, 60, 45) x 0.64/1.28.
    expected = torch.tensor([10 * 0.64, 5 * 1.28, 60 * 0.64, 45 * 1.28])
    torch.testing.assert_close(targets["boxes"][0, 0], expected)
    assert voc.splits(tmp_path, "Main") == ("train", "val")


def test_voc_segmentation_keeps_labels_and_void(tmp_path):
    from cnnbench.data import voc

    _write_voc(tmp_path)
    images, targets = voc.load_segmentation(tmp_path / "VOCdevkit" / "VOC2007", "val", 50)
    masks = targets["masks"]
    assert images.shape == (1, 3, 50, 50) and masks.shape == (1, 50, 50)
    assert set(masks.unique().tolist()) == {0, 12, 255}


def test_missing_voc_is_one_clear_error(tmp_path):
    from cnnbench.data import voc

    with pytest.raises(CnnbenchError, match="VOCdevkit/VOC2007"):
        voc.load_detection(tmp_path / "nowhere", "train", 64)
