"""Memory flat as data grow: peak RSS of a streamed training run on two image folders.

For each folder (made by ``stream_data.py``, 224 px JPEG, 10 classes), a fresh process builds
the trainer exactly as ``cnnbench train`` does with ``data_mode: stream`` (and says which mode
``auto`` would pick under the default budget), for ``torchvision:mobilenet_v3_small`` at 3x224x224 with
``workers`` DataLoader workers, then trains ``--steps`` optimizer steps of batch 64 from the
stream. A thread samples the process tree every 20 ms (``/proc``: the trainer and its
workers): the peak of the summed RSS (which counts pages the forked workers share with the
trainer once per process, so it overstates) and of the summed PSS (shared pages split between
the processes that map them: the memory the tree really takes).

    .venv/bin/python benchmarks/stream_memory.py /tmp/stream10k /tmp/stream100k
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def tree_pids(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return pids


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) once it is gone."""
    try:
        rss = pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
        return rss, pss
    except (OSError, ValueError):
        return 0, 0


class Sampler(threading.Thread):
    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.stop, self.peak_rss, self.peak_pss, self.procs = every, False, 0, 0, 0

    def run(self):
        while not self.stop:
            pids = tree_pids(os.getpid())
            sizes = [memory_kib(p) for p in pids]
            self.peak_rss = max(self.peak_rss, sum(r for r, _ in sizes))
            self.peak_pss = max(self.peak_pss, sum(p for _, p in sizes))
            self.procs = max(self.procs, len(pids))
            time.sleep(self.every)


def child(root: str, steps: int, workers: int) -> dict:
    import torch

    from cnnbench import recipe as cfg
    from cnnbench.training.build import build_trainer

    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    config = cfg.resolve("torchvision:mobilenet_v3_small", None, {
        "data": f"imagefolder:{root}", "input_size": [3, 224, 224], "batch_size": 64,
        "workers": workers, "epochs": 1, "device": "cpu", "val_size": 1000,
        "data_mode": "stream"})
    trainer = build_trainer(config, callbacks=[])
    built = time.perf_counter() - t0
    trainer.model.train()
    split = trainer.train_split
    order = torch.randperm(len(split), generator=trainer.shuffle)
    starts = range(0, steps * 64, 64)
    t1 = time.perf_counter()
    for images, targets in split.batches(order, starts, 64, seed=(0, 1)):
        trainer.train_step(images, targets)
    trained = time.perf_counter() - t1
    time.sleep(0.1)
    sampler.stop = True
    sampler.join()
    from cnnbench.data.stream import choose_mode

    files = len(split) + len(trainer.val_split) + len(trainer.test_split)
    auto = choose_mode({"data_mode": "auto", "data_budget_gb": cfg.trainer_keys()[
        "data_budget_gb"].default}, files, (224, 224), 3, print)
    return {"folder": root, "files": files, "auto_picks": auto,
            "split_type": type(split).__name__,
            "build_seconds": round(built, 1), "train_seconds": round(trained, 1),
            "images_per_second": round(steps * 64 / trained, 1),
            "peak_rss_mib": round(sampler.peak_rss / 1024), "peak_pss_mib":
                round(sampler.peak_pss / 1024), "processes": sampler.procs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.folders[0], args.steps, args.workers)))
        return
    rows = []
    for folder in args.folders:
        out = subprocess.run([sys.executable, __file__, folder, "--child", "--steps",
                              str(args.steps), "--workers", str(args.workers)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"peak PSS {b['peak_pss_mib']} MiB for {b['files']:,} files vs "
              f"{a['peak_pss_mib']} MiB for {a['files']:,}: "
              f"{b['peak_pss_mib'] / a['peak_pss_mib']:.3f}x; RSS sum "
              f"{b['peak_rss_mib'] / a['peak_rss_mib']:.3f}x")


if __name__ == "__main__":
    main()
