"""Two "nodes" x 1 process on localhost (c10d rendezvous, gloo) against ``--nproc 2`` on one.

Run: ``python benchmarks/two_nodes.py [--limit 6000] [--epochs 2] [--dir runs/bench-nodes]
[--launcher slurm [--slurm KEY=VALUE,...]]``

lenet on Fashion-MNIST, one thread per process, the same seed. Node 0 and node 1 are the same
``cnnbench train ... --nnodes 2 --node-rank R --rdzv localhost:PORT`` command started side by
side; with ``--launcher slurm`` they are one ``cnnbench train ... --launcher slurm --nnodes 2``
command, a Slurm job of two tasks (``--slurm nodes=1,ntasks_per_node=2`` on a one-node
cluster). Printed: the largest difference between the two runs over every number of
``metrics.jsonl`` (not the timings) and ``results.json``'s test metrics; the target is 1e-6.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dir", default="runs/bench-nodes")
    parser.add_argument("--launcher", default="local", help="local or slurm")
    parser.add_argument("--slurm", default=None, help="with --launcher slurm: --slurm options")
    args = parser.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "cnnbench", "train", "lenet", "--limit", str(args.limit),
            "--epochs", str(args.epochs), "--quiet", "--set", "threads=1",
            "--set", "log_graph=false", "--set", "log_images=false"]
    env_note = {"OMP_NUM_THREADS": "1"}
    import os

    env = {**os.environ, **env_note}
    rdzv = f"localhost:{free_port()}"
    t0 = time.perf_counter()
    if args.launcher == "slurm":
        nodes = [subprocess.Popen([*base, "--run-dir", str(root / "nodes"), "--nnodes", "2",
                                   "--launcher", "slurm",
                                   *(["--slurm", args.slurm] if args.slurm else [])], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    else:
        nodes = [subprocess.Popen([*base, "--run-dir", str(root / "nodes"), "--nnodes", "2",
                                   "--node-rank", str(r), "--rdzv", rdzv], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for r in (0, 1)]
    errors = [n.communicate()[1] for n in nodes]
    nodes_s = time.perf_counter() - t0
    if any(n.returncode for n in nodes):
        sys.exit(f"a node failed: {errors}")
    t0 = time.perf_counter()
    one = subprocess.run([*base, "--run-dir", str(root / "nproc2"), "--nproc", "2"], env=env,
                         capture_output=True, text=True)
    one_s = time.perf_counter() - t0
    if one.returncode:
        sys.exit(f"--nproc 2 failed: {one.stderr[-800:]}")
    worst, where = 0.0, None
    rows = [[json.loads(line) for line in (root / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("nodes", "nproc2")]
    results = [json.loads((root / run / "results.json").read_text()) for run in ("nodes", "nproc2")]
    pairs = [(f"epoch {a['epoch']} {k}", a[k], b[k]) for a, b in zip(*rows) for k in a
             if k not in ("epoch_seconds", "images_per_second")]
    pairs += [(k, results[0][k], results[1][k]) for k in results[1] if k.startswith("test_")
              and isinstance(results[1][k], float) and k != "test_seconds"]
    for name, a, b in pairs:
        if abs(a - b) >= worst:
            worst, where = abs(a - b), name
    print(json.dumps({"limit": args.limit, "epochs": args.epochs, "launcher": args.launcher,
                      "numbers": len(pairs),
                      "max_abs_difference": worst, "at": where,
                      "test_acc": [results[0]["test_acc"], results[1]["test_acc"]],
                      "processes": [results[0]["processes"], results[1]["processes"]],
                      "seconds": {"two_nodes": round(nodes_s, 1), "nproc2": round(one_s, 1)}},
                     indent=2))


if __name__ == "__main__":
    main()
