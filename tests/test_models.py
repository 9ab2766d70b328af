"""Every seed architecture: parameter counts derived by hand from the notes' code, and shapes.

The expected counts below are written from the seed code's layer lists with the formulas
conv = cin*cout*k*k (+ cout bias), linear = i*o + o, batch norm = 2*c; they do not call our
builders, so a changed channel, kernel or layer shows up as a wrong count.
"""

import inspect

import pytest
import torch
from torch import nn

from cnnbench import registry
from cnnbench.models.lenet import BatchNorm
from cnnbench.models.resnet import resnet18_body
from cnnbench.models import get_model, get_model_info, list_models
from cnnbench.registry import register_model


def conv(cin, cout, k, bias=True):
    kh, kw = (k, k) if isinstance(k, int) else k
    return cin * cout * kh * kw + (cout if bias else 0)


def linear(i, o):
    return i * o + o


def bn(c):
    return 2 * c


def count(model):
    return sum(p.numel() for p in model.parameters())


def lenet_expected():
    return (conv(1, 6, 5) + conv(6, 16, 5) + linear(16 * 5 * 5, 120) + linear(120, 84)
            + linear(84, 10))


def lenet_bn_expected():
    return (conv(1, 6, 5) + bn(6) + conv(6, 16, 5) + bn(16) + linear(16 * 4 * 4, 120) + bn(120)
            + linear(120, 84) + bn(84) + linear(84, 10))


def alexnet_expected():
    return (conv(1, 96, 11) + conv(96, 256, 5) + conv(256, 384, 3) + conv(384, 384, 3)
            + conv(384, 256, 3) + linear(6400, 4096) + linear(4096, 4096) + linear(4096, 10))


def vgg11_expected(ratio=1):
    arch = [(1, 64), (1, 128), (2, 256), (2, 512), (2, 512)]
    total, cin = 0, 1
    for n, c in arch:
        c //= ratio
        for _ in range(n):
            total += conv(cin, c, 3)
            cin = c
    return total + linear(cin * 7 * 7, 4096) + linear(4096, 4096) + linear(4096, 10)


def nin_expected():
    def block(cin, cout, k):
        return conv(cin, cout, k) + 2 * conv(cout, cout, 1)
    return block(1, 96, 11) + block(96, 256, 5) + block(256, 384, 3) + block(384, 10, 3)


def googlenet_expected():
    def inception(cin, c1, c2, c3, c4):
        return (conv(cin, c1, 1) + conv(cin, c2[0], 1) + conv(c2[0], c2[1], 3)
                + conv(cin, c3[0], 1) + conv(c3[0], c3[1], 5) + conv(cin, c4, 1))
    stem = conv(1, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3)
    blocks = [(192, 64, (96, 128), (16, 32), 32), (256, 128, (128, 192), (32, 96), 64),
              (480, 192, (96, 208), (16, 48), 64), (512, 160, (112, 224), (24, 64), 64),
              (512, 128, (128, 256), (24, 64), 64), (512, 112, (144, 288), (32, 64), 64),
              (528, 256, (160, 320), (32, 128), 128), (832, 256, (160, 320), (32, 128), 128),
              (832, 384, (192, 384), (48, 128), 128)]
    return stem + sum(inception(*b) for b in blocks) + linear(1024, 10)


def residual(cin, c, use_1x1, dcn=False):
    # A deformable v2 3x3 adds an offset branch (2*9 outputs) and a mask branch (9 outputs).
    extra = (conv(cin, 27, 3) + conv(c, 27, 3)) if dcn else 0
    return (conv(cin, c, 3) + conv(c, c, 3) + 2 * bn(c) + (conv(cin, c, 1) if use_1x1 else 0)
            + extra)


def resnet18_body_expected(dcn_stages=(), width=64):
    widths = [width * m for m in (1, 1, 2, 4, 8)]
    total = conv(1, widths[0], 7) + bn(widths[0])
    for i in range(4):
        dcn = i + 2 in dcn_stages  # stage i is conv(i+2): b2..b5
        first = i == 0
        total += residual(widths[i], widths[i + 1], not first, dcn)
        total += residual(widths[i + 1], widths[i + 1], False, dcn)
    return total


def resnet18_expected(dcn_stages=()):
    return resnet18_body_expected(dcn_stages) + linear(512, 10)


def densenet_expected():
    total, c = conv(1, 64, 7) + bn(64), 64
    for i in range(4):
        for j in range(4):
            total += bn(c + 32 * j) + conv(c + 32 * j, 32, 3)
        c += 4 * 32
        if i != 3:
            total += bn(c) + conv(c, c // 2, 1)
            c //= 2
    return total + bn(c) + linear(c, 10)


def unet_expected(cin=1, classes=11, w=64):
    def double(i, o, mid=None):
        mid = mid or o
        return conv(i, mid, 3, bias=False) + bn(mid) + conv(mid, o, 3, bias=False) + bn(o)

    def up(i, o):  # transposed convolution 2x2 to i // 2 channels, then a double conv
        return i * (i // 2) * 4 + i // 2 + double(i, o)
    return (double(cin, w) + double(w, 2 * w) + double(2 * w, 4 * w) + double(4 * w, 8 * w)
            + double(8 * w, 16 * w) + up(16 * w, 8 * w) + up(8 * w, 4 * w) + up(4 * w, 2 * w)
            + up(2 * w, w) + conv(w, classes, 1))


def fpn_expected():
    def bottleneck(cin, planes, downsample):
        out = 4 * planes
        return (conv(cin, planes, 1, False) + bn(planes) + conv(planes, planes, 3, False)
                + bn(planes) + conv(planes, out, 1, False) + bn(out)
                + ((conv(cin, out, 1, False) + bn(out)) if downsample else 0))
    total, cin = conv(3, 64, 7, False) + bn(64), 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        total += bottleneck(cin, planes, True)
        cin = 4 * planes
        total += sum(bottleneck(cin, planes, False) for _ in range(blocks - 1))
    return (total + conv(2048, 256, 1) + 3 * conv(256, 256, 3) + conv(1024, 256, 1)
            + conv(512, 256, 1) + conv(256, 256, 1))


def ssd_expected(classes=20, anchors=4):
    total, cin = 0, 3
    for n, c in [(2, 64), (2, 128), (4, 256), (4, 512), (4, 512)]:  # VGG19 features
        for _ in range(n):
            total += conv(cin, c, 3)
            cin = c
    total += conv(512, 1024, 3) + conv(1024, 1024, 1)
    total += conv(1024, 256, 1) + conv(256, 512, 3)  # conv3
    total += conv(512, 128, 1) + conv(128, 256, 3)  # conv4
    total += 2 * (conv(256, 128, 1) + conv(128, 256, 3))  # conv5, conv6
    for c in (512, 1024, 512, 256, 256, 256):
        total += conv(c, anchors * (classes + 1), 3) + conv(c, anchors * 4, 3)
    return total


EXPECTED = {
    "lenet": lenet_expected, "lenet-bn": lenet_bn_expected, "alexnet": alexnet_expected,
    "vgg11": vgg11_expected, "nin": nin_expected, "googlenet": googlenet_expected,
    "resnet18": resnet18_expected, "densenet": densenet_expected, "unet": unet_expected,
    "fpn": fpn_expected, "ssd": ssd_expected,
    "resnet18-dcn": lambda: resnet18_expected(dcn_stages=(3, 4, 5)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_param_count_matches_seed_code(name):
    with torch.device("meta"):
        model = get_model(name)
    assert count(model) == EXPECTED[name]()


def test_known_published_counts():
    # Figures printed by the d2l book / the notes' runs for the Fashion-MNIST variants.
    assert lenet_expected() == 61_706
    assert densenet_expected() == 758_226
    assert resnet18_expected() == 11_178_378


def test_vgg11_channel_ratio_divides_conv_channels():
    with torch.device("meta"):
        model = get_model("vgg11", ratio=4)
    assert count(model) == vgg11_expected(ratio=4)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [16, 32, 64, 64, 128, 128, 128, 128]


def test_unet_width_and_bilinear_options():
    with torch.device("meta"):
        small = get_model("unet", width=16)
        bilinear = get_model("unet", bilinear=True)
    assert count(small) == unet_expected(w=16)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in bilinear.modules())
    assert any(isinstance(m, nn.Upsample) for m in bilinear.modules())


def test_in_channels_and_num_classes_options():
    model = get_model("resnet18", in_channels=3, num_classes=7)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 7)


CLASSIFIERS = ["lenet", "lenet-bn", "alexnet", "vgg11", "nin", "googlenet", "resnet18",
               "densenet", "resnet18-dcn"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_output_shape_at_default_input(name):
    info = get_model_info(name)
    assert info.input_size[0] == 1 and info.num_classes == 10
    with torch.device("meta"):
        model = get_model(name).eval()
    assert model(torch.zeros(2, *info.input_size, device="meta")).shape == (2, 10)


def test_dense_model_output_shapes():
    with torch.device("meta"):
        unet, fpn, ssd = get_model("unet").eval(), get_model("fpn").eval(), get_model("ssd").eval()
    assert unet(torch.zeros(2, 1, 96, 96, device="meta")).shape == (2, 11, 96, 96)
    maps = fpn(torch.zeros(2, 3, 224, 224, device="meta"))
    assert [tuple(m.shape) for m in maps] == [(2, 256, s, s) for s in (56, 28, 14, 7)]
    anchors, cls, box = ssd(torch.zeros(2, 3, 352, 352, device="meta"))
    cells = 11 * 11 + 9 * 9 + 7 * 7 + 5 * 5 + 3 * 3 + 1
    assert anchors.shape == (cells * 4, 4)
    assert cls.shape == (2, cells * 4, 21) and box.shape == (2, cells * 4, 4)


def test_unet_handles_odd_sizes_like_the_notes():
    model = get_model("unet", width=4).eval()
    assert model(torch.zeros(1, 1, 37, 45)).shape == (1, 11, 37, 45)


def test_every_registered_model_has_metadata():
    names = list_models()
    assert set(EXPECTED) <= set(names)
    for name in names:
        info = get_model_info(name)
        assert info.task and info.source and len(info.input_size) == 3


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        register_model("lenet", task="classification", image_size=(28, 28),
                       source="test")(lambda in_channels=1: None)


@pytest.mark.parametrize("name", list_models())
def test_metadata_channels_and_classes_are_the_builders_defaults(name):
    info = get_model_info(name)
    defaults = inspect.signature(info.builder).parameters
    assert info.in_channels == defaults["in_channels"].default
    classes = None if info.task == "feature-extraction" else defaults["num_classes"].default
    assert info.num_classes == classes


def test_registration_states_channels_and_classes_only_in_the_builder(monkeypatch):
    list_models()  # the families load before the copy below
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    # No second place to state them, so they cannot disagree.
    with pytest.raises(TypeError):
        register_model("test-net", task="classification", image_size=(8, 8), source="test",
                       num_classes=10)(lambda in_channels=1, num_classes=10: None)
    with pytest.raises(ValueError, match="in_channels"):
        register_model("test-net", task="classification", image_size=(8, 8),
                       source="test")(lambda num_classes=10: None)
    register_model("test-net", task="classification", image_size=(8, 6),
                   source="test")(lambda in_channels=3, num_classes=5, width=2: None)
    info = get_model_info("test-net")
    assert info.input_size == (3, 8, 6) and info.num_classes == 5
    assert info.options == {"in_channels": 3, "num_classes": 5, "width": 2}


@pytest.mark.parametrize("width", [8, 32, 64])
def test_one_resnet18_body_with_a_width_option(width):
    with torch.device("meta"):
        body = resnet18_body(1, width)
    assert count(body) == resnet18_body_expected(width=width)
    assert [m.out_channels for m in body.modules() if isinstance(m, nn.Conv2d)][-1] == 8 * width


def test_fastai_models_share_the_resnet18_body():
    # The lesson's models are that body at width 32 and their own heads.
    with torch.device("meta"):
        models = {n: get_model(n) for n in ("single-object", "multi-label", "ssd-resnet")}
    body = resnet18_body_expected(width=32)
    assert count(models["multi-label"]) == body + linear(256, 10)
    assert count(models["single-object"]) == (body + linear(256 * 9, 256) + bn(256)
                                              + linear(256, 14))
    # StdConvs from b3, b4, b5 (64, 128, 256 channels) and one below b5, to 128 channels; per
    # grid 4 anchors (2 sizes + 3 ratios - 1), each 11 scores and 4 offsets.
    heads = sum(conv(c, 128, 3) + bn(128) for c in (64, 128, 256, 128))
    heads += 4 * (conv(128, 4 * 11, 3) + conv(128, 4 * 4, 3))
    assert count(models["ssd-resnet"]) == body + heads == 3_739_056


@pytest.mark.parametrize("dims,reference", [(2, nn.BatchNorm1d), (4, nn.BatchNorm2d)])
def test_scratch_batchnorm_matches_torch(dims, reference):
    torch.manual_seed(0)
    shape = (16, 5) if dims == 2 else (8, 5, 6, 7)
    ours, ref = BatchNorm(5, num_dims=dims), reference(5, momentum=0.1)
    x = torch.randn(shape) * 3 + 1
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    # Moving mean as nn.BatchNorm's (momentum 0.9 of the old = 0.1 of the new); the notes keep
    # the biased variance where nn.BatchNorm keeps the unbiased one.
    n = x.numel() // 5
    torch.testing.assert_close(ours.moving_mean.flatten(), ref.running_mean)
    torch.testing.assert_close((ours.moving_var.flatten() - 0.9) * n / (n - 1),
                               ref.running_var - 0.9, atol=1e-5, rtol=1e-5)
    # Evaluation uses the moving statistics, not the batch's.
    ours.eval(), ref.eval()
    ref.running_var.copy_(ours.moving_var.flatten())
    y = torch.randn(shape)
    torch.testing.assert_close(ours(y), ref(y), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours(y), BatchNorm(5, num_dims=dims).train()(y))


def test_torchvision_models_build_without_any_download():
    # Segmentation models would fetch backbone weights unless told not to.
    with torch.device("meta"):
        model = get_model("torchvision:fcn_resnet50")
    # torchvision's published 35,322,218 includes the auxiliary FCNHead(1024, 21), which is off
    # without weights: 3x3 conv 1024->256 (no bias), batch norm 256, 1x1 conv 256->21.
    aux = 1024 * 256 * 9 + bn(256) + conv(256, 21, 1)
    assert count(model) == 35_322_218 - aux


def test_scratch_batch_norm_trains_under_bf16_autocast_with_float32_averages():
    # Under autocast a convolution hands BatchNorm bfloat16 activations; the moving averages
    # stay float32 (a CUDA run of lenet-bn's GPU profile failed here).
    conv, bn = nn.Conv2d(1, 4, 3), BatchNorm(4, num_dims=4)
    x = torch.randn(8, 1, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bn.train()(conv(x))
    assert bn.moving_mean.dtype == torch.float32 and bn.moving_var.dtype == torch.float32
    assert bn.moving_mean.abs().sum() > 0 and torch.isfinite(y).all()
