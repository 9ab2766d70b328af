"""Timing, memory and thread choices shared by every benchmark.

Timing uses ``torch.utils.benchmark.Timer.blocked_autorange`` (it synchronises CUDA around every
block) after warm-up calls; every figure is the median over the blocks with the inter-quartile
range as its spread.

Peak memory is what one step allocates above what was allocated before it. On CUDA that is
``torch.cuda.max_memory_allocated``; on the CPU PyTorch keeps no such counter, so a dispatch
mode adds up the storages created by PyTorch operators while they are alive (scratch memory
inside an operator and code compiled by ``--compile`` are not seen).
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
import numpy as np
import torch

from cnnbench import devices
from cnnbench.errors import CnnbenchError


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


FEW_CORES = 4  # up to this many, bench runs on one thread unless told otherwise


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


MAX_RUN_TIME = 3600.0  # seconds per figure: more is a mistake (inf would never return)


def check_min_run_time(seconds: float) -> float:
    """``--min-run-time``: a finite number of seconds in (0, 3600]."""
    if not (0 < seconds <= MAX_RUN_TIME):  # also false for nan
        raise CnnbenchError(f"--min-run-time must be in (0, {MAX_RUN_TIME:g}] seconds, "
                            f"not {seconds}")
    return seconds


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
            # Strided tensors only: a sparse one (ours' backward makes small CSR patterns) has
            # no storage of its own to ask for.
            if (isinstance(t, torch.Tensor) and t.device.type == "cpu"
                    and t.layout == torch.strided):
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


def autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
def num_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def device_name(dev: torch.device) -> str:
    """The device's name (devices.py); on the CPU with the threads a measurement used."""
    if dev.type == "cuda":
        return devices.device_name(dev)
    n = torch.get_num_threads()
    return f"{devices.device_name(dev)} ({n} thread{'s' * (n > 1)})"
