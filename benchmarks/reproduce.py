"""Train a list of recipes, one run folder each, inside a time budget; then ``results.md``.

Run (on a GPU machine, from the checkout):
  PYTHONPATH=$PWD CNNBENCH_DATA=... python3 benchmarks/reproduce.py OUT \\
      --recipes alexnet-d2l vgg11-d2l --seeds 0 1 2 --budget 540

Each recipe is ``experiments/NAME.yaml``, trained with ``cnnbench train --config ... --device
DEVICE --seed S --run-dir OUT/runs/NAME-sS``. Runs go seed by seed (every recipe's first seed
before any second seed), each bounded by what is left of the budget; a run cut short is reported
and its folder removed. Checkpoints and TensorBoard files are deleted afterwards (the folders
come back small); ``config.yaml``, ``metrics.jsonl`` and ``results.json`` stay, and
``OUT/results.md`` is made from them by ``results_md.py``. ``--dry`` trains each recipe on 256
images for one epoch on the CPU (a syntax check of the whole list).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cnnbench.keys import read_yaml

ROOT = Path(__file__).resolve().parent.parent


def command(name: str, seed: int, folder: Path, device: str, dry: bool) -> list[str]:
    cmd = [sys.executable, "-m", "cnnbench", "train", "--config",
           str(ROOT / "experiments" / f"{name}.yaml"), "--device", device, "--seed", str(seed),
           "--run-dir", str(folder), "--quiet", "--json"]
    if dry:
        cmd += ["--limit", "256", "--epochs", "1"]
        if "scenes" in read_yaml(ROOT / "experiments" / f"{name}.yaml"):
            cmd += ["--set", "scenes=64", "--set", "val_size=16"]
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--recipes", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all runs")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry", action="store_true")
    args = parser.parse_args()
    missing = [r for r in args.recipes if not (ROOT / "experiments" / f"{r}.yaml").is_file()]
    if missing:
        print(f"error: no recipe experiments/{missing[0]}.yaml", file=sys.stderr)
        sys.exit(2)
    device = "cpu" if args.dry else args.device
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with open(args.out / "reproduce.log", "a") as log:
        for seed in args.seeds:
            for name in args.recipes:
                left = args.budget - (time.monotonic() - start)
                folder = runs / f"{name}-s{seed}"
                if left < 20:
                    print(f"skip {folder.name}: budget spent", flush=True)
                    continue
                t0 = time.monotonic()
                try:
                    proc = subprocess.run(command(name, seed, folder, device, args.dry),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True, timeout=left, env=env, cwd=ROOT)
                    status, text = proc.returncode, proc.stdout
                except subprocess.TimeoutExpired as cut:
                    status = "timeout"
                    text = cut.stdout.decode() if isinstance(cut.stdout, bytes) else cut.stdout or ""
                log.write(f"== {folder.name} ({status})\n{text}\n")
                log.flush()
                seconds = time.monotonic() - t0
                results = folder / "results.json"
                if status == 0 and results.is_file():
                    r = json.loads(results.read_text())
                    tests = {k: round(v, 4) for k, v in r.items()
                             if k.startswith("test_") and isinstance(v, float)}
                    print(f"{folder.name}: {tests} train {r.get('minutes')} min, "
                          f"{r.get('images_per_second')} img/s, wall {seconds:.0f}s", flush=True)
                else:
                    tail = " | ".join(text.strip().splitlines()[-2:])
                    print(f"{folder.name}: FAILED ({status}) after {seconds:.0f}s: {tail}",
                          flush=True)
                    shutil.rmtree(folder, ignore_errors=True)
                for heavy in ("checkpoints", "tensorboard"):
                    shutil.rmtree(folder / heavy, ignore_errors=True)
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "results_md.py"), str(runs)],
                           capture_output=True, text=True)
    (args.out / "results.md").write_text(table.stdout + table.stderr)


if __name__ == "__main__":
    main()
