"""What a whole ``cnnbench train lenet --epochs 1`` costs from the outside, against the same run
written by hand (``benchmarks/hand_lenet.py``): each a fresh process, timed from its start to its
exit, so Python's start-up, the imports, the data load, the run folder, TensorBoard and the test
pass all count. ``trainer_overhead.py`` measures the loop alone, inside one process.

Arms run interleaved (round 1: every arm, round 2: every arm, ...), so a busy spell of a shared
machine falls on all of them; medians of the wall clock and of the CPU time (user + system, from
``getrusage``) are reported. On a crowded machine (load 12 on 2 cores) the wall clock of one run
reached 10x its CPU time and the CPU time itself varied by 40 % between rounds: there, read the
CPU medians. ``--tree LABEL=PATH`` adds a cnnbench arm run from another checkout (e.g. the commit
before a change), so before and after are measured side by side in the same rounds.

Run on one core: ``taskset -c 1 python benchmarks/startup_overhead.py --rounds 5
[--tree before=/tmp/base]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], tree: Path) -> tuple[float, float]:
    """Wall-clock seconds from the process's start to its exit, and the CPU seconds (user and
    system) it used: on a shared machine the CPU time moves far less than the wall clock."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                        help="another checkout's cnnbench as one more arm")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every cnnbench arm as -s KEY=VALUE")
    parser.add_argument("--no-hand", action="store_true",
                        help="only the cnnbench arms, held against this checkout's (e.g. with "
                             "--set limit=2000, where the fixed costs weigh more)")
    args = parser.parse_args()

    trees = {"cnnbench": ROOT}
    trees.update((label, Path(path).resolve())
                 for label, _, path in (t.partition("=") for t in args.tree))
    work = Path(tempfile.mkdtemp(prefix="startup-overhead-"))
    arms = {"hand": lambda r: timed([sys.executable, str(ROOT / "benchmarks" / "hand_lenet.py"),
                                     str(args.epochs), str(work / f"hand-{r}.pt")], ROOT)}
    if args.no_hand:  # the trees against each other: the first one is the reference
        arms = {}
    sets = [a for kv in args.set for a in ("-s", kv)]
    for label, tree in trees.items():
        arms[label] = (lambda r, label=label, tree=tree: timed(
            [sys.executable, "-m", "cnnbench", "train", args.model, "--epochs", str(args.epochs),
             "--run-dir", str(work / f"{label}-{r}"), *sets], tree))

    cpus = sorted(os.sched_getaffinity(0))
    print(f"{args.model}, {args.epochs} epoch(s), {args.rounds} rounds, CPUs {cpus}", flush=True)
    wall, cpu = ({name: [] for name in arms} for _ in range(2))
    for r in range(args.rounds):
        for name, run in arms.items():
            w, c = run(r)
            wall[name].append(w)
            cpu[name].append(c)
            print(f"round {r + 1}  {name:<10} {w:7.2f} s wall  {c:7.2f} s CPU", flush=True)
    ref = "cnnbench" if args.no_hand else "hand"
    result = {"cpus": cpus, "wall": wall, "cpu": cpu, "reference": ref}
    for kind, times in (("wall", wall), ("cpu", cpu)):
        medians = {name: statistics.median(v) for name, v in times.items()}
        result[f"{kind}_medians"] = medians
        result[f"{kind}_over_{ref}"] = {n: medians[n] / medians[ref] for n in trees if n != ref}
        for name in (n for n in trees if n != ref):
            per_round = [a / b for a, b in zip(times[name], times[ref])]
            print(f"{kind:>4}: {name} / {ref} {medians[name] / medians[ref]:.3f} (medians "
                  f"{medians[name]:.2f} / {medians[ref]:.2f} s); per round "
                  f"{', '.join(f'{x:.2f}' for x in per_round)}")
    print(json.dumps(result))

if __name__ == "__main__":
    main()
