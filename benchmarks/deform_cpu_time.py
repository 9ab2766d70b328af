"""Deformable convolution on the CPU: wall-clock and CPU time of each implementation.

`cnnbench bench deformconv` reports wall-clock medians. On a machine shared with other jobs the
wall clock also counts the time this process waits for a core, and with several threads every
parallel region waits for its slowest thread, which punishes code made of many operators more
than one big kernel. This script prints both clocks: with ``--threads 1`` the thread's CPU time
(``time.thread_time``) is the work itself, whatever else runs on the machine.

    .venv/bin/python benchmarks/deform_cpu_time.py                 # 1 thread, default shape
    .venv/bin/python benchmarks/deform_cpu_time.py --threads 2 --repeats 5
    .venv/bin/python benchmarks/deform_cpu_time.py --shape 8,128,28,28,3
    .venv/bin/python benchmarks/deform_cpu_time.py --against HEAD   # also ours as committed
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch


def measure(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best thread CPU time of ``fn()`` in ms, after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(wall) * 1e3, min(cpu) * 1e3


def ours_at(revision: str):
    """``deform_conv2d`` of ``cnnbench/ops/deform.py`` as of a git revision, for before/after."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{revision}:cnnbench/ops/deform.py"], cwd=root,
                            check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "deform_at_revision.py")
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"deform_at_{revision}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.deform_conv2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="8,64,56,56,3", help="N,C,H,W[,K]")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impls", default="ours,torchvision,notes,conv2d")
    parser.add_argument("--against", metavar="REV",
                        help="also time ours as of this git revision (impl 'ours@REV')")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from cnnbench.bench.ops import _deform_inputs, deform_impls, parse_shape

    shape = parse_shape(args.shape)
    data = _deform_inputs(shape, torch.device("cpu"), torch.float32)
    available = deform_impls()
    impls = args.impls.split(",")
    if args.against:
        available[f"ours@{args.against}"] = ours_at(args.against)
        impls.insert(impls.index("ours") + 1 if "ours" in impls else 0, f"ours@{args.against}")
    names = ("input", "offset", "mask", "weight", "bias")
    leaves = {k: data[k].clone().requires_grad_() for k in names}
    pad = data["padding"]

    def call(impl, t):
        if impl == "conv2d":
            return torch.nn.functional.conv2d(t["input"], t["weight"], t["bias"], padding=pad)
        return available[impl](t["input"], t["offset"], t["weight"], t["bias"], padding=pad,
                               mask=t["mask"])

    print(f"shape {shape}, {args.threads} thread(s), best of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'impl':<12} {'fwd wall':>9} {'fwd cpu':>9} {'f+b wall':>9} {'f+b cpu':>9}  (ms)")
    results = {}
    for impl in impls:
        with torch.no_grad():
            fwd = measure(lambda: call(impl, data), args.repeats)

        def fwd_bwd():
            for t in leaves.values():
                t.grad = None
            call(impl, leaves).backward(data["grad"])

        both = measure(fwd_bwd, args.repeats)
        results[impl] = (fwd, both)
        print(f"{impl:<12} {fwd[0]:9.1f} {fwd[1]:9.1f} {both[0]:9.1f} {both[1]:9.1f}", flush=True)
    if "ours" in results:
        ours = results["ours"]
        for impl, (fwd, both) in results.items():
            if impl == "conv2d":
                print(f"ours takes {ours[1][0] / both[0]:.2f}x (wall), {ours[1][1] / both[1]:.2f}x "
                      f"(cpu) the plain conv's forward+backward; forward "
                      f"{ours[0][0] / fwd[0]:.2f}x (wall), {ours[0][1] / fwd[1]:.2f}x (cpu)")
            elif impl != "ours":
                print(f"ours is faster than {impl}: forward+backward {both[0] / ours[1][0]:.2f}x "
                      f"(wall), {both[1] / ours[1][1]:.2f}x (cpu); forward "
                      f"{fwd[0] / ours[0][0]:.2f}x (wall), {fwd[1] / ours[0][1]:.2f}x (cpu)")


if __name__ == "__main__":
    main()
