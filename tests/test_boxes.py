"""Anchors, matching, box encoding, NMS and mAP (cnnbench/boxes.py)."""

import math

import pytest
import torch
from torchvision.ops import box_iou

from cnnbench import boxes as B
from cnnbench.anchors import grid_anchors


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    anchors = grid_anchors(4, 4, (0.2, 0.3), (1.0, 2.0, 0.5))
    xy = torch.rand(len(anchors), 2, generator=g) * 0.6
    wh = 0.05 + torch.rand(len(anchors), 2, generator=g) * 0.3
    boxes = torch.cat((xy, xy + wh), 1)
    offsets = B.encode(anchors, boxes)
    torch.testing.assert_close(B.decode(anchors, offsets), boxes, atol=1e-5, rtol=0)
    # An anchor encodes itself as zero offsets.
    torch.testing.assert_close(B.encode(anchors, anchors), torch.zeros_like(anchors))


def test_matching_gives_every_object_an_anchor():
    anchors = grid_anchors(3, 3, (0.3,), (1.0,))  # 9 anchors, one per cell
    # Two small objects in the same cell both prefer anchor 4 (the centre); a third is huge
    # and overlaps every anchor below the threshold; one padding row.
    gt = torch.tensor([[[0.45, 0.45, 0.55, 0.55], [0.40, 0.40, 0.52, 0.52],
                        [0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0]]])
    labels = torch.tensor([[2, 5, 7, -1]])
    matched = B.match(anchors, gt, labels, threshold=0.5)
    assert matched.shape == (1, 9)
    assert set(matched[0].tolist()) - {-1} == {0, 1, 2}  # every real object, never padding
    assert (matched[0] == 3).sum() == 0


def test_matching_above_threshold_takes_extra_anchors():
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.02, 0.0, 0.52, 0.5], [0.5, 0.5, 1.0, 1.0]])
    gt = torch.tensor([[[0.01, 0.0, 0.51, 0.5]]])
    matched = B.match(anchors, gt, torch.tensor([[0]]), threshold=0.5)
    assert matched.tolist() == [[0, 0, -1]]


def test_detection_targets_label_background_zero():
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    gt = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0, 0, 0, 0]]])
    cls, offsets = B.detection_targets(anchors, gt, torch.tensor([[3, -1]]))
    assert cls.tolist() == [[0, 4]]  # class 3 becomes 4: 0 is the background
    torch.testing.assert_close(offsets[0, 1], torch.zeros(4))


def _brute_force_nms(boxes, scores, labels, iou_threshold):
    """Greedy NMS per class, written out: keep the best, drop everything overlapping it."""
    keep = []
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    removed = set()
    for i in order:
        if i in removed:
            continue
        keep.append(i)
        for j in order:
            if j != i and j not in removed and labels[j] == labels[i]:
                if box_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] > iou_threshold:
                    removed.add(j)
    return keep


def test_detect_nms_agrees_with_brute_force():
    g = torch.Generator().manual_seed(3)
    anchors = grid_anchors(4, 4, (0.3, 0.45), (1.0, 2.0))
    a = len(anchors)
    scores = torch.rand(1, a, 3, generator=g) ** 3
    offsets = torch.randn(1, a, 4, generator=g) * 0.5
    result = B.detect(anchors, scores, offsets, score_threshold=0.2, nms_iou=0.45,
                      max_detections=1000)[0]
    # The same candidates, brute force.
    boxes = B.decode(anchors, offsets[0]).clamp(0, 1)
    cand = [(i, c) for i in range(a) for c in range(3) if scores[0, i, c] > 0.2]
    cb = torch.stack([boxes[i] for i, _ in cand])
    cs = torch.stack([scores[0, i, c] for i, c in cand])
    cl = [c for _, c in cand]
    kept = _brute_force_nms(cb, cs, cl, 0.45)
    expected = sorted((round(float(cs[k]), 6), cl[k]) for k in kept)
    got = sorted((round(float(s), 6), int(c)) for s, c in zip(result["scores"], result["labels"]))
    assert got == expected
    assert len(got) < len(cand)  # NMS did remove something


def _box(x, y, s=10.0):
    return [x, y, x + s, y + s]


def test_average_precision_hand_computed():
    # Two objects; detections by score: hit, miss, hit. Precision 1, 1/2, 2/3 at recall
    # 1/2, 1/2, 1. Interpolated: 1 up to recall 0.5, then 2/3.
    tp = torch.tensor([1.0, 0.0, 1.0])
    scores = torch.tensor([0.9, 0.8, 0.7])
    voc = B.average_precision(tp, scores, num_gt=2, method="voc")
    assert voc == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    coco = B.average_precision(tp, scores, num_gt=2, method="coco")
    # 101 recall points: 0.00-0.50 (51 points) at 1, 0.51-1.00 (50 points) at 2/3.
    assert coco == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    # A missed object caps recall: nothing is found beyond recall 1/2.
    assert B.average_precision(torch.tensor([1.0]), torch.tensor([0.5]), 2, "voc") == 0.5
    assert B.average_precision(torch.zeros(0), torch.zeros(0), 3) == 0.0


def test_coco_recall_point_070_lies_one_bit_above_seven_tenths():
    # Ten objects: seven hits, a miss, three hits. Recall 7/10 == 0.7 is reached at precision 1,
    # but COCO's 71st recall point (np.linspace) is 0.7000000000000001, so it takes the best
    # precision from recall 0.8 on: 10/11, as pycocotools reports.
    tp = torch.tensor([1.0] * 7 + [0.0] + [1.0] * 3)
    scores = torch.linspace(1, 0, 11)
    assert B.COCO_RECALL_POINTS[70] > 7 / 10
    assert B.average_precision(tp, scores, 10) == pytest.approx((70 + 31 * 10 / 11) / 101,
                                                                abs=1e-15)


def test_mean_average_precision_hand_computed():
    gt = [{"boxes": torch.tensor([_box(0, 0), _box(50, 50)]), "labels": torch.tensor([0, 1])},
          {"boxes": torch.tensor([_box(20, 20)]), "labels": torch.tensor([0])}]
    pred = [
        # image 0: a hit on the class-0 object (IoU 1), a duplicate of it (a false positive
        # even though it overlaps: the object is taken), a class-1 box shifted by 3 px
        # (IoU 70/130 = 0.538: a hit at 0.5, a miss at 0.55 and above).
        {"boxes": torch.tensor([_box(0, 0), _box(1, 0), _box(53, 50)]),
         "scores": torch.tensor([0.9, 0.8, 0.6]), "labels": torch.tensor([0, 0, 1])},
        # image 1: the class-0 object found with a low score; a class-2 box (no such object).
        {"boxes": torch.tensor([_box(20, 20), _box(0, 0)]),
         "scores": torch.tensor([0.5, 0.95]), "labels": torch.tensor([0, 2])},
    ]
    m = B.mean_average_precision(pred, gt, num_classes=3, iou_thresholds=(0.5,), method="voc")
    # Class 0 by score: 0.9 hit, 0.8 miss (duplicate), 0.5 hit -> (0.5 x 1 + 0.5 x 2/3).
    # Class 1: one hit -> 1. Class 2 has no object: left out of the mean.
    assert m["per_class"][0] == pytest.approx(0.5 + 1 / 3)
    assert m["per_class"][1] == pytest.approx(1.0)
    assert math.isnan(m["per_class"][2])
    assert m["map"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 2)
    coco = B.mean_average_precision(pred, gt, 3, B.COCO_THRESHOLDS, method="voc")
    # Class 0 is the same at every threshold (IoU 1 hits, the duplicate is a miss anyway);
    # class 1 hits only at 0.50 of the ten thresholds.
    assert coco["per_threshold"]["0.50"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 2)
    assert coco["per_threshold"]["0.55"] == pytest.approx((0.5 + 1 / 3 + 0.0) / 2)
    assert coco["map"] == pytest.approx((0.5 + 1 / 3) / 2 + 1.0 / 2 / 10)


def test_perfect_detections_score_one():
    gt = [{"boxes": torch.tensor([_box(5, 5), _box(40, 10)]), "labels": torch.tensor([1, 3])}]
    pred = [{"boxes": gt[0]["boxes"].clone(), "scores": torch.tensor([0.7, 0.6]),
             "labels": gt[0]["labels"].clone()}]
    assert B.mean_average_precision(pred, gt, 4, B.COCO_THRESHOLDS)["map"] == pytest.approx(1.0)


def test_scores_from_logits_picks_softmax_or_sigmoid():
    logits = torch.randn(2, 5, 4)
    ssd = B.scores_from_logits(logits, num_classes=3)  # background + 3 classes
    torch.testing.assert_close(ssd, logits.softmax(-1)[..., 1:])
    torch.testing.assert_close(B.scores_from_logits(logits, 4), logits.sigmoid())


def _random_scene(g, num_images=12, num_classes=4):
    """Ground truth and detections on a 0.25 px grid (exact in binary, so xywh and xyxy agree):
    detections are jittered copies of objects (hits and near misses) plus random boxes."""
    def boxes(n, lo=0.0, hi=80.0):
        xy = torch.randint(int(lo * 4), int(hi * 4), (n, 2), generator=g) / 4
        wh = torch.randint(8, 120, (n, 2), generator=g) / 4
        return torch.cat((xy, xy + wh), 1).double()

    ground_truth, predictions = [], []
    for _ in range(num_images):
        n_gt = int(torch.randint(0, 7, (1,), generator=g))
        gt_boxes, gt_labels = boxes(n_gt), torch.randint(0, num_classes, (n_gt,), generator=g)
        near = gt_boxes[torch.randint(0, max(n_gt, 1), (2 * n_gt,), generator=g)] if n_gt else \
            gt_boxes.new_zeros(0, 4)
        near = near + torch.randint(-12, 13, near.shape, generator=g) / 4
        near[:, 2:] = torch.maximum(near[:, 2:], near[:, :2] + 0.25)
        n_far = int(torch.randint(0, 6, (1,), generator=g))
        det = torch.cat((near, boxes(n_far)))
        labels = torch.cat((gt_labels[torch.randint(0, max(n_gt, 1), (2 * n_gt,), generator=g)]
                            if n_gt else torch.zeros(0, dtype=torch.long),
                            torch.randint(0, num_classes, (n_far,), generator=g)))
        # A few detections take a wrong class.
        wrong = torch.rand(len(labels), generator=g) < 0.15
        other = torch.randint(0, num_classes, labels.shape, generator=g)
        labels = torch.where(wrong, other, labels)
        ground_truth.append({"boxes": gt_boxes, "labels": gt_labels})
        predictions.append({"boxes": det, "labels": labels,
                            "scores": torch.rand(len(det), generator=g, dtype=torch.float64)})
    return predictions, ground_truth


def _pycocotools_ap50(predictions, ground_truth, num_classes):
    """Per-class AP at IoU 0.5 from pycocotools' COCOeval (area range all, no detection cap)."""
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    images = [{"id": i + 1} for i in range(len(ground_truth))]
    annotations = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b),
                    "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0}
                   for i, gt in enumerate(ground_truth) for b, c in zip(gt["boxes"], gt["labels"])]
    for k, a in enumerate(annotations):
        a["id"] = k + 1  # COCOeval takes a matched ground-truth id of 0 for "unmatched"
    detections = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
                  for i, p in enumerate(predictions)
                  for b, c, s in zip(p["boxes"], p["labels"], p["scores"])]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": annotations,
                           "categories": [{"id": c + 1} for c in range(num_classes)]}
        coco_gt.createIndex()
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        evaluation.params.iouThrs = np.array([0.5])
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.params.maxDets = [10_000]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, 0]  # [recall points, classes]
    return [float(np.mean(p)) if (p > -1).all() else float("nan") for p in precision.T]


def test_coco_map_equals_pycocotools_on_random_boxes():
    pytest.importorskip("pycocotools", reason="pycocotools is the reference (pip install "
                        "pycocotools, or `pip install -e '.[dev]'`)")
    # Seed 9 gives a class of 10 objects whose recall reaches 0.7 at a step of the envelope:
    # torch.linspace's recall points put it 2.8e-3 away from pycocotools there.
    g = torch.Generator().manual_seed(9)
    worst = 0.0
    for _ in range(3):
        predictions, ground_truth = _random_scene(g)
        ours = B.mean_average_precision(predictions, ground_truth, 4, (0.5,))["per_class"]
        reference = _pycocotools_ap50(predictions, ground_truth, 4)
        for a, b in zip(ours, reference):
            assert math.isnan(a) == math.isnan(b)
            if not math.isnan(a):
                worst = max(worst, abs(a - b))
        assert any(0 < v < 1 for v in reference)  # the scenes are neither trivial nor empty
    assert worst <= 1e-12


# The batched matching against the per-image version it replaced (kept here as the reference).

def _old_box_iou(a, b):
    """The IoU before it went one coordinate at a time."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return inter / union.clamp(min=1e-9)


def _match_one_image(anchors, boxes, labels, threshold):
    """SSD's matching for one image, its real objects only, one greedy pick at a time."""
    cols = torch.nonzero(labels >= 0).flatten()
    matched = torch.full((len(anchors),), -1, dtype=torch.long)
    if len(cols) == 0:
        return matched
    iou = _old_box_iou(anchors, boxes[cols])
    best, arg = iou.max(1)
    matched[best >= threshold] = cols[arg[best >= threshold]]
    table = iou.clone()
    for _ in range(len(cols)):
        a, j = divmod(int(table.argmax()), len(cols))
        matched[a] = cols[j]
        table[a, :] = -2.0
        table[:, j] = -2.0
    return matched


def _random_scene_boxes(g, n, m, grid):
    """Boxes on a coarse grid (so IoUs tie), duplicates, padding rows, images with no object."""
    xy = torch.randint(0, grid - 1, (n, m, 2), generator=g).float() / grid
    wh = torch.randint(1, grid // 2, (n, m, 2), generator=g).float() / grid
    boxes = torch.cat((xy, (xy + wh).clamp(max=1)), -1)
    boxes[:, 1] = boxes[:, 0]  # a duplicate object: the same IoU with every anchor
    labels = torch.randint(-1, 5, (n, m), generator=g)
    labels[0] = -1  # an image with no object at all
    boxes[labels < 0] = 0.0
    return boxes, labels


def test_box_iou_is_bitwise_the_old_formula():
    g = torch.Generator().manual_seed(5)
    a = torch.rand(30, 4, generator=g)
    a[5] = a[6].flip(0)  # x1 < x0: no area
    b = torch.rand(3, 7, 4, generator=g)
    assert torch.equal(B.batched_box_iou(a, b), _old_box_iou(a.expand(3, -1, -1), b))
    assert torch.equal(B.batched_box_iou(b, b), _old_box_iou(b, b))


@pytest.mark.parametrize("seed", range(4))
def test_batched_matching_equals_the_per_image_version(seed):
    g = torch.Generator().manual_seed(seed)
    grid = 8
    anchors = torch.cat((grid_anchors(4, 4, (0.25, 0.5), (1.0, 2.0)),
                         grid_anchors(2, 2, (0.5,), (1.0,))))
    anchors = torch.cat((anchors, anchors[:5]))  # duplicate anchors: ties between anchors
    boxes, labels = _random_scene_boxes(g, 12, 5, grid)
    for threshold in (0.3, 0.5):
        matched = B.match(anchors, boxes, labels, threshold)
        for i in range(len(boxes)):
            assert torch.equal(matched[i], _match_one_image(anchors, boxes[i], labels[i],
                                                            threshold)), (seed, threshold, i)
    cls, offsets = B.detection_targets(anchors, boxes, labels, 0.5)
    assert (cls[0] == 0).all()  # the image with no object is all background
    for i in range(len(boxes)):
        m = _match_one_image(anchors, boxes[i], labels[i], 0.5)
        want_cls = torch.where(m >= 0, labels[i][m.clamp(min=0)] + 1, 0)
        want_offsets = B.encode(anchors, boxes[i][m.clamp(min=0)])
        assert torch.equal(cls[i], want_cls) and torch.equal(offsets[i], want_offsets)
