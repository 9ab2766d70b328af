"""The dense tasks through the shared trainer: two training steps and every run artefact.

Tiny widths and sizes keep each run to seconds; the real recipes are experiments/<model>.yaml.
Scenes are drawn from the synthetic IDX files of ``fmnist_dir`` (conftest.py): no real data.
"""

import json

import pytest
import torch

from cnnbench import recipe as cfg
from cnnbench.errors import CnnbenchError
from cnnbench.training.build import build_trainer

from test_scenes import _write_voc

pytestmark = pytest.mark.usefixtures("scene_cache")


TINY = {"limit": 8, "val_size": 4, "epochs": 1, "batch_size": 4, "log_graph": False}
SMALL_FPN = {"layers": [1, 1, 1, 1], "out_channels": 16}
CASES = {
    # model: (model_args, extra config, the test metrics the run must report)
    "unet": ({"width": 4}, {}, ("miou", "pixel_acc")),
    "fpn-seg": ({**SMALL_FPN, "channels": 16}, {"scene_size": 32, "input_size": 32},
                ("miou",)),
    "ssd-resnet": ({"width": 4, "head_channels": 16}, {}, ("map50", "map")),
    "fpn": ({**SMALL_FPN, "head": "retinanet"},
            {"task": "detection", "scene_size": 32, "input_size": "1x32x32"}, ("map50", "map")),
    "single-object": ({"width": 4}, {}, ("acc", "box_iou")),
    "multi-label": ({"width": 4}, {}, ("f1", "map")),
}


def _run(model, model_args, extra, run_dir, data_dir=None):
    data = {"data": str(data_dir)} if data_dir else {}
    overrides = {**TINY, **data, **extra, "model_args": model_args}
    config = cfg.resolve(model, None, overrides)
    trainer = build_trainer(config, run_dir)
    results = trainer.fit()
    return trainer, results


@pytest.mark.parametrize("model", list(CASES))
def test_dense_model_takes_two_steps_and_writes_its_run(model, tmp_path, fmnist_dir):
    model_args, extra, metrics = CASES[model]
    trainer, results = _run(model, model_args, extra, tmp_path / "run", fmnist_dir)
    run = tmp_path / "run"
    assert trainer.schedule.last_epoch == 2  # 8 training scenes in batches of 4
    for path in ("config.yaml", "metrics.jsonl", "results.json", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run / path).is_file(), path
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["train_loss"]))
    saved = json.loads((run / "results.json").read_text())
    for name in metrics:
        assert f"test_{name}" in saved, name
    assert saved["task"] == trainer.task.name


def test_detection_images_are_drawn(tmp_path, fmnist_dir):
    from torch.utils.tensorboard import SummaryWriter

    trainer, _ = _run("ssd-resnet", {"width": 4, "head_channels": 16}, {}, tmp_path / "run",
                      fmnist_dir)
    images, targets = trainer.test_split.take(slice(0, 4))
    output, y = trainer.predict(images, targets)
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        trainer.task.log_images(writer, 1, images, output, y)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("model,model_args", [("ssd-resnet", {"width": 4, "head_channels": 16}),
                                              ("unet", {"width": 4})])
def test_voc_data_trains_a_colour_model(model, model_args, tmp_path):
    _write_voc(tmp_path / "voc")
    extra = {"data": f"voc:{tmp_path / 'voc'}", "limit": 4, "val_size": 1, "batch_size": 2,
             "input_size": "3x64x64"}
    trainer, results = _run(model, model_args, extra, tmp_path / "run")
    assert trainer.task.context.num_classes == 20 and trainer.task.context.channels == 3
    assert trainer.train_split.images.shape[1:] == (3, 64, 64)
    assert (tmp_path / "run" / "results.json").is_file()


def test_missing_voc_folder_is_a_clear_error(tmp_path):
    config = cfg.resolve("unet", None, {**TINY, "data": f"voc:{tmp_path / 'none'}"})
    with pytest.raises(CnnbenchError, match="VOCdevkit"):
        build_trainer(config, tmp_path / "run")


def test_segmentation_iou_hand_computed():
    from cnnbench.tasks.metrics import confusion_matrix, iou_from_confusion

    true = torch.tensor([0, 0, 1, 1, 2, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 2, 0, 2])  # the void pixel (255) is not counted
    cm = confusion_matrix(pred, true, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    iou = iou_from_confusion(cm)
    # class 0: 1 / (2 + 2 - 1); class 1: 2 / (2 + 3 - 2); class 2: 1 / (2 + 1 - 1)
    torch.testing.assert_close(iou, torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))


def test_label_average_precision_hand_computed():
    from cnnbench.tasks.metrics import f1_per_class, label_average_precision

    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2]])
    truth = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    ap = label_average_precision(scores, truth)
    assert ap[0].item() == pytest.approx((1 + 2 / 3) / 2)  # hits at ranks 1 and 3
    assert torch.isnan(ap[1])  # no positive image
    f1 = f1_per_class(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([1.0]))
    assert f1.item() == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_largest_object_ignores_padding():
    from cnnbench.tasks.single_object import largest_object

    boxes = torch.tensor([[[0, 0, 0.2, 0.2], [0.1, 0.1, 0.6, 0.5], [0, 0, 1, 1]]])
    box, label = largest_object(boxes, torch.tensor([[3, 7, -1]]))
    assert label.tolist() == [7] and torch.equal(box, boxes[:, 1])


def test_ssd_loss_counts_only_the_hardest_negatives():
    from torch.nn import functional as F

    from cnnbench.tasks.detection import ssd_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 20, 3, generator=g)
    cls_target = torch.zeros(1, 20, dtype=torch.long)
    cls_target[0, 4] = 2
    offsets = torch.zeros(1, 20, 4)
    box_target = torch.zeros(1, 20, 4)
    box_target[0, 4] = torch.tensor([0.5, 0.0, 0.0, 0.0])
    loc, cls = ssd_loss(logits, offsets, cls_target, box_target, neg_ratio=3.0)
    ce = F.cross_entropy(logits[0], cls_target[0], reduction="none")
    negatives = torch.cat((ce[:4], ce[5:])).sort(descending=True).values
    # One object: max(3 x 1, 8) = 8 negatives, the ones with the largest loss.
    assert cls.item() == pytest.approx((ce[4] + negatives[:8].sum()).item(), rel=1e-5)
    assert loc.item() == pytest.approx(0.5 * 0.5 ** 2)  # smooth-L1 (beta 1) of 0.5


@pytest.mark.parametrize("kind", ["smooth_l1", "l1"])
def test_box_loss_by_mask_trains_exactly_as_by_index(kind):
    """The box loss sums under a mask (no host sync) instead of indexing ``pred[pos]``: the
    gradient is bitwise the same; the sum may differ in its last bit (another adding order)."""
    from torch.nn import functional as F

    from cnnbench.tasks.detection import _box_loss

    g = torch.Generator().manual_seed(1)
    pred = torch.randn(4, 50, 4, generator=g, requires_grad=True)
    target = torch.randn(4, 50, 4, generator=g)
    pos = torch.rand(4, 50, generator=g) < 0.1
    pos[0] = False  # an image with no matched anchor
    loss_fn = F.l1_loss if kind == "l1" else F.smooth_l1_loss
    old = loss_fn(pred[pos], target[pos], reduction="sum")
    (old_grad,) = torch.autograd.grad(old, pred)
    new = _box_loss(pred, target, pos, kind)
    (new_grad,) = torch.autograd.grad(new, pred)
    assert torch.equal(new_grad, old_grad) and (new_grad[~pos] == 0).all()
    torch.testing.assert_close(new, old, rtol=1e-6, atol=0)
