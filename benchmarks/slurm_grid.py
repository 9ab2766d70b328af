"""An 8-run grid through Slurm, two jobs cancelled mid-epoch and resumed, against --launcher local.

Run (a Slurm controller must answer, e.g. ``.ci/slurm-local.sh start``):
``python benchmarks/slurm_grid.py [--limit 4000] [--epochs 3] [--dir runs/bench-slurm]``

The grid: lenet, lr 0.003, 0.01, 0.03, 0.1 times seeds 0, 1 (8 runs), one thread each, on the
CPU. First ``--launcher slurm --parallel 2``: as soon as the first two runs are in their
second epoch, ``scancel`` their jobs (each writes a mid-epoch checkpoint on the SIGTERM);
that sweep ends reporting the two as stopped. The same command again resumes them. Then the
same sweep with ``--launcher local``. Printed: both tables' test accuracy and loss per setting
and seed (bitwise equal is the target), the epochs the cancelled runs had when cancelled, and
the wall times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def command(args, folder: str, launcher: str) -> list[str]:
    return [sys.executable, "-m", "cnnbench", "sweep", "lenet", "--grid",
            "lr=0.003,0.01,0.03,0.1", "--seeds", "0,1", "--limit", str(args.limit),
            "--epochs", str(args.epochs), "--set", "threads=1", "--set", "log_graph=false",
            "--set", "log_images=false", "--quiet", "--json", "--dir", folder,
            "--launcher", launcher, "--parallel", "2"]


def cancel_two(proc: subprocess.Popen, folder: Path, cancelled: list) -> None:
    """Read the sweep's lines; scancel the first two runs once each is in its second epoch."""
    jobs = {}
    for line in proc.stderr:
        if ": Slurm job " in line and "(" not in line:
            name, job = line.strip().split(": Slurm job ")
            jobs[name] = job
        if len(jobs) == 8:
            break
    targets = list(jobs)[:2]
    while len(cancelled) < 2 and proc.poll() is None:
        for name in targets:
            metrics = folder / name / "metrics.jsonl"
            if name not in [c[0] for c in cancelled] and metrics.is_file() \
                    and metrics.read_text().count("\n") >= 1:
                time.sleep(1.0)  # into epoch 2
                subprocess.run(["scancel", jobs[name]], check=True)
                cancelled.append((name, jobs[name]))
        time.sleep(0.1)
    proc.stderr.read()


def table(stdout: str) -> dict:
    rows = json.loads(stdout)["rows"]
    return {json.dumps(r["setting"]): (r["test"]["mean"], r["test"]["min"], r["test"]["max"])
            for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dir", default="runs/bench-slurm")
    args = parser.parse_args()
    slurm_dir, local_dir = Path(args.dir) / "slurm", Path(args.dir) / "local"
    t0 = time.perf_counter()
    first = subprocess.Popen(command(args, str(slurm_dir), "slurm"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    cancelled: list = []
    watcher = threading.Thread(target=cancel_two, args=(first, slurm_dir, cancelled))
    watcher.start()
    first.wait()
    watcher.join()
    at_cancel = {name: json.loads((slurm_dir / name / "metrics.jsonl").read_text()
                                  .splitlines()[-1])["epoch"] for name, _ in cancelled}
    again = subprocess.run(command(args, str(slurm_dir), "slurm"), capture_output=True,
                           text=True)
    slurm_s = time.perf_counter() - t0
    if again.returncode:
        sys.exit(f"the re-run failed: {again.stderr[-800:]}")
    t0 = time.perf_counter()
    local = subprocess.run(command(args, str(local_dir), "local"), capture_output=True,
                           text=True)
    local_s = time.perf_counter() - t0
    if local.returncode:
        sys.exit(f"the local sweep failed: {local.stderr[-800:]}")
    a, b = table(again.stdout), table(local.stdout)
    print(json.dumps({
        "limit": args.limit, "epochs": args.epochs,
        "first_slurm_exit": first.returncode, "cancelled": cancelled,
        "epochs_logged_when_cancelled": at_cancel,
        "slurm_table": a, "local_table": b, "bitwise_equal": a == b,
        "slurm_seconds_both_runs": round(slurm_s, 1), "local_seconds": round(local_s, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
