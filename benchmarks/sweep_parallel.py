"""Wall time of a 4-run CPU sweep with ``--parallel 2`` against one run after another.

Run: ``python benchmarks/sweep_parallel.py [--limit 6000] [--epochs 1] [--model lenet]``

Both sweeps are the whole command (``python -m cnnbench sweep MODEL --grid lr=0.003,0.01
--seeds 0,1 --set threads=1``), each run on one thread, on Fashion-MNIST; the target on a
2-core machine is a ratio of at most 0.65. The same runs give the same numbers either way
(checked here: the table's test metrics). Each is timed ``--repeat`` times, alternately (the
first also warms the file cache), and the best time kept. A busy machine makes it noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def sweep(folder: str, args, parallel: int) -> tuple[float, dict]:
    command = [sys.executable, "-m", "cnnbench", "sweep", args.model, "--grid",
               "lr=0.003,0.01", "--seeds", "0,1", "--limit", str(args.limit), "--epochs",
               str(args.epochs), "--set", "threads=1", "--set", "log_graph=false",
               "--set", "log_images=false", "--dir", folder, "--parallel", str(parallel),
               "--quiet", "--json"]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"sweep failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--limit", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    times, tables = {1: [], 2: []}, {}
    with tempfile.TemporaryDirectory(prefix="sweep-parallel-") as tmp:
        for n in range(args.repeat):
            for parallel in (1, 2) if n % 2 == 0 else (2, 1):
                seconds, tables[parallel] = sweep(os.path.join(tmp, f"p{parallel}-{n}"), args,
                                                  parallel)
                times[parallel].append(seconds)
    seq, par = min(times[1]), min(times[2])
    same = [r["test"] for r in tables[1]["rows"]] == [r["test"] for r in tables[2]["rows"]]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.model}, 4 runs (lr 0.003/0.01 x seeds 0/1), --limit {args.limit}, "
          f"--epochs {args.epochs}, threads 1 each, {os.cpu_count()} cores, load {load:.1f}")
    print(f"sequential   {seq:7.1f} s  (best of {', '.join(f'{t:.1f}' for t in times[1])})")
    print(f"--parallel 2 {par:7.1f} s  (best of {', '.join(f'{t:.1f}' for t in times[2])})")
    print(f"ratio        {par / seq:7.2f} x  (target <= 0.65)")
    print(f"same test metrics both ways: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
