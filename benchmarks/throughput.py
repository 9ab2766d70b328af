"""Training throughput (images/s) of every classifier and dense model with its recipe.

For each model: its recipe (``experiments/<model>.yaml`` with the device profile, so on CUDA the
``cuda:`` block: width, batch, bf16, compile mode), the trainer built as ``cnnbench train``
builds it, ``--warmup`` steps (compilation, CUDA-graph capture, cuDNN autotuning), then
``--steps`` timed training steps over full batches of the training split (the task's
``prepare`` and augmentation included; the schedule is held still). Times end with a device
synchronisation. A benchmark, not a test: nothing is asserted.

Run: ``python benchmarks/throughput.py [--device cuda] [--models lenet resnet18] [--steps 200]``
One JSON line per model, then a table. ``--scenes`` keeps the dense tasks' data small.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

CLASSIFIERS = ("lenet", "lenet-bn", "alexnet", "vgg11", "nin", "googlenet", "resnet18",
               "densenet")
DENSE = ("unet", "fpn-seg", "retinanet", "ssd-resnet", "single-object", "multi-label", "ssd")


class Still:
    """A schedule that does not move (a one-cycle schedule would run out of steps)."""

    def step(self) -> None: ...


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(model: str, device: str, steps: int, warmup: int, scenes: int,
               overrides: dict) -> dict:
    from cnnbench import config as cfg
    from cnnbench.training.build import build_trainer
    from cnnbench.training.loop import batch_starts

    changes = {"device": device, "log_graph": False, "log_images": False, **overrides}
    config = cfg.resolve(model, overrides=changes)
    if "scenes" in config:
        config = cfg.resolve(model, overrides={**changes, "scenes": scenes,
                                               "val_size": min(config["val_size"], scenes // 10)})
    trainer = build_trainer(config, callbacks=[])
    trainer.schedule = Still()
    trainer.model.train()
    split, bs = trainer.train_split, trainer.batch_size
    starts = list(batch_starts(len(split), bs, drop_last=True))

    def run(k: int) -> None:
        for i in range(k):
            s = starts[i % len(starts)]
            trainer.train_step(*split.take(slice(s, s + bs)))

    t0 = time.perf_counter()
    run(warmup)
    sync(trainer.device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(steps)
    sync(trainer.device)
    seconds = time.perf_counter() - t0
    images = steps * min(bs, len(split))
    return {"model": model, "device": str(trainer.device),
            "device_name": (torch.cuda.get_device_name(trainer.device)
                            if trainer.device.type == "cuda" else "cpu"),
            "profile": config["profile"], "batch_size": bs, "amp": config["amp"],
            "compile": config["compile"], "model_args": config["model_args"],
            "input_size": config["input_size"], "steps": steps, "warmup_seconds": warm,
            "seconds": seconds, "images_per_second": images / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", nargs="+", default=[*CLASSIFIERS, *DENSE])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--scenes", type=int, default=2000, help="dense tasks' training scenes")
    parser.add_argument("--limit", type=int, default=None, help="images per split (a check)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every model, e.g. compile=false")
    args = parser.parse_args()
    from cnnbench.config import parse_set

    overrides = parse_set(args.set)
    if args.limit:
        overrides["limit"] = args.limit
    rows = []
    for model in args.models:
        try:
            row = throughput(model, args.device, args.steps, args.warmup, args.scenes, overrides)
        except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the rest
            row = {"model": model, "error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'model':<14} {'batch':>5} {'amp':>5} {'compile':>15} {'img/s':>10}", file=sys.stderr)
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<14} error: {r['error'][:60]}", file=sys.stderr)
        else:
            print(f"{r['model']:<14} {r['batch_size']:>5} {r['amp']:>5} {str(r['compile']):>15} "
                  f"{r['images_per_second']:>10,.0f}", file=sys.stderr)


if __name__ == "__main__":
    main()
