"""Our deformable convolution against torchvision's op, its gradients, the module, the lr groups."""

import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import deform_conv2d as tv_deform_conv2d

import cnnbench.ops.deform as deform
from cnnbench.ops import DeformConv2d, deform_conv2d
from cnnbench.ops.deform_reference import deform_conv2d_reference

TOL = 1e-4

# Each case varies one or two things around a base of 3x3, stride 1, padding 1, one group,
# mask and bias; batch 3 (not a multiple of 32) and a non-square 7x9 input throughout.
#        kernel stride dilation padding offset_groups weight_groups mask bias offset_scale
GRID = [
    (3, 1, 1, 1, 1, 1, True, True, 1.5),
    (1, 1, 1, 0, 1, 1, True, True, 1.5),
    (5, 1, 1, 2, 1, 1, True, False, 1.5),
    (3, 2, 1, 1, 1, 1, False, True, 1.5),
    (3, 1, 2, 2, 1, 1, True, True, 1.5),
    (3, 1, 1, 0, 1, 1, True, True, 1.5),
    (3, 2, 2, 0, 2, 1, True, True, 1.5),
    (5, 2, 1, 1, 2, 2, False, False, 1.5),
    (3, 1, 1, 1, 2, 1, False, True, 1.5),
    (3, 1, 1, 1, 1, 2, True, True, 1.5),
    (3, 1, 1, 1, 1, 1, True, True, 25.0),   # samples far outside the image
    (1, 2, 2, 2, 2, 2, True, False, 25.0),
    (3, 1, 2, 0, 1, 1, False, False, 4.0),
]


def _data(kernel, stride, dilation, padding, offset_groups, weight_groups, use_mask, use_bias,
          offset_scale, batch=3, channels=4, height=7, width=9, out_channels=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    h_out = (height + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    w_out = (width + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    taps = offset_groups * kernel * kernel
    return dict(
        input=torch.randn(batch, channels, height, width, generator=g),
        offset=torch.randn(batch, 2 * taps, h_out, w_out, generator=g) * offset_scale,
        weight=torch.randn(out_channels, channels // weight_groups, kernel, kernel, generator=g),
        bias=torch.randn(out_channels, generator=g) if use_bias else None,
        mask=torch.rand(batch, taps, h_out, w_out, generator=g) if use_mask else None,
        stride=stride, padding=padding, dilation=dilation)


def _outputs_and_grads(fn, data):
    leaves = {k: v.clone().requires_grad_() for k, v in data.items()
              if isinstance(v, torch.Tensor)}
    out = fn(leaves["input"], leaves["offset"], leaves["weight"], leaves.get("bias"),
             stride=data["stride"], padding=data["padding"], dilation=data["dilation"],
             mask=leaves.get("mask"))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    out.backward(grad)
    return {"output": out.detach(), **{k: v.grad for k, v in leaves.items()}}


def _max_errors(a, b):
    return {k: (a[k] - b[k]).abs().max().item() for k in a}


# Tiny workloads: threads only add synchronisation (and the machine may be shared).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=[50, 130], ids=["image-parts", "whole-images"])
def tiny_chunks(monkeypatch, request):
    # Output positions per chunk at 3x3, 4 channels. 50: chunks end mid-row, in parts of an
    # image; 130: chunks of whole images (two 7x9 outputs, then the third on its own).
    monkeypatch.setattr(deform, "CHUNK_BYTES", request.param * 9 * 4 * 4)


@pytest.mark.parametrize("case", GRID, ids=lambda c: "k{}s{}d{}p{}og{}wg{}m{}b{}o{}".format(*c))
def test_output_and_every_gradient_match_torchvision(case, tiny_chunks):
    data = _data(*case)
    errors = _max_errors(_outputs_and_grads(deform_conv2d, data),
                         _outputs_and_grads(tv_deform_conv2d, data))
    assert max(errors.values()) < TOL, errors


def test_int64_corner_rows_give_the_same_result(monkeypatch):
    # int32 rows unless the bordered input has 2**31 rows or more: too big for a test, so the
    # int64 path is forced.
    data = _data(3, 1, 1, 1, 2, 1, True, True, 3.0)
    expected = _outputs_and_grads(deform_conv2d, data)
    monkeypatch.setattr(deform, "_index_dtype", lambda rows: torch.int64)
    errors = _max_errors(_outputs_and_grads(deform_conv2d, data), expected)
    assert max(errors.values()) < 1e-6, errors


def test_integer_sample_positions_give_torchvision_gradients():
    # Zero offsets (DeformConv2d at init) put border taps exactly on y = -1 and x = -1, where
    # the offset gradient depends on which cell a sample is in.
    data = _data(3, 1, 1, 1, 1, 1, True, True, 1.0)
    data["offset"] = torch.randint(-3, 4, data["offset"].shape).float()
    data["offset"][0] = 0
    errors = _max_errors(_outputs_and_grads(deform_conv2d, data),
                         _outputs_and_grads(tv_deform_conv2d, data))
    assert max(errors.values()) < TOL, errors


def test_gradcheck_in_float64_on_a_tiny_case():
    data = _data(3, 2, 1, 1, 2, 1, True, True, 1.3, batch=2, channels=2, height=5, width=4,
                 out_channels=2)
    names = ("input", "offset", "weight", "bias", "mask")
    tensors = [data[k].double().requires_grad_() for k in names]

    def fn(x, offset, weight, bias, mask):
        return deform_conv2d(x, offset, weight, bias, stride=2, padding=1, mask=mask)

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32_and_cast_back(dtype):
    data = _data(3, 1, 1, 1, 1, 1, True, True, 1.5)
    expected = tv_deform_conv2d(data["input"], data["offset"], data["weight"], data["bias"],
                                padding=1, mask=data["mask"])
    out = deform_conv2d(data["input"].to(dtype), data["offset"].to(dtype),
                        data["weight"].to(dtype), data["bias"].to(dtype), padding=1,
                        mask=data["mask"].to(dtype))
    assert out.dtype == dtype
    assert torch.allclose(out.float(), expected, atol=0.1 * expected.abs().max().item() / 8)


def test_bad_offset_shape_is_a_value_error():
    data = _data(3, 1, 1, 1, 1, 1, False, False, 1.0)
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d(data["input"], data["offset"][:, :7], data["weight"], padding=1)


def test_zero_initialised_deformconv2d_is_a_plain_convolution():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 10)
    v1 = DeformConv2d(3, 5, kernel_size=3, padding=1, bias=True)
    expected = F.conv2d(x, v1.weight, v1.bias, padding=1)
    assert torch.allclose(v1(x), expected, atol=1e-5)
    # v2: the mask starts at sigmoid(0) = 0.5 on every sample.
    v2 = DeformConv2d(3, 5, kernel_size=3, padding=1, stride=2, modulation=True)
    assert torch.allclose(v2(x), 0.5 * F.conv2d(x, v2.weight, stride=2, padding=1), atol=1e-5)


def test_deformconv2d_and_resnet18_dcn_run_on_our_op(monkeypatch):
    from cnnbench.registry import get_model

    def refuse(*args, **kwargs):
        raise AssertionError("torchvision's op was called")

    monkeypatch.setattr(deform, "torchvision_deform_conv2d", refuse)
    model = get_model("resnet18-dcn").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)


def test_offset_branch_group_gets_lr_times_offset_lr_mult():
    from cnnbench.registry import get_model

    from cnnbench.training.optimizers import param_groups

    model = get_model("resnet18-dcn", offset_lr_mult=0.25)
    groups = [{**g, "weight_decay": 5e-4} for g in param_groups(model, 0.1)]
    branch = {id(p) for m in model.modules() if isinstance(m, DeformConv2d)
              for b in (m.p_conv, m.m_conv) for p in b.parameters()}
    assert [g["lr"] for g in groups] == [0.1, pytest.approx(0.025)]
    assert {id(p) for p in groups[1]["params"]} == branch
    assert not branch & {id(p) for p in groups[0]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 5e-4 for g in groups)
    optimizer = torch.optim.SGD(groups, lr=0.1)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, pytest.approx(0.025)]


def test_lr_multipliers_name_the_offset_and_mask_branches():
    v2 = DeformConv2d(3, 5, modulation=True, offset_lr_mult=0.25)
    assert v2.lr_multipliers() == {"p_conv.weight": 0.25, "p_conv.bias": 0.25,
                                   "m_conv.weight": 0.25, "m_conv.bias": 0.25}
    named = dict(v2.named_parameters())
    assert set(v2.lr_multipliers()) <= set(named)
    assert set(DeformConv2d(3, 5).lr_multipliers()) == {"p_conv.weight", "p_conv.bias"}


def test_notes_reference_equals_torchvision_when_padded():
    data = _data(3, 1, 1, 1, 2, 1, True, True, 3.0)
    errors = _max_errors(_outputs_and_grads(deform_conv2d_reference, data),
                         _outputs_and_grads(tv_deform_conv2d, data))
    assert max(errors.values()) < TOL, errors


def test_notes_reference_clamps_to_the_edge_without_padding():
    # Without padding the notes clamp outside samples onto real edge pixels: not zero.
    data = _data(3, 1, 1, 0, 1, 1, False, False, 25.0)
    ref = _outputs_and_grads(deform_conv2d_reference, data)["output"]
    tv = _outputs_and_grads(tv_deform_conv2d, data)["output"]
    assert (ref - tv).abs().max() > 1.0
