"""Fine-tuning from a Fashion-MNIST-pretrained body against training from scratch, in the same
CPU time (issue 17): single-object (class accuracy, box IoU) and multi-label (mean F1).

Each arm has ``--budget`` CPU-minutes of this process (user + system time of every torch thread,
``time.process_time``), pretraining counted:

* ``finetune``: ``body-classifier`` on Fashion-MNIST (``experiments/body-classifier.yaml``)
  for ``--pretrain-share`` of the budget, then the task's recipe with ``init_from`` that run
  (and any ``--finetune KEY=VALUE``, e.g. ``freeze_epochs=1 lr_mult=[0.01,0.1,1]``) for the
  rest (one pretraining serves both tasks, and is counted in full for each);
* ``scratch``: the detector's own recipe for the whole budget.

Epochs are chosen to fit: a few timed training steps and one evaluation batch of each run's model
give the CPU cost of an epoch (and of the test pass), and the run takes as many whole epochs as
its share allows (at least one), so every one-cycle schedule runs to its end. The table gives
the CPU time and wall time each run really took; on a shared machine these differ from the plan.

Run: ``.venv/bin/python benchmarks/finetune_budget.py --budget 15`` (the issue's figure; about
2 x 15 CPU-minutes per task, one torch thread); ``--budget 4 --tasks single-object`` for a
shorter look. ``--runs-root`` keeps the run folders (default: a temporary folder).
Measured on the shared 2-core machine (README, Transfer learning): at ``--budget 3``
single-object 0.555 / 0.590 fine-tuned against 0.467 / 0.597 from scratch, multi-label F1
0.584 against 0.561; at ``--budget 6 --tasks single-object`` 0.640 / 0.640 against
0.612 / 0.653; at ``--budget 15`` (the issue's figure) 0.689 / 0.677 against 0.662 / 0.689,
multi-label F1 0.766 against 0.791. The epoch fit is rough on a loaded machine (runs took
0.7-1.1x their share).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from cnnbench import recipe as cfg
from cnnbench.keys import parse_set
from cnnbench.recipe import default_recipe
from cnnbench.data.splits import head
from cnnbench.training.build import build_trainer
from cnnbench.train import train

METRICS = {"single-object": ("test_acc", "test_box_iou"), "multi-label": ("test_f1",)}
TARGETS = {"test_acc": 0.80, "test_box_iou": 0.72, "test_f1": 0.88}


def recipe(name: str) -> Path:
    path = default_recipe(name)
    if path is None:
        raise SystemExit(f"no recipe experiments/{name}.yaml")
    return path


def epoch_cost(config_file: Path, overrides: dict, steps: int = 8) -> tuple[float, float]:
    """CPU seconds of one training epoch and of the test pass, from a few timed batches."""
    config = cfg.resolve(None, config_file, {**overrides, "epochs": 1, "init_from": None,
                                             "freeze_epochs": 0})
    trainer = build_trainer(config, callbacks=[])
    split, bs = trainer.train_split, trainer.batch_size
    trainer.model.train()
    trainer.train_step(*split.take(slice(0, bs)))  # warm-up
    t0 = time.process_time()
    for i in range(1, steps + 1):
        trainer.train_step(*split.take(slice(i * bs, (i + 1) * bs)))
    per_step = (time.process_time() - t0) / steps
    test = trainer.test_split
    sample = head(test, 2 * trainer.eval_batch_size)
    t0 = time.process_time()
    trainer.test_split = sample
    trainer.test()  # the test pass and the task's report, as at the end of a run
    per_image = (time.process_time() - t0) / max(1, len(sample))
    epoch = len(trainer.batch_starts()) * per_step + len(trainer.val_split) * per_image
    return epoch, len(test) * per_image


def fit_epochs(config_file: Path, overrides: dict, seconds: float) -> int:
    epoch, test = epoch_cost(config_file, overrides)
    return max(1, math.floor((seconds - test) / epoch))


def timed_train(name: str, config_file: Path, overrides: dict, run_dir: Path) -> dict:
    cpu, wall = time.process_time(), time.perf_counter()
    results = train(None, config_file, overrides, run_dir=run_dir)
    results["cpu_seconds"] = time.process_time() - cpu
    results["wall_seconds"] = time.perf_counter() - wall
    print(f"  {name}: {overrides.get('epochs')} epochs, {results['cpu_seconds'] / 60:.2f} "
          f"CPU-min, {results['wall_seconds'] / 60:.2f} min wall", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=15.0, help="CPU-minutes per arm")
    parser.add_argument("--pretrain-share", type=float, default=1 / 3)
    parser.add_argument("--tasks", nargs="+", default=list(METRICS), choices=list(METRICS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs-root", type=Path, default=None)
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: found)")
    parser.add_argument("--finetune", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config keys for the fine-tuning runs, e.g. freeze_epochs=1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.runs_root or Path(tempfile.mkdtemp(prefix="finetune-budget-"))
    common = {"threads": args.threads, "log_graph": False, "log_images": False,
              "log_every_steps": 0, **({"data": args.data} if args.data else {})}
    budget = args.budget * 60
    print(f"budget {args.budget:g} CPU-min per arm, pretraining {args.pretrain_share:.0%} of "
          f"it; fine-tuning with {args.finetune or 'the recipe'}; runs in {root}", flush=True)

    plans = {}  # run name: (recipe, overrides) with epochs fitted to its share
    pre_file = recipe("body-classifier")
    pre = {**common}
    pre["epochs"] = fit_epochs(pre_file, pre, budget * args.pretrain_share)
    plans["body-classifier"] = (pre_file, pre)
    for task in args.tasks:
        fine_file = recipe(task)
        fine = {**common, "init_from": str(root / "body-classifier"),
                **parse_set(args.finetune)}
        fine["epochs"] = fit_epochs(fine_file, fine, budget * (1 - args.pretrain_share))
        plans[f"{task}-finetune"] = (fine_file, fine)
        scratch_file = recipe(task)
        scratch = {**common}
        scratch["epochs"] = fit_epochs(scratch_file, scratch, budget)
        plans[f"{task}-scratch"] = (scratch_file, scratch)
    print("epochs: " + ", ".join(f"{n} {o['epochs']}" for n, (_, o) in plans.items()),
          flush=True)

    results = {name: timed_train(name, file, overrides, root / name)
               for name, (file, overrides) in plans.items()}

    pre = results["body-classifier"]
    print(f"\npretraining: body-classifier test acc {pre['test_acc']:.4f}, "
          f"{pre['cpu_seconds'] / 60:.2f} CPU-min, {pre['wall_seconds'] / 60:.2f} min wall")
    header = f"{'task':<14} {'arm':<11} {'epochs':>6} {'CPU-min':>8} {'wall-min':>8}  metrics"
    print(header + "\n" + "-" * len(header))
    for task in args.tasks:
        for arm in ("finetune", "scratch"):
            r = results[f"{task}-{arm}"]
            cpu, wall = r["cpu_seconds"], r["wall_seconds"]
            if arm == "finetune":
                cpu, wall = cpu + pre["cpu_seconds"], wall + pre["wall_seconds"]
            shown = "  ".join(f"{m[5:]} {r[m]:.4f} ({'>=' if r[m] >= TARGETS[m] else '<'} "
                              f"{TARGETS[m]})" for m in METRICS[task])
            print(f"{task:<14} {arm:<11} {r['epochs']:>6} {cpu / 60:>8.2f} {wall / 60:>8.2f}  "
                  f"{shown}")


if __name__ == "__main__":
    main()
