"""Metric classes against hand-computed values; the loss mean is weighted by batch size."""

import math

import pytest
import torch

from cnnbench.data.sources import parse_data
from cnnbench.tasks.metrics import (F1, Accuracy, BoxIoU, ClassAccuracy, LabelAP, MeanIoU,
                                    Meter, PixelAccuracy, TopK)


def test_accuracy_and_top_k_over_two_batches():
    scores = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2, 1, 1])
    acc, top2 = Accuracy(), TopK(2)
    for s in (slice(0, 3), slice(3, 4)):  # batches of 3 and 1
        acc.update(scores[s], labels[s])
        top2.update(scores[s], labels[s])
    assert acc.compute() == 1 / 4  # only image 0 is right
    assert top2.compute() == 3 / 4  # image 3's label is its lowest score
    assert TopK(5).compute() != TopK(5).compute()  # NaN after an empty pass


def test_single_object_class_accuracy_reads_the_scores_after_the_box():
    output = torch.tensor([[9.0, 9.0, 9.0, 9.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]])
    metric = ClassAccuracy()
    metric.update(output, {"label": torch.tensor([1, 1]), "box": torch.zeros(2, 4)})
    assert metric.compute() == 0.5


def test_box_iou_of_the_sigmoid_box():
    logit = torch.logit(torch.tensor([[0.0, 0.0, 0.5, 0.5]]).clamp(1e-6, 1 - 1e-6))
    metric = BoxIoU()
    metric.update(torch.cat([logit, torch.zeros(1, 3)], 1),
                  {"box": torch.tensor([[0.0, 0.0, 0.5, 1.0]])})
    assert metric.compute() == pytest.approx(0.5, abs=1e-5)


def test_mean_iou_and_pixel_accuracy_sum_one_confusion_matrix():
    masks = torch.tensor([[[0, 1], [1, 255]]])
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 1], [0, 0]]]), 2).permute(0, 3, 1, 2)
    miou, pixel = MeanIoU(2), PixelAccuracy(2)
    for metric in (miou, pixel):
        metric.update(logits.float(), {"masks": masks})
    # 3 counted pixels: class 0 right once, class 1 right once and taken for 0 once.
    assert pixel.compute() == pytest.approx(2 / 3)
    assert miou.compute() == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_f1_and_label_ap():
    logits = torch.tensor([[5.0, -5.0], [5.0, 5.0], [-5.0, -5.0]])
    truth = {"multi_hot": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])}
    f1, ap = F1(0.5), LabelAP()
    f1.update(logits, truth)
    ap.update(logits, truth)
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 1 -> 1.0
    assert f1.compute() == pytest.approx(0.75)
    assert not LabelAP.on_train and math.isfinite(ap.compute())


def test_meter_weights_the_loss_by_batch_and_skips_evaluation_only_metrics():
    meter = Meter({"acc": Accuracy(), "map": LabelAP()}, train=True)
    assert list(meter.metrics) == ["acc"]
    scores, labels = torch.eye(3), torch.tensor([0, 1, 2])
    meter.update(scores[:2], labels[:2], torch.tensor(1.0), 2)
    meter.update(scores[2:], labels[2:], torch.tensor(4.0), 1)
    assert meter.compute() == {"loss": 2.0, "acc": 1.0}


@pytest.mark.parametrize("value, expected", [
    (None, ("scenes", None)), ("/data/fm", ("scenes", "/data/fm")),
    ("voc:/data/voc", ("voc", "/data/voc")), ("fashion-mnist", ("fashion-mnist", None))])
def test_the_data_key_names_a_source_or_a_folder(value, expected):
    assert parse_data(value, "scenes") == expected
