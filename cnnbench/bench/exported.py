"""`cnnbench bench FILE.onnx|FILE.pt`: an exported model's inference speed beside PyTorch's.

The file (``cnnbench export``) is timed in its runtime, onnxruntime's CPU provider or
``torch.jit``; beside it, the same computation in PyTorch: the run the file's metadata names,
rebuilt with its input preparation and decoding (``cnnbench.export.Exported``) and run eagerly,
and with ``--compile`` also through ``torch.compile``. Every runtime gets the same input (random
pixels of the file's dtype and shape), the same threads (onnxruntime's intra-op threads too) and
the timing of ``bench MODEL`` (:func:`cnnbench.bench.timing.time_call`: median and IQR).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnbench.bench.timing import (available_cores, choose_threads, device_name, num_threads,
                                   time_call)
from cnnbench.errors import CnnbenchError
from cnnbench.files import RunLayout

SUFFIXES = (".onnx", ".pt")
RUNTIME_NAMES = {"onnx": "onnxruntime (CPU provider)", "torchscript": "torch.jit (TorchScript)"}


def is_exported_file(name: str) -> bool:
    """``bench``'s argument names an exported file rather than a model."""
    return Path(name).suffix in SUFFIXES


def _example(meta: dict, batch: int) -> torch.Tensor:
    c, h, w = meta["input"]["shape"][1:]
    generator = torch.Generator().manual_seed(batch)
    if meta["input"]["dtype"] == "uint8":
        return torch.randint(0, 256, (batch, c, h, w), dtype=torch.uint8, generator=generator)
    return torch.rand(batch, c, h, w, generator=generator)


def _pytorch_runners(meta: dict, compile: bool, notes: list) -> dict:
    """``{"eager": module, "compiled": ...}`` for the run the file came from, or ``{}`` (with a
    note) when that run is no longer there."""
    from cnnbench.export import Exported, _load_run

    run = Path(meta.get("run", ""))
    if not meta.get("run") or not RunLayout(run).config.is_file():
        notes.append(f"the run {meta.get('run')} is not here: PyTorch not timed beside the file")
        return {}
    loaded = _load_run(run, meta.get("checkpoint", "best"))
    module = Exported(loaded, meta["input"]["dtype"]).eval()
    runners = {"eager": module}
    if compile:
        runners["compiled"] = torch.compile(module)
        notes.append("compiled: torch.compile (default mode), compiled at the warm-up calls")
    return runners


def bench_exported(path: str | os.PathLike, *, batch_sizes=(1, 8, 32), min_run_time: float = 0.2,
                   threads: int | None = None, compile: bool = False) -> dict:
    """Inference step time of an exported file and of the same model in PyTorch per batch size;
    each row one runtime at one batch, with its speed relative to eager PyTorch."""
    from cnnbench.export import open_exported

    if min_run_time <= 0:
        raise CnnbenchError("--min-run-time must be positive")
    n_threads, threads_source = choose_threads(threads)
    notes: list[str] = []
    exported = open_exported(path, threads=n_threads)
    meta = exported.meta
    if "input" not in meta:
        raise CnnbenchError(f"{path} was not written by `cnnbench export` (no cnnbench "
                            "metadata): its input is unknown")
    # Loaded before the threads are set: opening a run sets its training's thread count.
    runners = {RUNTIME_NAMES[exported.format]: exported, **_pytorch_runners(meta, compile, notes)}
    with num_threads(n_threads):
        rows = []
        for batch in batch_sizes:
            x = _example(meta, batch)
            feed = x.numpy() if exported.format == "onnx" else x
            timed = {}
            for name, runner in runners.items():
                given = feed if runner is exported else x

                def step(runner=runner, given=given):
                    with torch.inference_mode():
                        return runner(given)

                timed[name] = time_call(step, min_run_time, torch.device("cpu"))
            eager = timed.get("eager")
            for name, t in timed.items():
                rows.append({
                    "model": Path(path).name, "runtime": name, "infer_batch_size": batch,
                    "infer_input_size": list(meta["input"]["shape"][1:]),
                    "infer_samples_per_sec": round(batch / (t["median_ms"] / 1e3), 2),
                    "infer_step_time": round(t["median_ms"], 3),
                    "infer_step_time_iqr": round(t["iqr_ms"], 3),
                    "speed_vs_eager": (round(eager["median_ms"] / t["median_ms"], 3)
                                       if eager else None)})
        name = device_name(torch.device("cpu"))
    notes.append("input: random pixels of the file's dtype and shape; each runtime includes the "
                 "normalisation and decoding the file holds")
    return {"file": str(path), "format": exported.format, "model": meta.get("model"),
            "task": meta.get("task"), "device": "cpu", "device_name": name,
            "input": meta["input"]["text"], "threads": n_threads,
            "threads_source": threads_source, "cores": available_cores(),
            "min_run_time": min_run_time, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "rows": rows, "notes": notes}
