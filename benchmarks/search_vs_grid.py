"""TPE with pruning against a 16-point grid: lenet's lr and weight decay on Fashion-MNIST.

Run: ``python benchmarks/search_vs_grid.py [--limit 8000] [--epochs 4] [--search tpe]
[--pruner median] [--seed 0] [--dir runs/bench-search]`` (the grid's folder is shared: another
sampler or pruner reuses its runs; another seed needs another ``--dir``)

The grid: lr 1e-3, 3e-3, 1e-2, 3e-2 times weight_decay 0, 1e-4, 1e-3, 1e-2 (16 runs, seed 0).
The search: ``--search tpe --trials 16 --space lr=log:1e-3..3e-2 --space
weight_decay=0,1e-4,1e-3,1e-2`` (the same ranges; Optuna's TPE sampler; ``--pruner median``:
MedianPruner with 4 trials run whole first, ``halving``: SuccessiveHalvingPruner, ``hyperband``,
with Optuna's options as ``halving:min_resource=1``), seed 0. Both are the whole ``cnnbench sweep`` command, each run on one
thread, ``--limit`` images per split. The target: TPE's best trial (by validation accuracy)
within 0.005 of the best test accuracy of the grid, training at most 60 % of the grid's epochs
(met with ``--search tpe:n_startup_trials=4 --pruner halving`` on seeds 0, 1, 2: README).
Prints one JSON object; the folders stay under ``--dir`` (the same command continues them).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time


def sweep(args, *options: str) -> tuple[dict, float]:
    command = [sys.executable, "-m", "cnnbench", "sweep", "lenet", "--limit", str(args.limit),
               "--epochs", str(args.epochs), "--seeds", str(args.seed), "--set", "threads=1",
               "--set", "log_graph=false", "--set", "log_images=false", "--quiet", "--json",
               *options]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"sweep failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--dir", default="runs/bench-search")
    parser.add_argument("--seed", type=int, default=0, help=(
        "seeds every run and the sampler (another seed: another --dir)"))
    parser.add_argument("--search", default="tpe", help=(
        "as `cnnbench sweep --search`: tpe, with options NAME:KEY=VALUE,... (e.g. "
        "tpe:n_startup_trials=4)"))
    parser.add_argument("--pruner", default="median", help=(
        "as `cnnbench sweep --pruner`: median, halving, hyperband or none, with options "
        "NAME:KEY=VALUE,... (e.g. halving:min_resource=1)"))
    args = parser.parse_args()
    grid, grid_s = sweep(args, "--grid", "lr=1e-3,3e-3,1e-2,3e-2",
                         "--grid", "weight_decay=0,1e-4,1e-3,1e-2", "--dir", f"{args.dir}/grid")
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "-", f"{args.search}-{args.pruner}")
    tpe, tpe_s = sweep(args, "--search", args.search, "--trials", "16",
                       "--space", "lr=log:1e-3..3e-2", "--space", "weight_decay=0,1e-4,1e-3,1e-2",
                       "--pruner", args.pruner, "--dir", f"{args.dir}/{name}")
    grid_tests = [r["test"]["mean"] for r in grid["rows"]]
    grid_pick = next(r for r in grid["rows"] if r["best"])
    best = next(r for r in tpe["rows"] if r["trial"] == tpe["best"])
    grid_epochs = 16 * args.epochs
    print(json.dumps({
        "limit": args.limit, "epochs": args.epochs, "seed": args.seed, "search": args.search,
        "pruner": args.pruner,
        "grid": {"best_test_acc": max(grid_tests),
                 "test_acc_of_best_val": grid_pick["test"]["mean"],
                 "best_setting": grid_pick["setting"], "epochs": grid_epochs,
                 "seconds": round(grid_s, 1)},
        "tpe": {"test_acc_of_best_trial": best["test_acc"], "best_params": best["params"],
                "best_test_acc_any_trial": max(r["test_acc"] for r in tpe["rows"]
                                               if r["test_acc"] is not None),
                "counts": tpe["counts"], "epochs": tpe["epochs"],
                "seconds": round(tpe_s, 1)},
        "gap": max(grid_tests) - best["test_acc"],
        "epoch_share": tpe["epochs"] / grid_epochs,
        "reached": (max(grid_tests) - best["test_acc"] <= 0.005
                    and tpe["epochs"] <= 0.6 * grid_epochs),
    }, indent=2))


if __name__ == "__main__":
    main()
