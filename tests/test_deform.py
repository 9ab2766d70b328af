"""Our deformable convolution against torchvision's op, its gradients, the module, the lr groups."""

import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import deform_conv2d as tv_deform_conv2d

import cnnbench.ops.deform as deform
import deform_cases
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
    from cnnbench.models import get_model

    def refuse(*args, **kwargs):
        raise AssertionError("torchvision's op was called")

    monkeypatch.setattr(deform, "torchvision_deform_conv2d", refuse)
    model = get_model("resnet18-dcn").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)


def test_offset_branch_group_gets_lr_times_offset_lr_mult():
    from cnnbench.models import get_model

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


# --- torchvision's own grid (tests/deform_cases.py): batch 0/2/33, permuted tensors, masks ----

BATCHES = [0, 2, 33]
LAYOUTS = {"contiguous": True, "permuted": False}


def _leaves(args):
    """Each tensor argument as a leaf that needs a gradient, with its strides kept."""
    return {k: v.detach().requires_grad_() for k, v in deform_cases.tensors(args).items()}


def _forward_backward(fn, args):
    leaves = _leaves(args)
    out = deform_cases.call(fn, args, **leaves)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad.to(out.dtype))
    return {"output": out.detach(), **{k: v.grad for k, v in leaves.items()}}


def _assert_same(got, expected, tol):
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k].shape == expected[k].shape, k
        assert got[k].dtype == expected[k].dtype, k
        assert torch.allclose(got[k], expected[k], rtol=tol, atol=tol), \
            (k, (got[k] - expected[k]).abs().max().item())


@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "no-mask"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", BATCHES)
def test_torchvision_grid_gives_its_output_and_gradients(batch, layout, with_mask):
    args = deform_cases.case(batch, LAYOUTS[layout], with_mask)
    got = _forward_backward(deform_conv2d, args)
    expected = _forward_backward(tv_deform_conv2d, args)
    _assert_same(got, expected, 1e-12)
    assert got["output"].shape == (batch, 2, 2, 3)


@pytest.mark.parametrize("geometry", [g for g in deform_cases.GEOMETRIES if g != "tv"])
def test_other_strides_paddings_dilations_give_torchvision_numbers(geometry):
    args = deform_cases.case(2, contiguous=False, geometry=geometry)
    _assert_same(_forward_backward(deform_conv2d, args),
                 _forward_backward(tv_deform_conv2d, args), 1e-12)


@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "no-mask"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", BATCHES)
def test_gradcheck_on_the_torchvision_grid(batch, layout, with_mask):
    args = deform_cases.case(batch, LAYOUTS[layout], with_mask)
    leaves = _leaves(args)
    names = list(leaves)

    def fn(*tensors):
        return deform_cases.call(deform_conv2d, args, **dict(zip(names, tensors)))

    assert torch.autograd.gradcheck(fn, tuple(leaves.values()), nondet_tol=1e-5, fast_mode=True)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "no-mask"])
def test_a_scripted_function_runs_the_op_with_its_gradients(with_mask):
    @torch.jit.script
    def scripted(x, offset, weight, bias, mask: torch.Tensor | None,
                 stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]):
        return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding,
                             dilation=dilation, mask=mask)

    args = deform_cases.case(2, contiguous=False, with_mask=with_mask)
    leaves = _leaves(args)
    names = list(leaves)

    def fn(*tensors):
        t = dict(zip(names, tensors))
        return scripted(t["input"], t["offset"], t["weight"], t["bias"], t.get("mask"),
                        args["stride"], args["padding"], args["dilation"])

    expected = deform_cases.call(tv_deform_conv2d, args)
    assert torch.allclose(fn(*leaves.values()), expected, atol=1e-12)
    assert torch.autograd.gradcheck(fn, tuple(leaves.values()), nondet_tol=1e-5, fast_mode=True)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("modulation", [True, False], ids=["v2", "v1"])
def test_a_scripted_deformconv2d_gives_the_eager_output(modulation):
    torch.manual_seed(0)
    layer = DeformConv2d(4, 3, modulation=modulation, bias=True)
    torch.nn.init.normal_(layer.p_conv.weight)  # offsets that are not zero
    x = torch.randn(2, 4, 6, 5)
    assert torch.equal(torch.jit.script(layer)(x), layer(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated")
def test_a_scripted_function_with_the_op_cannot_be_saved(tmp_path):
    # The op runs in Python under TorchScript (README, "Deformable convolution"): no export.
    @torch.jit.script
    def scripted(x, offset, weight):
        return deform_conv2d(x, offset, weight, padding=1)

    with pytest.raises(RuntimeError, match="Python"):
        torch.jit.save(scripted, str(tmp_path / "scripted.pt"))


_WRONG = {  # one argument replaced by one of the wrong size
    "offset-channels": lambda a: {"offset": a["offset"][:, :2]},
    "offset-height": lambda a: {"offset": a["offset"][:, :, :1]},
    "offset-batch": lambda a: {"offset": a["offset"][:1]},
    "offset-groups-of-no-channels": lambda a: {"offset": torch.cat([a["offset"],
                                                                    a["offset"][:, :12]], 1)},
    "mask-channels": lambda a: {"mask": a["mask"][:, :2]},
    "mask-height": lambda a: {"mask": a["mask"][:, :, :1]},
    "mask-batch": lambda a: {"mask": a["mask"][:1]},
    "weight-groups": lambda a: {"weight": a["weight"][:, :2]},
    "input-3d": lambda a: {"input": a["input"][0]},
}


def _raised(fn, args, **tensors):
    try:
        deform_cases.call(fn, args, **tensors)
    except Exception as exc:  # noqa: BLE001 - the type is the point
        return exc
    raise AssertionError(f"{fn.__module__} accepted the wrong size")


@pytest.mark.parametrize("wrong", _WRONG)
def test_wrong_sizes_raise_torchvisions_exception_type_with_our_message(wrong):
    args = deform_cases.case(2)
    replaced = _WRONG[wrong](args)
    ours, theirs = _raised(deform_conv2d, args, **replaced), _raised(tv_deform_conv2d, args,
                                                                    **replaced)
    assert type(ours) is type(theirs)
    assert str(ours).startswith(("offset", "mask", "weight", "deform_conv2d", "6 input"))
    name = next(iter(replaced))
    if name in ("offset", "mask"):
        assert name in str(ours)


@pytest.mark.parametrize("batch", [0, 33])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)],
                         ids=["float16", "bfloat16"])
def test_half_precision_grid_is_within_its_rounding_of_float64(batch, dtype, tol):
    args = deform_cases.case(batch, contiguous=False, dtype=dtype)
    got = _forward_backward(deform_conv2d, args)
    exact = {k: v.to(torch.float64) if isinstance(v, torch.Tensor) else v
             for k, v in args.items()}
    expected = _forward_backward(tv_deform_conv2d, exact)
    for k, e in expected.items():
        assert got[k].dtype == dtype and got[k].shape == e.shape, k
        error = (got[k].double() - e).abs()
        assert e.numel() == 0 or error.max() <= tol * e.abs().max(), k
