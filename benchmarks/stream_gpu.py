"""ResNet-18 at 224 px on a GPU: images/s fed from a streaming folder against fed from memory.

Builds the trainer as ``cnnbench train`` does for ``torchvision:resnet18`` at 3x224x224 (bf16,
channels-last on CUDA) on a folder of ``stream_data.py``'s JPEGs, once with ``data_mode:
memory`` (every image decoded once, the split on the device) and once with ``data_mode:
stream`` (``--workers`` DataLoader workers, pinned memory), interleaved over ``--rounds``, and
times ``--steps`` training steps after two warm-up steps (CUDA synchronised). The loader's share
of a streamed step is ``1 - stream / memory``. With ``--rrc`` the stream also runs
RandomResizedCrop + flip in the workers (memory mode then does them on the device).

    .venv/bin/python benchmarks/stream_gpu.py /tmp/stream10k --workers 14 --steps 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def rate(root: str, mode: str, args) -> float:
    from cnnbench import recipe
    from cnnbench.training.build import build_trainer

    extra = {"rrc_scale": [0.08, 1.0], "hflip": True} if args.rrc else {}
    config = recipe.resolve("torchvision:resnet18", None, {
        "data": f"imagefolder:{root}", "input_size": [3, 224, 224], "batch_size": args.batch,
        "device": args.device, "amp": "bf16" if args.device == "cuda" else "none",
        "data_mode": mode, "workers": args.workers, "val_size": 100, "epochs": 1, **extra})
    trainer = build_trainer(config, callbacks=[])
    trainer.model.train()
    split = trainer.train_split
    order = torch.randperm(len(split), generator=trainer.shuffle).to(trainer.device)
    steps = args.steps + 2
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    t0 = None
    for k, (images, targets) in enumerate(split.batches(
            order, range(0, steps * args.batch, args.batch), args.batch, seed=(0, 1))):
        if k == 2:
            sync()
            t0 = time.perf_counter()
        trainer.train_step(images, targets)
    sync()
    split.close()
    return args.steps * args.batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rrc", action="store_true")
    args = parser.parse_args()
    runs = {"memory": [], "stream": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(rate(args.root, mode, args))
            print(f"{mode}: {runs[mode][-1]:.0f} images/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(json.dumps({"device": args.device, "workers": args.workers, "batch": args.batch,
                      "images_per_second": {k: round(v, 1) for k, v in med.items()},
                      "loader_share_of_step": round(1 - med["stream"] / med["memory"], 3)}))


if __name__ == "__main__":
    main()
