"""Deformable convolution on a CUDA GPU: the Triton kernels against torchvision's op.

One command makes every figure of the "Deformable convolution on the GPU" section of
docs/performance.md and writes them into OUT_DIR:

    PYTHONPATH=$PWD python3 benchmarks/deform_gpu.py OUT_DIR            # everything, ~5 min
    PYTHONPATH=$PWD python3 benchmarks/deform_gpu.py OUT_DIR --sections check,default

Sections:
  check    outputs and every gradient against torchvision's op on a grid (stride 2, dilation 2,
           offset groups, weight groups, odd batch, far offsets, non-square kernels, no mask, no
           bias): float32 with TF32 off within 1e-4 relative; bfloat16 and float16 against
           torchvision in float32 on the same (rounded) inputs within 1e-2 relative.
  default  the layer of `cnnbench bench deformconv` (8x64x56x56, 3x3, modulated, bias) in float32,
           TF32 off: triton, torchvision and the plain conv2d, forward and forward+backward.
  sweep    batch 1-32, channels 32-512, sizes 7-112, kernels 1/3/5, offset groups 1 and 4, in
           float32 (TF32 off) and bfloat16 (torchvision has no bfloat16 kernel on CUDA: its
           figure there is float16, the same bytes).
  train    a resnet18-dcn training step (SGD) with the Triton op and with torchvision's.

Times are medians of ``triton.testing.do_bench`` (CUDA events, L2 flushed before each run).
Relative error: the largest absolute difference over the largest absolute reference value, per
tensor. Files: deform_gpu.md (tables), deform_gpu.png (the sweep), deform_gpu.json (numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.testing
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from cnnbench.ops import deform
from cnnbench.ops import deform_triton

NAMES = ("input", "offset", "mask", "weight", "bias")

# kernel (kh, kw), stride, dilation, padding, offset groups, weight groups, mask, bias, offset
# scale; batch 3 and a 9x11 input with 16 channels (6 out per weight group... see _case).
GRID = [
    ((3, 3), 1, 1, 1, 1, 1, True, True, 1.5),
    ((3, 3), 2, 1, 1, 2, 1, True, True, 1.5),
    ((3, 3), 1, 2, 2, 1, 1, True, False, 1.5),
    ((2, 3), 1, 1, (1, 0), 2, 1, False, True, 2.0),
    ((3, 1), 2, 2, 1, 1, 2, True, True, 1.5),
    ((1, 3), 1, 1, 0, 4, 2, True, False, 1.5),
    ((5, 5), 1, 1, 2, 2, 1, True, True, 3.0),
    ((1, 1), 1, 1, 0, 1, 1, False, False, 1.5),
    ((3, 3), 1, 1, 1, 2, 1, True, True, 40.0),  # every tap far outside: output = bias
]


def _case(kernel, stride, dilation, padding, og, wg, use_mask, use_bias, scale, batch=3,
          channels=16, height=9, width=11, out_channels=24, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    (sh, sw), (ph, pw), (dh, dw) = (torch.nn.modules.utils._pair(v)
                                    for v in (stride, padding, dilation))
    ho = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    taps = og * kh * kw
    offset = torch.randn(batch, 2 * taps, ho, wo, generator=g)
    # Far: every offset at least `scale` pixels, so every tap lies outside the image.
    offset = offset.sign() * scale + offset if scale > 20 else offset * scale
    data = dict(input=torch.randn(batch, channels, height, width, generator=g), offset=offset,
                mask=torch.rand(batch, taps, ho, wo, generator=g) if use_mask else None,
                weight=torch.randn(out_channels, channels // wg, kh, kw, generator=g)
                / math.sqrt(channels // wg * kh * kw),
                bias=torch.randn(out_channels, generator=g) if use_bias else None)
    data = {k: v.to(device) if v is not None else None for k, v in data.items()}
    grad = torch.randn(batch, out_channels, ho, wo, generator=g).to(device)
    return data, grad, dict(stride=stride, padding=padding, dilation=dilation)


def _grads(fn, data, grad, geometry, dtype):
    leaves = {k: v.detach().to(dtype).clone().requires_grad_() for k, v in data.items()
              if v is not None}
    out = fn(leaves["input"], leaves["offset"], leaves["weight"], leaves.get("bias"),
             mask=leaves.get("mask"), **geometry)
    out.backward(grad.to(dtype))
    return {"output": out.detach().float(), **{k: v.grad.float() for k, v in leaves.items()}}


def _relative(got, ref):
    return {k: ((got[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30)).item()
            for k in ref}


class TF32Off:
    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def check():
    with TF32Off():
        for case in GRID:
            data, grad, geometry = _case(*case)
            rounded = {}
            for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)):
                # The reference sees the same rounded inputs as the half-precision run.
                same = {k: v.to(dtype).float() if v is not None else None for k, v in data.items()}
                ref = _grads(tv_deform_conv2d, same, grad.to(dtype).float(), geometry,
                             torch.float32)
                try:
                    got = _grads(deform_triton.deform_conv2d, same, grad.to(dtype).float(),
                                 geometry, dtype)
                except Exception as exc:  # a kernel that fails to compile is a result too
                    row = dict(case=_case_name(case), dtype=str(dtype)[6:], max_rel_err=math.inf,
                               worst="error", tolerance=tol, ok=False,
                               error=f"{type(exc).__name__}: {exc}"[:300])
                    print(f"check {_case_name(case)} {dtype}: {row['error']}", flush=True)
                    yield row
                    continue
                rel = _relative(got, ref)
                worst = max(rel, key=rel.get)
                row = dict(case=_case_name(case), dtype=str(dtype)[6:], max_rel_err=rel[worst],
                           worst=worst, tolerance=tol, ok=rel[worst] <= tol, errors=rel)
                if case[-1] > 20:  # all taps outside: exactly the bias
                    bias = same["bias"].view(1, -1, 1, 1).to(dtype).float()
                    row["far_is_bias"] = bool((got["output"] == bias).all())
                    row["ok"] = row["ok"] and row["far_is_bias"]
                yield row
                rounded[dtype] = rel
            print(f"check {_case_name(case):<40} " + "  ".join(
                f"{str(d)[6:]} {max(r.values()):.1e}" for d, r in rounded.items()), flush=True)


def _case_name(case):
    (kh, kw), s, d, p, og, wg, m, b, scale = case
    return (f"k{kh}x{kw} s{s} d{d} p{p} og{og} wg{wg}" + (" mask" if m else "")
            + (" bias" if b else "") + (" far" if scale > 20 else ""))


# --- timing ------------------------------------------------------------------------------------

def _ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def _graphed_ms(fn) -> float:
    """``fn`` captured once in a CUDA graph, timed by replays: the GPU's time without the host's
    launch path (what ``torch.compile(mode="reduce-overhead")`` gives a training step)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # autotuning and lazy initialisation happen outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return _ms(graph.replay)


def _layer(n, c, h, w, k, og, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    pad = k // 2
    taps = og * k * k

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).cuda().to(dtype)

    data = dict(input=rand(n, c, h, w), offset=rand(n, 2 * taps, h, w, scale=2.0),
                mask=torch.rand(n, taps, h, w, generator=g).cuda().to(dtype),
                weight=rand(c, c, k, k, scale=1 / math.sqrt(c * k * k)), bias=rand(c))
    return data, rand(n, c, h, w), pad


def time_layer(impl, n, c, h, w, k, og, dtype, timer=None) -> dict:
    """Forward and forward+backward medians (ms) of one implementation on one layer."""
    timer = timer or _ms
    data, grad, pad = _layer(n, c, h, w, k, og, dtype)
    leaves = {k_: v.detach().requires_grad_() for k_, v in data.items()}

    def call(t):
        if impl == "conv2d":
            return F.conv2d(t["input"], t["weight"], t["bias"], padding=pad)
        fn = deform_triton.deform_conv2d if impl == "triton" else tv_deform_conv2d
        return fn(t["input"], t["offset"], t["weight"], t["bias"], padding=pad, mask=t["mask"])

    def fwd():
        with torch.no_grad():
            call(data)

    def fwd_bwd():
        for t in leaves.values():
            t.grad = None
        call(leaves).backward(grad)

    try:
        result = {"fwd_ms": timer(fwd), "fwd_bwd_ms": timer(fwd_bwd)}
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        result = {"fwd_ms": None, "fwd_bwd_ms": None, "error": str(exc).splitlines()[0][:120]}
    data.clear(), leaves.clear()  # free the layer's tensors before the next one
    torch.cuda.empty_cache()
    return result


def default_shape(timer=None, label="default"):
    with TF32Off():
        for impl in ("triton", "torchvision", "conv2d"):
            t = time_layer(impl, 8, 64, 56, 56, 3, 1, torch.float32, timer)
            print(f"{label} 8x64x56x56 k3 fp32 {impl:<12} fwd {t['fwd_ms']} ms  "
                  f"fwd+bwd {t['fwd_bwd_ms']} ms", flush=True)
            yield {"impl": impl, **t}


def graphed_default_shape():
    """The default shape again, each call captured in a CUDA graph (GPU time only)."""
    yield from default_shape(_graphed_ms, "graphed")


#             N    C    H    k  og
SWEEP = [(8, 64, 56, 3, 1), (1, 64, 56, 3, 1), (32, 64, 56, 3, 1), (8, 32, 56, 3, 1),
         (8, 256, 28, 3, 1), (8, 512, 14, 3, 1), (8, 64, 7, 3, 1), (8, 64, 112, 3, 1),
         (8, 64, 56, 1, 1), (8, 64, 56, 5, 1), (8, 64, 56, 3, 4), (32, 512, 7, 3, 1)]


def sweep(shapes=SWEEP, dtypes=(torch.float32, torch.bfloat16)):
    with TF32Off():
        for dtype in dtypes:
            for n, c, h, k, og in shapes:
                row = {"batch": n, "channels": c, "size": h, "kernel": k, "offset_groups": og,
                       "dtype": str(dtype)[6:]}
                tv_dtype = torch.float16 if dtype == torch.bfloat16 else dtype
                for impl, dt in (("triton", dtype), ("torchvision", tv_dtype), ("conv2d", dtype)):
                    t = time_layer(impl, n, c, h, h, k, og, dt)
                    row.update({f"{impl}_{key}": v for key, v in t.items()})
                for key in ("fwd_ms", "fwd_bwd_ms"):
                    tv, tr = row.get(f"torchvision_{key}"), row.get(f"triton_{key}")
                    row[f"speedup_{key}"] = tv / tr if tv and tr else None
                print(f"sweep {_shape_name(row):<28} " + "  ".join(
                    f"{key} tv/triton {row[f'speedup_{key}']:.2f}x" if row[f"speedup_{key}"]
                    else f"{key} --" for key in ("fwd_ms", "fwd_bwd_ms")), flush=True)
                yield row


def _shape_name(row):
    return (f"{row['batch']}x{row['channels']}x{row['size']}x{row['size']} k{row['kernel']}"
            f" og{row['offset_groups']} {row['dtype']}")


def train_step(batch=32, timer=None, label="train"):
    """resnet18-dcn: forward, backward and an SGD step with each deformable op."""
    from cnnbench.models import get_model, get_model_info

    size = get_model_info("resnet18-dcn").input_size
    with TF32Off():
        for impl, fn in (("triton", deform_triton.deform_conv2d),
                         ("torchvision", deform.torchvision_deform_conv2d)):
            original = deform.deform_conv2d
            deform.deform_conv2d = fn  # DeformConv2d.forward looks the name up at call time
            try:
                torch.manual_seed(0)
                model = get_model("resnet18-dcn").cuda().train()
                x = torch.randn(batch, *size, device="cuda")
                labels = torch.randint(0, 10, (batch,), device="cuda")
                opt = torch.optim.SGD(model.parameters(), lr=1e-3)

                def step():
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(model(x), labels).backward()
                    opt.step()

                row = {"impl": impl, "batch": batch, "input_size": list(size),
                       "step_ms": (timer or _ms)(step)}
            finally:
                deform.deform_conv2d = original
            print(f"{label} resnet18-dcn batch {batch} {impl}: {row['step_ms']:.2f} ms", flush=True)
            yield row


# --- report ------------------------------------------------------------------------------------

def _f(v, digits=3):
    return "--" if v is None else f"{v:.{digits}f}"


def markdown(result: dict) -> str:
    lines = [f"GPU: {result['device_name']}; torch {result['torch']}, triton {result['triton']}, "
             f"torchvision {result['torchvision']}; float32 with TF32 off.", ""]
    if result.get("check"):
        lines += ["| case | dtype | max rel err | worst tensor | ok |", "|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['dtype']} | {r['max_rel_err']:.1e} | {r['worst']} | "
                  f"{'yes' if r['ok'] else '**no**'} |" for r in result["check"]]
        lines.append("")
    if result.get("default"):
        rows = {r["impl"]: r for r in result["default"]}
        lines += ["| impl | fwd ms | fwd+bwd ms |", "|---|---|---|"]
        lines += [f"| {i} | {_f(r['fwd_ms'])} | {_f(r['fwd_bwd_ms'])} |" for i, r in rows.items()]
        tr, tv, conv = (rows.get(i, {}) for i in ("triton", "torchvision", "conv2d"))
        if tr.get("fwd_ms") and tv.get("fwd_ms") and conv.get("fwd_ms"):
            lines += ["", f"triton vs torchvision: forward {tv['fwd_ms'] / tr['fwd_ms']:.2f}x, "
                          f"forward+backward {tv['fwd_bwd_ms'] / tr['fwd_bwd_ms']:.2f}x faster; "
                          f"forward+backward = {tr['fwd_bwd_ms'] / conv['fwd_bwd_ms']:.2f}x the "
                          f"plain conv2d's", ""]
    if result.get("sweep"):
        lines += ["| shape NxCxHxW k og | dtype | triton fwd | torchvision fwd | speedup | "
                  "triton fwd+bwd | torchvision fwd+bwd | speedup | conv2d fwd+bwd |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in result["sweep"]:
            lines.append(
                f"| {r['batch']}x{r['channels']}x{r['size']}x{r['size']} k{r['kernel']} "
                f"og{r['offset_groups']} | {r['dtype']} | {_f(r.get('triton_fwd_ms'))} | "
                f"{_f(r.get('torchvision_fwd_ms'))} | {_f(r.get('speedup_fwd_ms'), 2)}x | "
                f"{_f(r.get('triton_fwd_bwd_ms'))} | {_f(r.get('torchvision_fwd_bwd_ms'))} | "
                f"{_f(r.get('speedup_fwd_bwd_ms'), 2)}x | {_f(r.get('conv2d_fwd_bwd_ms'))} |")
        speedups = [r[k] for r in result["sweep"] for k in ("speedup_fwd_ms", "speedup_fwd_bwd_ms")
                    if r.get(k)]
        if speedups:
            lines += ["", f"slowest triton/torchvision ratio over the sweep: {min(speedups):.2f}x "
                          f"(>1 means triton is faster everywhere); median {sorted(speedups)[len(speedups) // 2]:.2f}x", ""]
    if result.get("train"):
        rows = {r["impl"]: r for r in result["train"]}
        lines += ["| resnet18-dcn training step | ms |", "|---|---|"]
        lines += [f"| {i} (batch {r['batch']}, input {r['input_size']}) | {r['step_ms']:.2f} |"
                  for i, r in rows.items()]
        if len(rows) == 2:
            lines += ["", f"triton speeds the step up "
                          f"{rows['torchvision']['step_ms'] / rows['triton']['step_ms']:.2f}x", ""]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    for ax, dtype in zip(axes, ("float32", "bfloat16")):
        rows = [r for r in result["sweep"] if r["dtype"] == dtype]
        labels = [f"{r['batch']}x{r['channels']}x{r['size']}² k{r['kernel']} og{r['offset_groups']}"
                  for r in rows]
        xs = range(len(rows))
        for offset_, key, name in ((-0.2, "speedup_fwd_ms", "forward"),
                                   (0.2, "speedup_fwd_bwd_ms", "forward+backward")):
            ax.bar([x + offset_ for x in xs], [r.get(key) or 0 for r in rows], width=0.4,
                   label=name)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(2.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(list(xs), labels, rotation=70, fontsize=7)
        ax.set_title(f"{dtype} (torchvision: {'float16' if dtype == 'bfloat16' else dtype})")
        ax.set_yscale("log")
        ax.legend()
    axes[0].set_ylabel("torchvision time / triton time")
    fig.suptitle(f"deform_conv2d, Triton against torchvision on {result['device_name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder for deform_gpu.md, .png and .json")
    parser.add_argument("--sections", default="check,default,sweep,train")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("deform_gpu.py needs a CUDA GPU")
    os.makedirs(args.out, exist_ok=True)
    import torchvision

    result = {"device_name": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "torchvision": torchvision.__version__}
    sections = {"check": check, "default": default_shape, "sweep": sweep, "train": train_step,
                "graphed": graphed_default_shape,
                "graphed_train": lambda: train_step(timer=_graphed_ms, label="graphed train")}
    for name in args.sections.split(","):
        start = time.perf_counter()
        result[name] = []
        for row in sections[name]():  # saved row by row: a run cut short keeps what it made
            result[name].append(row)
            save(result, args.out)
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", flush=True)
    if result.get("sweep"):
        plot(result, os.path.join(args.out, "deform_gpu.png"))
    print(markdown(result))


def save(result: dict, out: str) -> None:
    with open(os.path.join(out, "deform_gpu.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "deform_gpu.md"), "w") as f:
        f.write(markdown(result) + "\n")


if __name__ == "__main__":
    main()
