"""`cnnbench bench deformconv`: operator benchmarks, ours against torchvision, the notes and
a plain convolution of the same shape (``OP_BENCHES`` is their table)."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch

from cnnbench.bench.timing import (
    PRECISIONS, check_min_run_time, device_name, parse_int_list, parse_precision, peak_memory_mb,
    time_call)
from cnnbench.devices import resolve_device
from cnnbench.errors import CnnbenchError


DEFORM_SWEEPS = ("batch", "size", "shape")


DEFORM_SHAPE = (8, 64, 56, 56, 3)


DEFORM_SWEEP_SHAPES = [(8, 64, 28, 28, 3), (8, 64, 56, 56, 3), (8, 128, 28, 28, 3),
                       (8, 256, 14, 14, 3)]


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """``N,C,H,W[,K]`` -> (N, C, H, W, K); K (square kernel) defaults to 3."""
    dims = parse_int_list(text, "--shape")
    if len(dims) not in (4, 5):
        raise CnnbenchError(f"bad --shape {text!r}: use N,C,H,W or N,C,H,W,K (e.g. 8,64,56,56,3)")
    n, c, h, w, k = (*dims, 3) if len(dims) == 4 else dims
    if k > h + 2 * (k // 2) or k > w + 2 * (k // 2):
        raise CnnbenchError(f"bad --shape {text!r}: kernel {k} is larger than the padded input")
    return n, c, h, w, k


def deform_impls():
    """The implementations compared, by name: each takes torchvision's arguments.

    ``ours`` is the public op (Triton on CUDA, embedding_bag on the CPU); ``triton`` calls the
    Triton kernels directly (CUDA only).
    """
    from cnnbench.ops.deform import (deform_conv2d, torchvision_deform_conv2d,
                                     triton_deform_conv2d)
    from cnnbench.ops.deform_reference import deform_conv2d_reference

    def triton(*args, **kwargs):
        op = triton_deform_conv2d()
        if op is None:
            raise RuntimeError(TRITON_MISSING)
        return op(*args, **kwargs)

    return {"ours": deform_conv2d, "triton": triton, "torchvision": torchvision_deform_conv2d,
            "notes": deform_conv2d_reference, "conv2d": None}


TRITON_MISSING = "Triton is not importable: ours runs torchvision's op on CUDA"


def _default_deform_impls(dev: torch.device) -> tuple[str, ...]:
    if dev.type == "cuda":
        return ("ours", "triton", "torchvision", "notes", "conv2d")
    return ("ours", "torchvision", "notes", "conv2d")


@contextlib.contextmanager
def _tf32_off():
    """True float32 products in cuBLAS and cuDNN (restored afterwards)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _deform_inputs(shape, dev, dtype, seed=0):
    n, c, h, w, k = shape
    g = torch.Generator().manual_seed(seed)
    pad = k // 2

    def rand(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dev, dtype)

    return {"input": rand(n, c, h, w), "offset": rand(n, 2 * k * k, h, w, scale=2.0),
            "mask": torch.rand(n, k * k, h, w, generator=g).to(dev, dtype),
            "weight": rand(c, c, k, k, scale=1 / math.sqrt(c * k * k)), "bias": rand(c),
            "grad": rand(n, c, h, w), "padding": pad}


def _deform_sweep_shapes(sweep, shape):
    n, c, h, w, k = shape
    if sweep is None:
        return [shape]
    if sweep == "batch":
        return [(b, c, h, w, k) for b in (1, 2, 4, 8, 16)]
    if sweep == "size":
        return [(n, c, s, s, k) for s in (14, 28, 56, 112)]
    if sweep == "shape":
        return list(DEFORM_SWEEP_SHAPES)
    raise CnnbenchError(f"bad --sweep {sweep!r} for deformconv: use {', '.join(DEFORM_SWEEPS)}")


def bench_deformconv(shape=DEFORM_SHAPE, *, device: str = "auto", precision: str = "fp32",
                     min_run_time: float = 0.2, sweep: str | None = None,
                     impls=None) -> dict:
    """Ours, torchvision's, the notes' deformable convolution and a plain conv, side by side.

    The layer: ``N x C x H x W`` input, ``C`` output channels, ``K x K`` kernel, stride 1,
    padding ``K // 2``, one offset group, modulated (v2, with a mask) and a bias. Offsets are
    random with standard deviation 2 pixels, so many samples fall between pixels and some
    outside the image. ``max_abs_err`` is the largest absolute difference of the output and of
    every gradient (input, offset, mask, weight, bias) from torchvision's op, computed with TF32
    off (true float32); the timings run under the caller's TF32 settings, reported as ``tf32``.
    On CUDA ``triton`` joins the rows (``ours`` dispatches to it).
    """
    check_min_run_time(min_run_time)
    dev = resolve_device(device, allow_mps=False)
    if precision not in PRECISIONS:
        parse_precision(precision)
    dtype = PRECISIONS[precision] or torch.float32
    available = deform_impls()
    impls = _default_deform_impls(dev) if impls is None else impls
    unknown = [i for i in impls if i not in available]
    if unknown:
        raise CnnbenchError(f"unknown implementation {unknown[0]!r}: use "
                            f"{', '.join(available)}")
    rows = []
    for shape_ in _deform_sweep_shapes(sweep, tuple(shape)):
        rows += _bench_deform_shape(shape_, dev, dtype, min_run_time, impls, available)
    return {"op": "deform_conv2d", "device": str(dev), "device_name": device_name(dev),
            "dtype": str(dtype).removeprefix("torch."), "sweep": sweep,
            "threads": torch.get_num_threads(), "min_run_time": min_run_time,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "layer": "CxC KxK kernel, stride 1, padding K//2, 1 offset group, mask and bias",
            "tf32": _tf32_state(dev), "errors_tf32": False,
            "rows": rows, "summary": deform_summary(rows), "notes": _deform_notes(dev, impls)}


@dataclass(frozen=True)
class OpBench:
    """An operator benchmarked on its own (`cnnbench bench NAME`), not a registered model."""

    run: object  # (shape, *, device, precision, min_run_time, sweep) -> result dict
    table: str  # the cnnbench.render function that shows the result


OP_BENCHES = {"deformconv": OpBench(bench_deformconv, "deformconv_table")}


def _tf32_state(dev: torch.device) -> dict | None:
    """Whether the timed float32 products ran in TF32 (cuBLAS matmul, cuDNN convolutions)."""
    if dev.type != "cuda":
        return None
    return {"matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32}


def _deform_notes(dev: torch.device, impls) -> list[str]:
    from cnnbench.ops.deform import triton_deform_conv2d

    notes = _machine_notes(dev)
    if dev.type == "cuda" and triton_deform_conv2d() is None:
        notes.append(TRITON_MISSING)
    return notes


def _machine_notes(dev: torch.device) -> list[str]:
    """Warn when other jobs compete for the cores: threaded timings are then unreliable."""
    notes = ["peak memory on the CPU: storages created by PyTorch operators (scratch memory "
             "inside one operator, e.g. torchvision's column buffer, is not seen)"
             if dev.type == "cpu" else "peak memory: torch.cuda.max_memory_allocated"]
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except OSError:
        return notes
    if dev.type == "cpu" and load > cores:
        policy = os.environ.get("OMP_WAIT_POLICY", "unset (spinning)")
        notes.append(f"the machine is busy (load {load:.1f} on {cores} cores; "
                     f"OMP_WAIT_POLICY={policy}): threaded timings wait for descheduled threads, "
                     "which hurts code made of many operators more than one big kernel; "
                     "--threads 1 gives the steadiest figures")
    return notes


def _bench_deform_shape(shape, dev, dtype, min_run_time, impls, available):
    import torch.nn.functional as F

    n, c, h, w, k = shape
    data = _deform_inputs(shape, dev, dtype)
    pad = data["padding"]
    names = ("input", "offset", "mask", "weight", "bias")

    def call(impl, tensors):
        if impl == "conv2d":
            return F.conv2d(tensors["input"], tensors["weight"], tensors["bias"], padding=pad)
        return available[impl](tensors["input"], tensors["offset"], tensors["weight"],
                               tensors["bias"], padding=pad, mask=tensors["mask"])

    def leaves(dtype=None):
        return {k_: data[k_].detach().to(dtype).requires_grad_() for k_ in names}

    def results(impl, dtype=None):
        tensors = leaves(dtype)
        out = call(impl, tensors)
        out.backward(data["grad"].to(dtype))
        used = ("input", "weight", "bias") if impl == "conv2d" else names
        return {"output": out.detach(), **{k_: tensors[k_].grad for k_ in used}}

    # Errors in true float32: TF32 would add its own ~1e-3 (the notes' conv, cuBLAS, Triton).
    reference = None
    with _tf32_off():
        if {"torchvision", "ours", "triton"} & set(impls):
            try:
                reference = results("torchvision")
            except RuntimeError:  # torchvision has no bfloat16 kernel on CUDA: compare in fp32
                reference = results("torchvision", torch.float32)
    rows = []
    for impl in impls:
        row = {"impl": impl, "device": str(dev), "dtype": str(dtype).removeprefix("torch."),
               "batch": n, "channels": c, "height": h, "width": w, "kernel": k}
        try:
            with _tf32_off():
                got = results(impl) if impl != "torchvision" or reference["output"].dtype != dtype \
                    else reference
            errors = relative = None
            if impl != "conv2d" and reference is not None:
                errors = {k_: (got[k_].float() - reference[k_].float()).abs().max().item()
                          for k_ in got}
                # Sums over many terms (weight, bias gradients) are large: scale matters.
                relative = max(errors[k_] / max(reference[k_].abs().max().item(), 1e-30)
                               for k_ in got)
            plain = {k_: data[k_] for k_ in names}
            with torch.no_grad():
                fwd = time_call(lambda: call(impl, plain), min_run_time, dev, warmup=0)
            tensors = leaves()

            def fwd_bwd():
                for t in tensors.values():
                    t.grad = None
                call(impl, tensors).backward(data["grad"])

            # No extra warm-up: the Timer's block-size estimate runs the call first.
            both = time_call(fwd_bwd, min_run_time, dev, warmup=0)
            row.update(fwd_ms=round(fwd["median_ms"], 3), fwd_bwd_ms=round(both["median_ms"], 3),
                       fwd_ms_iqr=round(fwd["iqr_ms"], 3), fwd_bwd_ms_iqr=round(both["iqr_ms"], 3),
                       peak_mem_mb=round(peak_memory_mb(fwd_bwd, dev), 2),
                       max_abs_err=max(errors.values()) if errors else None,
                       max_rel_err=relative, errors=errors)
        except RuntimeError as exc:
            row.update(fwd_ms=None, fwd_bwd_ms=None, peak_mem_mb=None, max_abs_err=None,
                       error=str(exc).strip().splitlines()[0][:200])
        rows.append(row)
    return rows


def deform_summary(rows: list[dict]) -> list[str]:
    """One line per shape: the fastest deformable implementation and its margins."""
    lines = []
    shapes = sorted({(r["batch"], r["channels"], r["height"], r["width"], r["kernel"])
                     for r in rows}, key=lambda s: [r["batch"] for r in rows].index(s[0]))
    for shape in shapes:
        group = {r["impl"]: r for r in rows
                 if (r["batch"], r["channels"], r["height"], r["width"], r["kernel"]) == shape}
        for key, label in (("fwd_bwd_ms", "forward+backward"), ("fwd_ms", "forward")):
            timed = {i: r[key] for i, r in group.items() if r.get(key) and i != "conv2d"}
            if not timed:
                continue
            best = min(timed, key=timed.get)
            others = ", ".join(f"{timed[i] / timed[best]:.1f}x faster than {i}"
                               for i in timed if i != best)
            floor = group.get("conv2d", {}).get(key)
            floor_text = f"; {timed[best] / floor:.1f}x the plain conv" if floor else ""
            n, c, h, w, k = shape
            lines.append(f"{n}x{c}x{h}x{w} k{k} {label}: fastest is {best}"
                         f"{' (' + others + ')' if others else ''}{floor_text}")
    return lines
