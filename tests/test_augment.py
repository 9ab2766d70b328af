"""Augmentation batched on the device (data in memory) against torchvision's per-image v2."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as VF

from cnnbench.data import augment
from cnnbench.data import transforms as T
from cnnbench.train import resume
from cnnbench.training.interrupt import Interrupted
from test_runs import SignalAt, run, weights


def smooth_images(n, channels, height, width, seed=0):
    """uint8 pictures with edges and flat parts over the whole [0, 255] range (noise at 1/6 of
    the size, enlarged bicubically and clipped)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, max(2, height // 6), max(2, width // 6), generator=g)
    big = F.interpolate(low * 1.2 - 0.1, size=(height, width), mode="bicubic")
    return (big.clamp(0, 1) * 255).round().to(torch.uint8)


def v2_boxes(count, height, width, scale, ratio, seed=0):
    """``(top, left, h, w)`` tensors of ``count`` draws of ``v2.RandomResizedCrop``."""
    torch.manual_seed(seed)
    crop = v2.RandomResizedCrop((8, 8), scale=scale, ratio=ratio)
    image = torch.zeros(1, height, width, dtype=torch.uint8)
    drawn = [crop.make_params([image]) for _ in range(count)]
    return tuple(torch.tensor([d[k] for d in drawn]) for k in ("top", "left", "height", "width"))


def test_the_batched_crop_is_v2s_resized_crop_on_the_same_boxes():
    """Crops smaller than the output (memory's case: images stored at the input size): v2's
    uint8 resize on the CPU (fixed-point weights) and its float one (the GPU's, rounded) are
    within one grey level of the batch's; the float one is equal on >99.5% of the pixels (the
    rest: grid_sample's coordinates, normalised and back, move by a float rounding)."""
    images = smooth_images(24, 3, 40, 52)
    boxes = v2_boxes(24, 40, 52, (0.08, 1.0), (3 / 4, 4 / 3))
    size = (44, 56)
    out = T.resized_crop(images, boxes, size)
    for as_float in (False, True):
        expected = torch.stack([
            VF.resized_crop(image.float() if as_float else image, t, l, h, w, list(size),
                            antialias=True).round().to(torch.uint8)
            for image, t, l, h, w in zip(images, *(b.tolist() for b in boxes))])
        differ = (out.int() - expected.int()).abs()
        assert out.shape == expected.shape == (24, 3, *size) and out.dtype == torch.uint8
        assert differ.max() <= 1
        if as_float:
            assert (differ > 0).float().mean() < 0.005


def test_a_crop_larger_than_the_output_is_sampled_not_antialiased():
    """Shrinking: the batch equals v2 with ``antialias=False`` (within one grey level), not
    v2's default antialiased resize."""
    images = smooth_images(8, 1, 64, 64, seed=1)
    boxes = v2_boxes(8, 64, 64, (0.5, 1.0), (3 / 4, 4 / 3), seed=1)
    out = T.resized_crop(images, boxes, (16, 16)).int()
    for antialias, close in ((False, True), (True, False)):
        expected = torch.stack([
            VF.resized_crop(image.float(), t, l, h, w, [16, 16], antialias=antialias).round()
            for image, t, l, h, w in zip(images, *(b.tolist() for b in boxes))]).int()
        assert ((out - expected).abs().max() <= 1) == close


def test_crop_boxes_follow_v2s_distribution():
    """Area fraction uniform in ``scale``, log aspect uniform in ``log(ratio)``, the first fit
    of ten tries: the batch's means within 4 standard errors of v2's draws, every box inside
    the image."""
    height, width, scale, ratio = 30, 40, (0.08, 1.0), (3 / 4, 4 / 3)
    torch.manual_seed(0)
    ours = T.crop_boxes(20000, height, width, scale, ratio)
    theirs = v2_boxes(3000, height, width, scale, ratio)
    for top, left, h, w in (ours, theirs):
        assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
        assert (top + h <= height).all() and (left + w <= width).all()
    for stat in (lambda t, l, h, w: (h * w).double() / (height * width),
                 lambda t, l, h, w: (w.double() / h).log(),
                 lambda t, l, h, w: (t + h / 2).double() / height):
        a, b = stat(*ours), stat(*theirs)
        error = math.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 4 * error, (a.mean(), b.mean(), error)
    areas = (ours[2] * ours[3]).double() / (height * width)
    assert areas.min() < 0.1 and areas.max() > 0.95  # both ends of the scale reached


@pytest.mark.parametrize("height, width, scale", [(10, 100, (0.9, 1.0)),
                                                  (100, 10, (0.9, 1.0)),
                                                  (30, 32, (1.5, 2.0))])
def test_crop_boxes_fall_back_to_v2s_centre_crop(height, width, scale):
    """Ten misses (an area the image's shape or size cannot hold): v2's fallback, the centre
    crop at the nearest ratio bound (a wide, a tall image) or the whole image."""
    ratio = (3 / 4, 4 / 3)
    ours = T.crop_boxes(50, height, width, scale, ratio)
    theirs = v2_boxes(1, height, width, scale, ratio)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b.expand(50))


def test_jitter_is_v2s_adjustments_image_by_image_in_each_images_order():
    """Given factors and orders: each image as v2's adjust_brightness, adjust_contrast and
    adjust_saturation make it, to the bit, colour and grey."""
    orders = torch.tensor(list(itertools.permutations(range(3))))  # all six
    for channels in (3, 1):
        images = smooth_images(18, channels, 23, 37, seed=channels)
        g = torch.Generator().manual_seed(channels)
        factors = torch.empty(18, 3).uniform_(0.0, 2.0, generator=g)
        factors[0] = torch.tensor([0.0, 1.0, 2.0])
        order = orders.repeat(3, 1)
        adjust = (VF.adjust_brightness, VF.adjust_contrast, VF.adjust_saturation)
        expected = []
        for image, f, o in zip(images, factors.tolist(), order.tolist()):
            for op in o:
                image = adjust[op](image, f[op])
            expected.append(image)
        assert torch.equal(T.jitter(images, factors, order), torch.stack(expected))


def test_the_device_transform_draws_for_every_image_and_repeats_with_the_seed():
    """One picture 16 times: 16 different crops and colours; the same seed, the same batch."""
    transform = augment.OnDevice.from_config(
        {"rrc_scale": [0.08, 1.0], "rrc_ratio": [0.75, 4 / 3], "color_jitter": 0.4}, (24, 24))
    images = smooth_images(1, 3, 32, 32).expand(16, -1, -1, -1)
    batches = []
    for _ in range(2):
        torch.manual_seed(5)
        batches.append(transform(images))
    assert batches[0].shape == (16, 3, 24, 24) and batches[0].dtype == torch.uint8
    assert torch.equal(*batches)
    assert len({tuple(b.flatten().tolist()) for b in batches[0]}) == 16
    assert augment.OnDevice.from_config({"rrc_ratio": [0.75, 4 / 3]}, (24, 24)) is None


def test_on_the_cpu_large_images_go_through_v2_image_by_image_small_ones_batched():
    """The CPU's faster way for each size (benchmarks/augment_batched.py): the same draws as
    v2 per image above ``CPU_BATCHED_UP_TO`` pixels, the batched kernels at or below it."""
    config = {"rrc_scale": [0.08, 1.0], "rrc_ratio": [0.75, 4 / 3], "color_jitter": 0.4}
    for side, batched in ((64, True), (72, False)):
        transform = augment.OnDevice.from_config(config, (side, side))
        images = smooth_images(6, 3, side, side)
        assert transform.batched(images) is batched
        torch.manual_seed(3)
        got = transform(images)
        torch.manual_seed(3)
        if batched:
            want = T.color_jitter(T.random_resized_crop(images, (side, side), (0.08, 1.0),
                                                        (0.75, 4 / 3))[0], 0.4)
        else:
            each = augment.train_transform(config, (side, side))
            want = torch.stack([each(image) for image in images])
        assert got.shape == (6, 3, side, side) and torch.equal(got, want), side


def test_a_memory_run_with_crop_and_jitter_resumes_bitwise(tmp_path, fmnist_dir, keep_threads):
    """Fashion-MNIST in memory, RandomResizedCrop + ColorJitter + flip: stopped mid-epoch and
    resumed, the weights of the run that went straight through (the device's generator is in
    the checkpoint)."""
    torch.set_num_threads(1)
    extra = {"rrc_scale": [0.08, 1.0], "color_jitter": 0.4, "epochs": 1}
    run(tmp_path, fmnist_dir, "straight", **extra)
    with pytest.raises(Interrupted):
        run(tmp_path, fmnist_dir, "cut", callbacks=[SignalAt(1, 3)], **extra)
    resume(tmp_path / "cut")
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    run(tmp_path, fmnist_dir, "plain", epochs=1)  # the same without crop and jitter
    c = weights(tmp_path / "plain")
    assert not all(torch.equal(a[k], c[k]) for k in a)
