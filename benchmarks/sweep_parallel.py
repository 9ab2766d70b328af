"""Wall time of a 4-run CPU sweep with ``--parallel 2`` against one run after another.

Run: ``python benchmarks/sweep_parallel.py [--limit 12000] [--epochs 2] [--model lenet]``

Both sweeps are the whole command (``python -m cnnbench sweep MODEL --grid lr=0.003,0.01
--seeds 0,1 --set threads=1``), each run on one thread, on Fashion-MNIST; the target on a
2-core machine is a ratio of at most 0.65. The same runs give the same numbers either way
(checked here: the table's test metrics). Each is timed ``--repeat`` times, alternately (the
first also warms the file cache), and the best time kept, with the CPU time each used: about
equal, the parallel sweep only waits less. A busy machine makes the wall times noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def cpu_seconds() -> float:
    """User + system CPU time of the finished child processes (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sweep(folder: str, args, parallel: int) -> tuple[float, float, dict]:
    command = [sys.executable, "-m", "cnnbench", "sweep", args.model, "--grid",
               "lr=0.003,0.01", "--seeds", "0,1", "--limit", str(args.limit), "--epochs",
               str(args.epochs), "--set", "threads=1", "--set", "log_graph=false",
               "--set", "log_images=false", "--dir", folder, "--parallel", str(parallel),
               "--quiet", "--json"]
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    if done.returncode:
        sys.exit(f"sweep failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, cpu, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--limit", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    times, cpus, tables = {1: [], 2: []}, {1: [], 2: []}, {}
    with tempfile.TemporaryDirectory(prefix="sweep-parallel-") as tmp:
        for n in range(args.repeat):
            for parallel in (1, 2) if n % 2 == 0 else (2, 1):
                seconds, cpu, tables[parallel] = sweep(os.path.join(tmp, f"p{parallel}-{n}"),
                                                       args, parallel)
                times[parallel].append(seconds)
                cpus[parallel].append(cpu)
    seq, par = min(times[1]), min(times[2])
    same = [r["test"] for r in tables[1]["rows"]] == [r["test"] for r in tables[2]["rows"]]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.model}, 4 runs (lr 0.003/0.01 x seeds 0/1), --limit {args.limit}, "
          f"--epochs {args.epochs}, threads 1 each, {os.cpu_count()} cores, load {load:.1f}")
    for name, parallel, best in (("sequential  ", 1, seq), ("--parallel 2", 2, par)):
        print(f"{name} {best:7.1f} s  (best of {', '.join(f'{t:.1f}' for t in times[parallel])}"
              f"; CPU {', '.join(f'{t:.1f}' for t in cpus[parallel])} s)")
    print(f"ratio        {par / seq:7.2f} x  (target <= 0.65)")
    print(f"same test metrics both ways: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
