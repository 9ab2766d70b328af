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

import contextlib
import fnmatch
import gc
import json
import math
import os
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from cnnbench import config
from cnnbench.building import build, eval_mode
from cnnbench.devices import resolve_device
from cnnbench.errors import CnnbenchError
from cnnbench.inputs import parse_input_size
from cnnbench.registry import TORCHVISION_PREFIX, get_model_info, list_models
from cnnbench.summary import summarize
from cnnbench.training.optimizers import OPTIMIZERS, build_optimizer

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SWEEPS = ("batch", "size")
DEFORM_SWEEPS = ("batch", "size", "shape")
DEFORM_SHAPE = (8, 64, 56, 56, 3)
DEFORM_SWEEP_SHAPES = [(8, 64, 28, 28, 3), (8, 64, 56, 56, 3), (8, 128, 28, 28, 3),
                       (8, 256, 14, 14, 3)]
FEW_CORES = 4  # up to this many, bench runs on one thread unless told otherwise
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


def time_phases(phases: dict, min_run_time: float, device: torch.device,
                warmup: int = 2) -> dict:
    """Median and IQR (ms) of each of ``phases`` (name -> function, called in order as one
    step), timed apart within every step with a synchronisation at each boundary, as timm's
    ``--detail``; at least 5 steps and ``min_run_time`` seconds."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        for fn in phases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in phases}
    start = time.perf_counter()
    while len(times[next(iter(phases))]) < 5 or time.perf_counter() - start < min_run_time:
        sync()
        t0 = time.perf_counter()
        for name, fn in phases.items():
            fn()
            sync()
            t1 = time.perf_counter()
            times[name].append(t1 - t0)
            t0 = t1
    quartiles = {name: np.percentile(v, [25, 50, 75]) * 1e3 for name, v in times.items()}
    return {name: {"median_ms": float(q[1]), "iqr_ms": float(q[2] - q[0])}
            for name, q in quartiles.items()}


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
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- bench MODEL --------------------------------------------------------------------------------

def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_threads(threads: int | None = None) -> tuple[int, str]:
    """Torch threads for a benchmark and why: ``threads`` when given, else 1 on a machine with
    few cores (where OpenMP's synchronisation costs more than small operators gain), else
    PyTorch's own choice."""
    if threads is not None:
        if threads < 1:
            raise CnnbenchError("--threads must be >= 1")
        return threads, "--threads"
    cores = available_cores()
    if cores <= FEW_CORES:
        return 1, f"default with {cores} core{'s' * (cores > 1)}; --threads N to change"
    return torch.get_num_threads(), "PyTorch's default"


@contextlib.contextmanager
def _num_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_wildcard(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def expand_models(patterns: list[str]) -> list[str]:
    """Model names from names and shell wildcards: ``res*`` matches registered names,
    ``torchvision:resnet1*`` torchvision's. A pattern that matches nothing is an error."""
    names = []
    for pattern in patterns:
        if not is_wildcard(pattern):
            get_model_info(pattern)  # an unknown name fails here, before any benchmark
            names.append(pattern)
            continue
        if pattern.startswith(TORCHVISION_PREFIX):
            import torchvision.models as tvm

            found = [TORCHVISION_PREFIX + n for n in
                     fnmatch.filter(tvm.list_models(), pattern[len(TORCHVISION_PREFIX):])]
        else:
            found = fnmatch.filter(list_models(), pattern)
        if not found:
            raise CnnbenchError(f"no model matches {pattern!r}: `cnnbench models` lists ours, "
                                "torchvision:PATTERN matches torchvision's")
        names += sorted(found)
    return list(dict.fromkeys(names))


def check_optimizer(choice: str | None) -> None:
    if choice is not None and choice not in OPTIMIZERS:
        raise CnnbenchError(f"bad --optimizer {choice!r}: use {', '.join(OPTIMIZERS)}")


def training_optimizer(name: str, choice: str | None = None) -> dict:
    """The optimizer of the timed training step: the one of the model's recipe
    (``experiments/NAME.yaml``) with its hyper-parameters, or ``choice`` with the recipe's (else
    the trainer's default) hyper-parameters."""
    check_optimizer(choice)
    recipe = config.default_recipe(name)
    try:
        settings = config.resolve(name)
    except CnnbenchError:  # no recipe, and a task the trainer cannot run: its defaults
        if recipe is not None:
            raise
        settings = {key: spec[0] for key, spec in config.TRAINER_KEYS.items()}
    source = ("--optimizer" if choice else
              f"{recipe.parent.name}/{recipe.name}" if recipe else "the trainer's default")
    name = choice or settings["optimizer"]
    keys = ("lr", *OPTIMIZERS[name].keys)
    return {"name": name, **{k: settings[k] for k in keys}, "source": source}


def make_optimizer(model: torch.nn.Module, settings: dict) -> torch.optim.Optimizer:
    """The trainer's optimizer (its table and parameter groups) from :func:`training_optimizer`."""
    return build_optimizer(model, {"optimizer": settings["name"], **settings})


def check_writable(path: str | None, option: str) -> None:
    """Fail before any work when ``path`` cannot be written (missing or read-only folder)."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CnnbenchError(f"cannot write {option} {path}: it is a folder")
    if not os.path.isdir(folder):
        raise CnnbenchError(f"cannot write {option} {path}: no folder {folder}")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise CnnbenchError(f"cannot write {option} {path}: permission denied")


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


def bench_models(patterns: list[str], *, input_size: str | None = None,
                 model_args: dict | None = None, **options) -> list[dict]:
    """:func:`bench_model` for every model the names and wildcards in ``patterns`` give;
    ``input_size`` is ``--input-size``'s text, read against each model's own channels."""
    names = expand_models(patterns)
    check_optimizer(options.get("optimizer"))
    sizes = [parse_input_size(input_size, get_model_info(n), model_args) for n in names]
    return [bench_model(n, input_size=s, model_args=model_args, **options)
            for n, s in zip(names, sizes)]


@dataclass
class _Setup:
    """What every timed configuration of one model shares."""
    name: str
    runner: torch.nn.Module  # the model, or its compiled form
    model: torch.nn.Module
    device: torch.device
    amp: torch.dtype | None
    memory_format: torch.memory_format
    min_run_time: float
    num_classes: int | None  # classifiers: cross-entropy against random labels
    optimizer: dict | None  # training_optimizer(); None: no training step
    detail: bool
    notes: list


def bench_model(name: str, *, batch_sizes=(1, 8, 32), input_size=None, device: str = "auto",
                precision: str = "fp32", channels_last: bool = False, compile: bool = False,
                model_args: dict | None = None, min_run_time: float = 0.2, train: bool = True,
                sweep: str | None = None, threads: int | None = None,
                optimizer: str | None = None, detail: bool = False) -> dict:
    """Inference and training-step speed of ``name`` per batch size (or over a sweep).

    Returns ``{"model", "device", ..., "rows": [...], "notes": [...]}``; each row has timm's
    column names plus ``*_step_time_iqr`` (ms), ``*_peak_mem_mb`` and ``*_gflops_per_sec``;
    with ``detail``, the training step's ``train_fwd_time``, ``train_bwd_time`` and
    ``train_opt_time`` (timm's names; ms). A batch that runs out of memory is retried at half
    the size, as timm's benchmark does; the row then lists the sizes that failed.
    """
    info = get_model_info(name)
    dev = resolve_device(device, allow_mps=False)
    amp = parse_precision(precision)
    if min_run_time <= 0:
        raise CnnbenchError("--min-run-time must be positive")
    n_threads, threads_source = choose_threads(threads)
    optimizer_settings = training_optimizer(name, optimizer) if train else None
    size = tuple(input_size or info.input_size)
    with _num_threads(n_threads):
        rows, notes = _bench_rows(name, info, dev, amp, size, list(batch_sizes), channels_last,
                                  compile, model_args, min_run_time, optimizer_settings, sweep,
                                  detail)
    return {"model": info.name, "task": info.task, "device": str(dev),
            "device_name": _device_name(dev), "precision": precision,
            "channels_last": channels_last, "compile": compile, "sweep": sweep,
            "threads": n_threads, "threads_source": threads_source, "cores": available_cores(),
            "optimizer": optimizer_settings, "detail": detail, "min_run_time": min_run_time,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rows": rows, "notes": notes}


def _bench_rows(name, info, dev, amp, size, batch_sizes, channels_last, compile, model_args,
                min_run_time, optimizer, sweep, detail) -> tuple[list, list]:
    summaries: dict = {}

    def summary(s):
        if s not in summaries:
            summaries[s] = summarize(name, s, batch_size=1, depth=0, model_args=model_args)
        return summaries[s]

    def fits(s):
        try:
            summary(s)
            return True
        except CnnbenchError:
            return False

    configs = _sweep_configs(sweep, batch_sizes, size, fits)
    notes = []
    if sweep == "size" and len(configs) < 2:
        notes.append(f"{info.name} runs at {size[1]}x{size[2]} only (fixed-size dense layers): "
                     "nothing to sweep")
    params = summary(size)["total_params"]

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    try:
        model, _ = build(name, model_args, in_channels=size[0], device=dev)
        model = model.to(memory_format=memory_format)
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
        raise CnnbenchError(f"out of memory on {dev} placing {info.name} ({params / 1e6:.1f} M "
                            "parameters) on it: try --device cpu") from None
    runner = model
    if compile:
        try:
            runner = torch.compile(model)
        except Exception as exc:  # noqa: BLE001 - a backend can fail in many ways
            raise CnnbenchError(f"--compile failed: {str(exc).splitlines()[0]}") from None
    num_classes = None
    if optimizer is not None and info.task == "classification":
        with torch.no_grad(), eval_mode(model):
            probe = model(torch.zeros(1, *size, device=dev))
        if isinstance(probe, torch.Tensor) and probe.dim() == 2:
            num_classes = probe.shape[1]
    setup = _Setup(name, runner, model, dev, amp, memory_format, min_run_time, num_classes,
                   optimizer, detail, notes)

    if optimizer is not None:
        notes += [GENERIC_LOSS_NOTE, "the weights are restored after every batch size, so each "
                                     "starts from the same model"]
    notes.append("peak memory: " + ("torch.cuda.max_memory_allocated above the memory in use "
                                    "before the step" if dev.type == "cuda" else
                                    "live storages created by PyTorch operators during one step "
                                    "(a dispatch mode; operator scratch memory not seen)"))
    notes.append("FLOPs from FlopCounterMode (1 multiply-add = 2 FLOPs); the training step is "
                 "counted as 3x the forward")
    if detail and optimizer is not None:
        notes.append("--detail: forward (with the loss), backward and optimizer step (with "
                     "zero_grad) timed apart within each step, synchronised between them; their "
                     "medians need not add up to the step's")
    rows = []
    for batch, s in configs:
        flops = summary(s)["flops"]
        row = {"model": info.name, "infer_batch_size": batch, "infer_img_size": s[-1],
               "infer_input_size": list(s), "param_count": round(params / 1e6, 3),
               "gmacs": round(flops / 2 / 1e9, 4), "flops_per_sample": flops}
        _at_largest_batch(setup, "infer", batch, s, row)
        if optimizer is not None:
            _at_largest_batch(setup, "train", batch, s, row)
        rows.append(row)
    return rows, notes


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or any(
        s in str(exc) for s in ("out of memory", "can't allocate memory",
                                "CUBLAS_STATUS_ALLOC_FAILED"))


def _at_largest_batch(setup: _Setup, mode: str, batch: int, size, row: dict) -> None:
    """Time ``mode`` (infer or train) at ``batch`` into ``row``, halving the batch after each
    out-of-memory error; out of memory at batch 1 is a one-line error naming what to reduce."""
    what = "the training step" if mode == "train" else "inference"
    failed = []
    while True:
        try:
            figures = _TIMED[mode](setup, batch, size, row["flops_per_sample"])
            break
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if not _is_out_of_memory(exc):
                raise
        # Out of the except block: the traceback, and the tensors its frames hold, are gone.
        gc.collect()
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
        failed.append(batch)
        if batch == 1:
            ways = ["a smaller --input-size"]
            if setup.amp is None and setup.device.type == "cuda":
                ways.append("--precision bf16")
            ways += ["--no-train"] if mode == "train" else []
            raise CnnbenchError(f"out of memory on {setup.device} in {what} of {setup.name} at "
                                f"batch 1, input {'x'.join(map(str, size))}: try "
                                f"{' or '.join(ways)}")
        batch //= 2
    if not figures:  # the training step could not run: said in a note
        return
    row.update({f"{mode}_batch_size": batch, f"{mode}_img_size": size[-1], **figures})
    if failed:
        row[f"{mode}_oom_batch_sizes"] = failed
        setup.notes.append(f"{setup.name}: {what} ran out of memory at batch "
                           f"{', '.join(map(str, failed))}; measured at batch {batch} (halving "
                           "the batch, as timm's benchmark does)")


def _example_input(batch: int, size, setup: _Setup) -> torch.Tensor:
    return torch.randn(batch, *size, device=setup.device).to(memory_format=setup.memory_format)


def _figures(mode: str, t: dict, batch: int, flops: float, peak_mb: float) -> dict:
    """Timm's columns from a timing; ``flops`` per sample of the forward (a training step
    counts 3 times as much)."""
    seconds = t["median_ms"] / 1e3
    work = (3 if mode == "train" else 1) * flops * batch
    return {f"{mode}_samples_per_sec": round(batch / seconds, 2),
            f"{mode}_step_time": round(t["median_ms"], 3),
            f"{mode}_step_time_iqr": round(t["iqr_ms"], 3),
            f"{mode}_gflops_per_sec": round(work / seconds / 1e9, 2),
            f"{mode}_peak_mem_mb": round(peak_mb, 2)}


def _time_infer(setup: _Setup, batch: int, size, flops: float) -> dict:
    x = _example_input(batch, size, setup)

    def infer():
        with torch.inference_mode(), _autocast(setup.device, setup.amp):
            return setup.runner(x)

    setup.model.eval()
    try:
        t = time_call(infer, setup.min_run_time, setup.device)
        return _figures("infer", t, batch, flops, peak_memory_mb(infer, setup.device))
    except RuntimeError as exc:
        if _is_out_of_memory(exc):
            raise
        raise CnnbenchError(f"{setup.name} failed at batch {batch}, input {list(size)}: "
                            f"{str(exc).strip().splitlines()[0]}") from None


def _time_train(setup: _Setup, batch: int, size, flops: float) -> dict:
    """The training step's figures at ``batch``, or ``{}`` (with a note) when it cannot run."""
    dev, model = setup.device, setup.model
    x = _example_input(batch, size, setup)
    labels = (torch.randint(0, setup.num_classes, (batch,), device=dev)
              if setup.num_classes else None)
    optimizer = make_optimizer(model, setup.optimizer)
    scaler = torch.amp.GradScaler(dev.type) if setup.amp is torch.float16 and \
        dev.type == "cuda" else None
    state = {}

    def forward():
        with _autocast(dev, setup.amp):
            state["loss"] = generic_loss(setup.runner(x), labels)

    def backward():
        loss = state.pop("loss")
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def optimizer_step():
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step():
        forward()
        backward()
        optimizer_step()

    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        t = time_call(step, setup.min_run_time, dev)
        figures = _figures("train", t, batch, flops, peak_memory_mb(step, dev))
        if setup.detail:
            phases = time_phases({"fwd": forward, "bwd": backward, "opt": optimizer_step},
                                 setup.min_run_time, dev)
            for key, p in phases.items():
                figures[f"train_{key}_time"] = round(p["median_ms"], 3)
                figures[f"train_{key}_time_iqr"] = round(p["iqr_ms"], 3)
        return figures
    except (RuntimeError, ValueError, AssertionError) as exc:
        if _is_out_of_memory(exc):
            raise
        note = (f"training step skipped at batch {batch}: "
                f"{str(exc).strip().splitlines()[0][:120]}")
        if note not in setup.notes:
            setup.notes.append(note)
        return {}
    finally:
        state.clear()
        model.load_state_dict(weights)


_TIMED = {"infer": _time_infer, "train": _time_train}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


# --- bench deformconv ---------------------------------------------------------------------------

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
    dev = resolve_device(device, allow_mps=False)
    if precision not in PRECISIONS:
        parse_precision(precision)
    dtype = PRECISIONS[precision] or torch.float32
    if min_run_time <= 0:
        raise CnnbenchError("--min-run-time must be positive")
    available = deform_impls()
    impls = _default_deform_impls(dev) if impls is None else impls
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


def write_json(result, path: str) -> None:
    try:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    except OSError as exc:
        raise CnnbenchError(f"cannot write --json-file {path}: {exc.strerror}") from None


def plot_sweep(result: dict | list[dict], path: str) -> None:
    """Step time (median, IQR bars) and throughput against the swept batch (a log-2 axis) or
    size; ``result`` may be a list of models' results, drawn side by side."""
    try:
        import matplotlib
    except ImportError:
        raise CnnbenchError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = result if isinstance(result, list) else [result]
    result = results[0]
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
        ticks: set = set()
        for res in results:
            name = f"{res['model']} " if len(results) > 1 else ""
            for mode in ("infer", "train"):
                sel = [r for r in res["rows"] if f"{mode}_step_time" in r]
                xs = [r[f"{mode}_img_size" if by_size else f"{mode}_batch_size"] for r in sel]
                if not sel:
                    continue
                ticks.update(xs)
                ax_time.errorbar(xs, [r[f"{mode}_step_time"] for r in sel],
                                 yerr=[r[f"{mode}_step_time_iqr"] for r in sel], marker="o",
                                 capsize=3, label=name + mode)
                ax_rate.plot(xs, [r[f"{mode}_samples_per_sec"] for r in sel], marker="o",
                             label=name + mode)
        for ax in (ax_time, ax_rate):
            ax.set_xlabel("image size (px)" if by_size else "batch size")
            if not by_size:  # 1, 2, 4, ... evenly spaced rather than crowded into a corner
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
                ax.minorticks_off()
            ax.legend()
        ax_time.set_ylabel("ms per step (median, IQR bars)")
        ax_rate.set_ylabel("samples / s")
        models = ", ".join(r["model"] for r in results)
        fig.suptitle(f"{models} on {result['device_name']} ({result['precision']})")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise CnnbenchError(f"cannot write --plot {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
