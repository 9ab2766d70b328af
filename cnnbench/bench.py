"""Speed figures: `cnnbench bench MODEL` and `cnnbench bench deformconv`.

Timing uses ``torch.utils.benchmark.Timer.blocked_autorange`` (it synchronises CUDA around every
block) after warm-up calls; every figure is the median over the blocks with the inter-quartile
range as its spread. Column names follow timm's ``benchmark.py`` where they fit
(``infer_samples_per_sec``, ``infer_step_time`` in ms, ``infer_batch_size``, ``infer_img_size``,
``train_*``, ``param_count`` in millions, ``gmacs`` per sample).

Peak memory is what one step allocates above what was allocated before it. On CUDA that is
``torch.cuda.max_memory_allocated``; on the CPU PyTorch keeps no such counter, so a dispatch
mode adds up the storages created by PyTorch operators while they are alive (scratch memory
inside an operator and code compiled by ``--compile`` are not seen).
"""

from __future__ import annotations

import math
import os
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from cnnbench.errors import CnnbenchError
from cnnbench.devices import resolve_device

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SWEEPS = ("batch", "size")
DEFORM_SWEEPS = ("batch", "size", "shape")
DEFORM_SHAPE = (8, 64, 56, 56, 3)
DEFORM_SWEEP_SHAPES = [(8, 64, 28, 28, 3), (8, 64, 56, 56, 3), (8, 128, 28, 28, 3),
                       (8, 256, 14, 14, 3)]
GENERIC_LOSS_NOTE = ("training step: cross-entropy against fixed random labels for classifiers, "
                     "otherwise the mean square of every float output (so any model trains)")


# --- shared pieces ------------------------------------------------------------------------------

def parse_precision(precision: str):
    if precision not in PRECISIONS:
        raise CnnbenchError(f"bad --precision {precision!r}: use {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise CnnbenchError(f"bad {what} {text!r}: use positive integers separated by commas, "
                            "e.g. 1,8,32")
    return values


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """``N,C,H,W[,K]`` -> (N, C, H, W, K); K (square kernel) defaults to 3."""
    dims = parse_int_list(text, "--shape")
    if len(dims) not in (4, 5):
        raise CnnbenchError(f"bad --shape {text!r}: use N,C,H,W or N,C,H,W,K (e.g. 8,64,56,56,3)")
    n, c, h, w, k = (*dims, 3) if len(dims) == 4 else dims
    if k > h + 2 * (k // 2) or k > w + 2 * (k // 2):
        raise CnnbenchError(f"bad --shape {text!r}: kernel {k} is larger than the padded input")
    return n, c, h, w, k


def time_call(fn, min_run_time: float, device: torch.device, warmup: int = 2) -> dict:
    """Median and inter-quartile range (ms) of ``fn()`` with ``torch.utils.benchmark``."""
    import logging

    # torch.utils.benchmark imports cpp_extension, which warns about a missing CUDA toolkit.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.benchmark import Timer

    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return {"median_ms": m.median * 1e3, "iqr_ms": m.iqr * 1e3,
            "runs": m.number_per_run * len(m.raw_times)}


class _LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the storages created by operators while the mode is on, while alive."""

    def __init__(self):
        super().__init__()
        self.live: set[int] = set()
        self.current = self.peak = 0

    def _freed(self, key: int, nbytes: int) -> None:
        if key in self.live:
            self.live.discard(key)
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    nbytes = storage.nbytes()
                    self.live.add(key)
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._freed, key, nbytes)
        return out


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak memory one call of ``fn`` allocates above what was allocated before it (MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    tracker = _LiveTensorBytes()
    with tracker:
        fn()
    return tracker.peak / 2**20


def _autocast(device: torch.device, dtype):
    if dtype is None:
        import contextlib

        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- bench MODEL --------------------------------------------------------------------------------

def _float_outputs(output):
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for o in output for t in _float_outputs(o)]
    return []


def generic_loss(output, labels=None) -> torch.Tensor:
    """Cross-entropy for ``[N, classes]`` logits with labels, else the mean square of outputs."""
    if labels is not None and isinstance(output, torch.Tensor) and output.dim() == 2:
        return torch.nn.functional.cross_entropy(output.float(), labels)
    tensors = _float_outputs(output)
    if not tensors:
        raise CnnbenchError("the model returns no float tensor to train on")
    return sum(t.float().pow(2).mean() for t in tensors)


def _sweep_configs(sweep, batch_sizes, size, fits):
    if sweep is None:
        return [(b, size) for b in batch_sizes]
    if sweep == "batch":
        top = max(max(batch_sizes), 2)
        sizes = [2 ** i for i in range(int(math.log2(top)) + 1)]
        return [(b, size) for b in sizes]
    if sweep == "size":
        c, h, w = size
        configs = []
        for scale in (0.5, 0.75, 1, 1.5, 2):
            s = (c, max(1, round(h * scale)), max(1, round(w * scale)))
            if fits(s) and (batch_sizes[0], s) not in configs:
                configs.append((batch_sizes[0], s))
        return configs
    raise CnnbenchError(f"bad --sweep {sweep!r}: use {' or '.join(SWEEPS)}")


def bench_model(name: str, *, batch_sizes=(1, 8, 32), input_size=None, device: str = "auto",
                precision: str = "fp32", channels_last: bool = False, compile: bool = False,
                model_args: dict | None = None, min_run_time: float = 0.2, train: bool = True,
                sweep: str | None = None) -> dict:
    """Inference and training-step speed of ``name`` per batch size (or over a sweep).

    Returns ``{"model", "device", ..., "rows": [...], "notes": [...]}``; each row has timm's
    column names plus ``*_step_time_iqr`` (ms), ``*_peak_mem_mb`` and ``*_gflops_per_sec``.
    """
    from cnnbench.building import build
    from cnnbench.registry import get_model_info
    from cnnbench.summary import summarize

    info = get_model_info(name)
    dev = resolve_device(device, allow_mps=False)
    amp = parse_precision(precision)
    if min_run_time <= 0:
        raise CnnbenchError("--min-run-time must be positive")
    size = tuple(input_size or info.input_size)
    flops_cache: dict = {}

    def flops_per_sample(s):
        if s not in flops_cache:
            flops_cache[s] = summarize(name, s, batch_size=1, depth=0, model_args=model_args)
        return flops_cache[s]["flops"]

    def fits(s):
        try:
            flops_per_sample(s)
            return True
        except CnnbenchError:
            return False

    configs = _sweep_configs(sweep, list(batch_sizes), size, fits)
    notes = []
    if sweep == "size" and len(configs) < 2:
        notes.append(f"{info.name} runs at {size[1]}x{size[2]} only (fixed-size dense layers): "
                     "nothing to sweep")
    params = flops_cache[size]["total_params"] if size in flops_cache else \
        summarize(name, size, batch_size=1, depth=0, model_args=model_args)["total_params"]

    model, _ = build(name, model_args, in_channels=size[0], device=dev)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    runner = model
    if compile:
        try:
            runner = torch.compile(model)
        except Exception as exc:  # noqa: BLE001 - a backend can fail in many ways
            raise CnnbenchError(f"--compile failed: {str(exc).splitlines()[0]}") from None

    notes += [GENERIC_LOSS_NOTE] if train else []
    notes.append("peak memory: " + ("torch.cuda.max_memory_allocated above the memory in use "
                                    "before the step" if dev.type == "cuda" else
                                    "live storages created by PyTorch operators during one step "
                                    "(a dispatch mode; operator scratch memory not seen)"))
    notes.append("FLOPs from FlopCounterMode (1 multiply-add = 2 FLOPs); the training step is "
                 "counted as 3x the forward")
    rows = []
    for batch, s in configs:
        row = _bench_config(name, info, runner, model, batch, s, dev, amp, memory_format,
                            min_run_time, train, flops_per_sample(s), params, notes)
        rows.append(row)
    return {"model": info.name, "task": info.task, "device": str(dev),
            "device_name": _device_name(dev), "precision": precision,
            "channels_last": channels_last, "compile": compile, "sweep": sweep,
            "threads": torch.get_num_threads(), "min_run_time": min_run_time,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rows": rows, "notes": notes}


def _bench_config(name, info, runner, model, batch, size, dev, amp, memory_format, min_run_time,
                  train, flops, params, notes):
    x = torch.randn(batch, *size, device=dev).to(memory_format=memory_format)
    row = {"model": info.name, "infer_batch_size": batch, "infer_img_size": size[-1],
           "infer_input_size": list(size), "param_count": round(params / 1e6, 3),
           "gmacs": round(flops / 2 / 1e9, 4), "flops_per_sample": flops}

    def infer():
        with torch.inference_mode(), _autocast(dev, amp):
            return runner(x)

    model.eval()
    try:
        t = time_call(infer, min_run_time, dev)
    except RuntimeError as exc:
        raise CnnbenchError(f"{name} failed at batch {batch}, input {list(size)}: "
                            f"{str(exc).strip().splitlines()[0]}") from None
    row.update(infer_samples_per_sec=round(batch / (t["median_ms"] / 1e3), 2),
               infer_step_time=round(t["median_ms"], 3), infer_step_time_iqr=round(t["iqr_ms"], 3),
               infer_gflops_per_sec=round(flops * batch / (t["median_ms"] / 1e3) / 1e9, 2),
               infer_peak_mem_mb=round(peak_memory_mb(infer, dev), 2))
    if not train:
        return row

    labels = None
    if info.task == "classification":
        with torch.no_grad():
            probe = model(x[:1])
        if isinstance(probe, torch.Tensor) and probe.dim() == 2:
            labels = torch.randint(0, probe.shape[1], (batch,), device=dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type) if amp is torch.float16 and dev.type == "cuda" else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(dev, amp):
            loss = generic_loss(runner(x), labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    model.train()
    try:
        t = time_call(step, min_run_time, dev)
        mem = peak_memory_mb(step, dev)
    except (RuntimeError, ValueError, AssertionError) as exc:
        note = (f"training step skipped at batch {batch}: "
                f"{str(exc).strip().splitlines()[0][:120]}")
        if note not in notes:
            notes.append(note)
        return row
    row.update(train_samples_per_sec=round(batch / (t["median_ms"] / 1e3), 2),
               train_step_time=round(t["median_ms"], 3), train_step_time_iqr=round(t["iqr_ms"], 3),
               train_batch_size=batch, train_img_size=size[-1],
               train_gflops_per_sec=round(3 * flops * batch / (t["median_ms"] / 1e3) / 1e9, 2),
               train_peak_mem_mb=round(mem, 2))
    return row


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


# --- bench deformconv ---------------------------------------------------------------------------

def deform_impls():
    """The implementations compared, by name: each takes torchvision's arguments."""
    from cnnbench.ops.deform import deform_conv2d, torchvision_deform_conv2d
    from cnnbench.ops.deform_reference import deform_conv2d_reference

    return {"ours": deform_conv2d, "torchvision": torchvision_deform_conv2d,
            "notes": deform_conv2d_reference, "conv2d": None}


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
                     impls=("ours", "torchvision", "notes", "conv2d")) -> dict:
    """Ours, torchvision's, the notes' deformable convolution and a plain conv, side by side.

    The layer: ``N x C x H x W`` input, ``C`` output channels, ``K x K`` kernel, stride 1,
    padding ``K // 2``, one offset group, modulated (v2, with a mask) and a bias. Offsets are
    random with standard deviation 2 pixels, so many samples fall between pixels and some
    outside the image. ``max_abs_err`` is the largest absolute difference of the output and of
    every gradient (input, offset, mask, weight, bias) from torchvision's op.
    """
    dev = resolve_device(device, allow_mps=False)
    if precision not in PRECISIONS:
        parse_precision(precision)
    dtype = PRECISIONS[precision] or torch.float32
    if min_run_time <= 0:
        raise CnnbenchError("--min-run-time must be positive")
    available = deform_impls()
    unknown = [i for i in impls if i not in available]
    if unknown:
        raise CnnbenchError(f"unknown implementation {unknown[0]!r}: use "
                            f"{', '.join(available)}")
    rows = []
    for shape_ in _deform_sweep_shapes(sweep, tuple(shape)):
        rows += _bench_deform_shape(shape_, dev, dtype, min_run_time, impls, available)
    return {"op": "deform_conv2d", "device": str(dev), "device_name": _device_name(dev),
            "dtype": str(dtype).removeprefix("torch."), "sweep": sweep,
            "threads": torch.get_num_threads(), "min_run_time": min_run_time,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "layer": "CxC KxK kernel, stride 1, padding K//2, 1 offset group, mask and bias",
            "rows": rows, "summary": deform_summary(rows), "notes": _machine_notes(dev)}


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

    def leaves():
        return {k_: data[k_].detach().clone().requires_grad_() for k_ in names}

    def results(impl):
        tensors = leaves()
        out = call(impl, tensors)
        out.backward(data["grad"])
        used = ("input", "weight", "bias") if impl == "conv2d" else names
        return {"output": out.detach(), **{k_: tensors[k_].grad for k_ in used}}

    reference = results("torchvision") if "torchvision" in impls or "ours" in impls else None
    rows = []
    for impl in impls:
        row = {"impl": impl, "device": str(dev), "dtype": str(dtype).removeprefix("torch."),
               "batch": n, "channels": c, "height": h, "width": w, "kernel": k}
        try:
            got = reference if impl == "torchvision" else results(impl)
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


# --- files ---------------------------------------------------------------------------------------

def write_csv(rows: list[dict], path: str) -> None:
    import csv

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and not isinstance(row[k], (dict, list))]
    try:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise CnnbenchError(f"cannot write --csv {path}: {exc.strerror}") from None


def plot_sweep(result: dict, path: str) -> None:
    """Step time (median, IQR bars) and throughput against the swept batch or size."""
    try:
        import matplotlib
    except ImportError:
        raise CnnbenchError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, deform = result["rows"], "op" in result
    fig, (ax_time, ax_rate) = plt.subplots(1, 2, figsize=(10, 4))
    if deform:
        keys = [(f"{r['batch']}x{r['channels']}x{r['height']}x{r['width']}") for r in rows]
        xs = list(dict.fromkeys(keys))
        for impl in dict.fromkeys(r["impl"] for r in rows):
            sel = [r for r in rows if r["impl"] == impl and r.get("fwd_bwd_ms")]
            pos = [xs.index(f"{r['batch']}x{r['channels']}x{r['height']}x{r['width']}")
                   for r in sel]
            ax_time.errorbar(pos, [r["fwd_bwd_ms"] for r in sel],
                             yerr=[r.get("fwd_bwd_ms_iqr", 0) for r in sel], marker="o",
                             label=impl, capsize=3)
            ax_rate.plot(pos, [r["fwd_ms"] for r in sel], marker="o", label=impl)
        for ax in (ax_time, ax_rate):
            ax.set_xticks(range(len(xs)), xs, rotation=20, fontsize=8)
            ax.set_yscale("log")
            ax.legend()
        ax_time.set_ylabel("forward+backward (ms)")
        ax_rate.set_ylabel("forward (ms)")
        fig.suptitle(f"deform_conv2d on {result['device_name']}")
    else:
        by_size = result["sweep"] == "size"
        xs = [r["infer_img_size"] if by_size else r["infer_batch_size"] for r in rows]
        for mode in ("infer", "train"):
            sel = [(x, r) for x, r in zip(xs, rows) if f"{mode}_step_time" in r]
            if not sel:
                continue
            ax_time.errorbar([x for x, _ in sel], [r[f"{mode}_step_time"] for _, r in sel],
                             yerr=[r[f"{mode}_step_time_iqr"] for _, r in sel], marker="o",
                             capsize=3, label=mode)
            ax_rate.plot([x for x, _ in sel], [r[f"{mode}_samples_per_sec"] for _, r in sel],
                         marker="o", label=mode)
        for ax in (ax_time, ax_rate):
            ax.set_xlabel("image size (px)" if by_size else "batch size")
            ax.legend()
        ax_time.set_ylabel("ms per step (median, IQR bars)")
        ax_rate.set_ylabel("samples / s")
        fig.suptitle(f"{result['model']} on {result['device_name']} ({result['precision']})")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise CnnbenchError(f"cannot write --plot {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
