"""What a whole ``cnnbench train lenet --epochs 1`` costs from the outside, against the same run
written by hand (``benchmarks/hand_lenet.py``): each a fresh process, timed from its start to its
exit, so Python's start-up, the imports, the data load, the run folder, TensorBoard and the test
pass all count. ``trainer_overhead.py`` measures the loop alone, inside one process.

Arms run interleaved (round 1: every arm, round 2: every arm, ...), so a busy spell of a shared
machine falls on all of them; medians are reported. ``--tree LABEL=PATH`` adds a cnnbench arm
run from another checkout (e.g. the commit before a change), so before and after are measured
side by side in the same rounds.

Run on one core: ``taskset -c 1 python benchmarks/startup_overhead.py --rounds 5
[--tree before=/tmp/base]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                        help="another checkout's cnnbench as one more arm")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every cnnbench arm as -s KEY=VALUE")
    args = parser.parse_args()

    trees = {"cnnbench": ROOT}
    trees.update((label, Path(path).resolve())
                 for label, _, path in (t.partition("=") for t in args.tree))
    work = Path(tempfile.mkdtemp(prefix="startup-overhead-"))
    arms = {"hand": lambda r: timed([sys.executable, str(ROOT / "benchmarks" / "hand_lenet.py"),
                                     str(args.epochs), str(work / f"hand-{r}.pt")], ROOT)}
    sets = [a for kv in args.set for a in ("-s", kv)]
    for label, tree in trees.items():
        arms[label] = (lambda r, label=label, tree=tree: timed(
            [sys.executable, "-m", "cnnbench", "train", args.model, "--epochs", str(args.epochs),
             "--run-dir", str(work / f"{label}-{r}"), *sets], tree))

    cpus = sorted(os.sched_getaffinity(0))
    print(f"{args.model}, {args.epochs} epoch(s), {args.rounds} rounds, CPUs {cpus}", flush=True)
    times = {name: [] for name in arms}
    for r in range(args.rounds):
        for name, run in arms.items():
            times[name].append(run(r))
            print(f"round {r + 1}  {name:<10} {times[name][-1]:7.2f} s", flush=True)
    medians = {name: statistics.median(v) for name, v in times.items()}
    ratios = {name: medians[name] / medians["hand"] for name in trees}
    for name in trees:
        per_round = [a / b for a, b in zip(times[name], times["hand"])]
        print(f"{name} / hand: {ratios[name]:.3f} (medians {medians[name]:.2f} / "
              f"{medians['hand']:.2f} s); per round {', '.join(f'{x:.2f}' for x in per_round)}")
    print(json.dumps({"seconds": times, "medians": medians, "over_hand": ratios, "cpus": cpus}))


if __name__ == "__main__":
    main()
