"""The Triton deformable convolution against torchvision's op: outputs and every gradient.

With a GPU the kernels run on it, in this process. Without one they run under Triton's
interpreter on tiny CPU tensors, in a fresh Python process: ``TRITON_INTERPRET=1`` must be set
before Triton itself is imported (its own ``tl.zeros``, ``tl.sum``... are kernels too), which
another test may already have done here. That process runs this file as a script and hands
back every figure; the tests below assert on them.
"""

import os
import subprocess
import sys

import pytest
import torch

import deform_cases

pytest.importorskip("triton", reason="Triton is not importable")

TOL = 1e-4

# kernel stride dilation padding offset_groups weight_groups mask bias offsets
GRID = {
    "stride2-offset-groups2": ((3, 3), 2, 1, 1, 2, 1, True, True, "random"),
    "dilation2-no-bias": ((3, 3), 1, 2, 2, 1, 1, True, False, "random"),
    "kernel2x3-no-mask": ((2, 3), 1, 1, (1, 0), 1, 1, False, True, "random"),
    "kernel3x1-weight-groups2": ((3, 1), (1, 2), 1, (1, 0), 2, 2, True, True, "random"),
    "kernel1-offset-groups4-plain": ((1, 1), 1, 1, 0, 4, 1, False, False, "random"),
    "far-offsets": ((3, 3), 1, 1, 1, 1, 1, True, True, "far"),
    "integer-positions": ((3, 3), 1, 1, 1, 1, 1, True, True, "integer"),
}
# A subset of torchvision's own grid (tests/deform_cases.py; all of it runs on the CPU path in
# test_deform.py): batch 0, and permuted tensors. (Batch 33 takes 160 s in the interpreter.)
#                    batch contiguous mask
TORCHVISION_GRID = {"batch0": (0, True, True), "batch2-permuted": (2, False, True)}
# 16 channels per offset group fill whole blocks: the unmasked, aligned loads.
FULL_BLOCKS = ((3, 3), 1, 1, 1, 2, 1, True, True, "random")
FULL_BLOCKS_SIZES = dict(batch=1, channels=32, height=4, width=5, out_channels=8)
TINY = dict(batch=1, channels=2, height=4, width=4, out_channels=2)


def _data(kernel, stride, dilation, padding, offset_groups, weight_groups, use_mask, use_bias,
          offsets, batch=3, channels=4, height=5, width=6, out_channels=6, seed=0):
    pair = torch.nn.modules.utils._pair
    g = torch.Generator().manual_seed(seed)
    (kh, kw), (sh, sw), (ph, pw) = kernel, pair(stride), pair(padding)
    h_out = (height + 2 * ph - dilation * (kh - 1) - 1) // sh + 1
    w_out = (width + 2 * pw - dilation * (kw - 1) - 1) // sw + 1
    taps = offset_groups * kh * kw
    offset = torch.randn(batch, 2 * taps, h_out, w_out, generator=g)
    if offsets == "far":  # at least 30 pixels: every tap outside the image
        offset = offset.sign() * 30 + offset
    elif offsets == "integer":  # corners exactly on pixels and on the lines around the image
        offset = offset.mul(2).round()
    else:
        offset = offset * 1.5
    return dict(
        input=torch.randn(batch, channels, height, width, generator=g),
        offset=offset,
        weight=torch.randn(out_channels, channels // weight_groups, kh, kw, generator=g),
        bias=torch.randn(out_channels, generator=g) if use_bias else None,
        mask=torch.rand(batch, taps, h_out, w_out, generator=g) if use_mask else None,
        stride=stride, padding=padding, dilation=dilation)


def _outputs_and_grads(fn, data, device, dtype=torch.float32):
    leaves = {k: v.to(device, dtype).clone().requires_grad_() for k, v in data.items()
              if isinstance(v, torch.Tensor)}
    out = fn(leaves["input"], leaves["offset"], leaves["weight"], leaves.get("bias"),
             stride=data["stride"], padding=data["padding"], dilation=data["dilation"],
             mask=leaves.get("mask"))
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad.to(device, dtype))
    return {"output": out.detach().float().cpu(),
            **{k: v.grad.float().cpu() for k, v in leaves.items()}}


def _largest(t) -> float:
    return t.abs().max().item() if t.numel() else 0.0


def _relative_errors(fn, data, device, dtype=torch.float32):
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    if dtype != torch.float32:  # the reference sees the same rounded inputs
        data = {k: v.to(dtype).float() if isinstance(v, torch.Tensor) else v
                for k, v in data.items()}
    got = _outputs_and_grads(fn, data, device, dtype)
    expected = _outputs_and_grads(tv_deform_conv2d, data, "cpu")
    return {k: (_largest(got[k] - expected[k]) / max(_largest(expected[k]), 1e-30)
                if got[k].shape == expected[k].shape else float("inf")) for k in expected}


def _far_offsets(module, device):
    """The output minus the bias and the gradients' largest magnitudes, all taps outside."""
    data = _data(*GRID["far-offsets"])
    got = _outputs_and_grads(module.deform_conv2d, data, device)
    got["output"] = got["output"] - data["bias"].view(1, -1, 1, 1)
    return {k: v.abs().max().item() for k, v in got.items() if k != "bias"}


def _wrong_sizes(module, device):
    """The exception types for offsets and masks of too few channels."""
    args = deform_cases.case(2, dtype=torch.float32)
    args = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    raised = []
    for wrong in ({"offset": args["offset"][:, :2]}, {"mask": args["mask"][:, :2]}):
        try:
            deform_cases.call(module.deform_conv2d, args, **wrong)
            raised.append(None)
        except Exception as exc:  # noqa: BLE001 - the type is the point
            raised.append(type(exc).__name__)
    return raised


def _opcheck(module, device):
    data = _data((3, 3), 2, 1, 1, 1, 1, True, True, "random", **TINY)
    args = [data[k].to(device).requires_grad_()
            for k in ("input", "offset", "weight", "bias", "mask")]
    torch.library.opcheck(torch.ops.cnnbench.deform_conv2d.default, (*args, [2, 2, 1, 1, 1, 1]),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))
    return True


def _compiled_in_one_graph(module, device):
    """Largest difference of a fullgraph-compiled layer's output and gradients from eager."""
    data = _data((3, 3), 1, 1, 1, 1, 1, True, True, "random", **TINY)

    def layer(x, offset, weight, bias, mask):
        return module.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask).relu()

    names = ("input", "offset", "weight", "bias", "mask")
    eager = [data[k].to(device).requires_grad_() for k in names]
    compiled = [data[k].to(device).requires_grad_() for k in names]
    expected = layer(*eager)
    got = torch.compile(layer, fullgraph=True, backend="aot_eager")(*compiled)
    expected.sum().backward()
    got.sum().backward()
    return max([(got - expected).abs().max().item()]
               + [(a.grad - b.grad).abs().max().item() for a, b in zip(compiled, eager)])


def compute(device) -> dict:
    """Every figure the tests check, by name (an exception's text where one was raised)."""
    from cnnbench.ops import deform_triton as module

    checks = {f"grid/{name}": (lambda c=case: _relative_errors(module.deform_conv2d,
                                                                 _data(*c), device))
              for name, case in GRID.items()}
    checks.update({f"tv/{name}": (lambda c=case: _relative_errors(
        module.deform_conv2d, deform_cases.case(*c, dtype=torch.float32), device))
        for name, case in TORCHVISION_GRID.items()})
    checks["wrong-sizes"] = lambda: _wrong_sizes(module, device)
    checks["full-blocks"] = lambda: _relative_errors(
        module.deform_conv2d, _data(*FULL_BLOCKS, **FULL_BLOCKS_SIZES), device)
    checks["far-offsets"] = lambda: _far_offsets(module, device)
    for dtype in (torch.float16, torch.bfloat16):
        if not (module.INTERPRETED and dtype == torch.bfloat16):
            checks[f"half/{dtype}"] = (lambda d=dtype: _relative_errors(
                module.deform_conv2d, _data(*GRID["stride2-offset-groups2"]), device, d))
    checks["opcheck"] = lambda: _opcheck(module, device)
    checks["compile"] = lambda: _compiled_in_one_graph(module, device)
    results = {"interpreted": module.INTERPRETED}
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as exc:  # reported by the test that reads it
            results[name] = f"{type(exc).__name__}: {exc}"
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if torch.cuda.is_available():
        return compute("cuda")
    path = tmp_path_factory.mktemp("triton") / "results.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, str(path)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(path)


def _figures(results, name):
    value = results[name]
    if isinstance(value, str):
        pytest.fail(value)
    return value


@pytest.mark.parametrize("name", GRID)
def test_triton_output_and_every_gradient_match_torchvision(results, name):
    errors = _figures(results, f"grid/{name}")
    assert {"output", "input", "offset", "weight"} <= set(errors)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("name", TORCHVISION_GRID)
def test_triton_on_torchvisions_grid_matches_torchvision(results, name):
    errors = _figures(results, f"tv/{name}")
    assert {"output", "input", "offset", "weight", "bias"} <= set(errors)
    assert max(errors.values()) < TOL, errors


def test_triton_wrong_sizes_raise_runtime_error_as_torchvision(results):
    assert _figures(results, "wrong-sizes") == ["RuntimeError", "RuntimeError"]


def test_triton_full_channel_blocks_match_torchvision(results):
    errors = _figures(results, "full-blocks")
    assert max(errors.values()) < TOL, errors


def test_triton_far_offsets_give_the_bias_and_no_gradient(results):
    assert _figures(results, "far-offsets") == {"output": 0.0, "input": 0.0, "offset": 0.0,
                                                "mask": 0.0, "weight": 0.0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_precision_within_1e_2_of_float32(results, dtype):
    if f"half/{dtype}" not in results:
        pytest.skip("Triton's interpreter multiplies bfloat16 wrongly (numpy has no bfloat16)")
    errors = _figures(results, f"half/{dtype}")
    assert max(errors.values()) < 1e-2, errors


def test_triton_custom_op_passes_opcheck(results):
    assert _figures(results, "opcheck") is True


def test_triton_op_compiles_in_one_graph_with_the_eager_numbers(results):
    assert _figures(results, "compile") < 1e-5


if __name__ == "__main__":  # the interpreter's process (see the module docstring)
    torch.set_num_threads(1)
    torch.save(compute("cpu"), sys.argv[1])
