"""How much the cnnbench trainer costs over a bare loop, and what it saves over d2l's pipeline.

One training epoch of LeNet on Fashion-MNIST (the 55,000 training images of cnnbench's split),
same model, same initial weights, same optimizer (plain SGD) and batch size, three ways, in one
process, interleaved over ``--rounds`` rounds (the best round of each counts):

* ``cnnbench``: ``Trainer.train_epoch()``, the loop ``cnnbench train`` runs (shuffling, the task's
  ``prepare``, loss, top-1/top-5 metrics summed on the device, the schedule, the grad scaler).
* ``hand``: a minimal loop over the same in-memory uint8 tensors: index a shuffled batch, scale to
  [0, 1], forward, cross-entropy, backward, step. Nothing else.
* ``d2l``: d2l's ``load_data_fashion_mnist``: a Dataset that turns each image into a PIL image
  and back through ``ToTensor`` (as torchvision's FashionMNIST does), a shuffling DataLoader with
  d2l's 4 worker processes, and the hand loop over its batches.

It then times the data path alone (batches ready for the model, no model) both ways.

On ``--device cuda`` every loop runs on the GPU with the trainer's settings: the model and the
data on the device, channels-last, the same fused optimizer, ``--amp`` for both, and with
``--compile MODE`` both forwards compiled the same way (the first round then pays for the
compilation; the best round counts). Times end with a device synchronisation. ``--no-d2l``
leaves out the DataLoader pipeline.

Run: ``.venv/bin/python benchmarks/trainer_overhead.py`` (about 3 epochs' time per round);
``--device cuda --no-d2l [--compile reduce-overhead]`` on a GPU; ``--limit 512`` for a check.
Measured here (2-core CPU shared with other work, one torch thread): cnnbench / hand 0.97,
d2l / cnnbench 1.72x, data path alone 54x. LeNet's arithmetic dominates an epoch on a CPU, so
the gap the data path opens shows fully only where the model is fast (a GPU). On an H100
before issue 12: cnnbench / hand 1.28 (eager); after: pending (benchmarks/gpu_issue12.sh).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


class PILFashionMNIST(torch.utils.data.Dataset):
    """Item by item through PIL and ToTensor, the way d2l's data loader reads Fashion-MNIST."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        from torchvision import transforms

        self.images, self.labels = images[:, 0].numpy(), labels.numpy()
        self.to_tensor = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.to_tensor(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh(trainer, lr: float, device=torch.device("cpu")):
    """The model with its first weights (``init:`` as the recipe says), on ``device``."""
    from cnnbench.models import get_model
    from cnnbench.training.weight_init import init_weights

    torch.manual_seed(0)
    model = init_weights(get_model(trainer.config["model"]), trainer.config["init"])
    memory = torch.channels_last if trainer.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory)
    fused = {"fused": True} if device.type == "cuda" else {}  # as the trainer's optimizer table
    return model, torch.optim.SGD(model.parameters(), lr=lr, **fused)


def step(model, optimizer, x, y, amp_dtype=None) -> None:
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = F.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class Hand:
    """The minimal loop, its model built once (a compiled forward is compiled once)."""

    def __init__(self, trainer, lr: float, compile_mode: str | None):
        self.trainer, self.lr = trainer, lr
        self.model, self.optimizer = fresh(trainer, lr, trainer.device)
        self.init = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.forward = self.model if compile_mode is None else torch.compile(
            self.model, mode=None if compile_mode == "default" else compile_mode)

    def epoch(self, batch_size: int) -> float:
        t = self.trainer
        self.model.load_state_dict(self.init)
        self.optimizer.state.clear()
        images, labels = t.train_split.images, t.train_split.targets
        sync(t.device)
        t0 = time.perf_counter()
        perm = torch.randperm(len(labels), device=t.device)
        for s in t.batch_starts():
            idx = perm[s:s + batch_size]
            x = images[idx].float().div_(255.0)
            if t.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            step(self.forward, self.optimizer, x, labels[idx], t.amp_dtype)
        sync(t.device)
        return time.perf_counter() - t0


def d2l_epoch(trainer, lr: float, batch_size: int, workers: int) -> float:
    model, optimizer = fresh(trainer, lr)
    dataset = PILFashionMNIST(trainer.train_split.images, trainer.train_split.targets)
    t0 = time.perf_counter()  # the DataLoader's worker start-up is part of every d2l epoch
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, num_workers=workers)
    for x, y in loader:
        step(model, optimizer, x, y)
    return time.perf_counter() - t0


def cnnbench_batches(trainer, batch_size: int) -> float:
    """The data path alone: shuffled batches through the task's ``prepare``, no model."""
    split = trainer.train_split
    sync(trainer.device)
    t0 = time.perf_counter()
    perm = torch.randperm(len(split), device=trainer.device)
    for s in range(0, len(split), batch_size):
        images, targets = split.take(perm[s:s + batch_size])
        trainer.task.prepare(images, targets, train=True)
    sync(trainer.device)
    return time.perf_counter() - t0


def d2l_batches(trainer, batch_size: int, workers: int) -> float:
    dataset = PILFashionMNIST(trainer.train_split.images.cpu(),
                              trainer.train_split.targets.cpu())
    t0 = time.perf_counter()
    for _ in torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, num_workers=workers):
        pass
    return time.perf_counter() - t0


def cnnbench_epoch(trainer, init: dict) -> float:
    trainer.model.load_state_dict(init)
    trainer.optimizer.state.clear()
    return trainer.train_epoch().seconds  # ends by reading the metrics: a device sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.9)
    parser.add_argument("--workers", type=int, default=4, help="d2l's get_dataloader_workers()")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="fewer images (a quick check)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                        help="autocast for both loops (CUDA only, as in the trainer)")
    parser.add_argument("--compile", default=None, metavar="MODE",
                        help="torch.compile both forwards: default, reduce-overhead, "
                             "max-autotune")
    parser.add_argument("--no-d2l", action="store_true", help="leave out the d2l DataLoader")
    parser.add_argument("--config", default="experiments/lenet-d2l.yaml")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default); on a shared 2-core machine two "
                             "threads ran LeNet ~10x slower than one, for all three loops alike")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cnnbench import recipe as cfg
    from cnnbench.bench.timing import device_name
    from cnnbench.training.build import build_trainer

    # d2l's LeNet recipe: plain SGD, [0, 1] pixels, no augmentation. No device profile: the
    # options here are the whole recipe, on either device.
    config = cfg.resolve(args.model, args.config, dict(
        batch_size=args.batch_size, lr=args.lr, val_size=5000, limit=args.limit,
        log_graph=False, log_images=False, device=args.device, amp=args.amp,
        compile=args.compile or False, profile="none"))
    trainer = build_trainer(config, callbacks=[])  # the loop alone: no run folder
    hand = Hand(trainer, args.lr, args.compile)
    init = {k: v.clone() for k, v in hand.init.items()}  # the same first weights everywhere
    n = len(trainer.train_split)
    where = device_name(trainer.device)  # on the CPU with the threads used
    print(f"{args.model}, {n:,} training images, batch {args.batch_size}, plain SGD, "
          f"{trainer.device} ({where}), "
          f"amp {args.amp}, compile {args.compile or 'off'}, {args.rounds} rounds", flush=True)

    loops = [("cnnbench", lambda: cnnbench_epoch(trainer, init)),
             ("hand", lambda: hand.epoch(args.batch_size))]
    if not args.no_d2l:
        loops.append(("d2l", lambda: d2l_epoch(trainer, args.lr, args.batch_size,
                                                args.workers)))
    times = {name: [] for name, _ in loops}
    for r in range(args.rounds):
        for name, run in loops:
            seconds = run()
            times[name].append(seconds)
            print(f"round {r + 1}  {name:<9} {seconds:7.2f} s  {n / seconds:8,.0f} img/s",
                  flush=True)
    data = {"cnnbench_batches": cnnbench_batches(trainer, args.batch_size)}
    if not args.no_d2l:
        data["d2l_batches"] = d2l_batches(trainer, args.batch_size, args.workers)
    for name, seconds in data.items():
        print(f"data only  {name:<16} {seconds:7.2f} s  {n / seconds:10,.0f} img/s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    result = {
        "images": n, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "device": str(trainer.device), "amp": args.amp, "compile": args.compile,
        "seconds": best, "all_seconds": times,
        "images_per_second": {k: n / v for k, v in best.items()},
        "cnnbench_over_hand": best["cnnbench"] / best["hand"],
        "data_seconds": data,
    }
    print(f"cnnbench / hand-written loop: {result['cnnbench_over_hand']:.3f}  (target <= 1.05)")
    if not args.no_d2l:
        result["d2l_over_cnnbench"] = best["d2l"] / best["cnnbench"]
        result["data_d2l_over_cnnbench"] = data["d2l_batches"] / data["cnnbench_batches"]
        print(f"d2l pipeline / cnnbench:      {result['d2l_over_cnnbench']:.2f}x  (target >= 2)")
        print(f"data path alone, d2l / cnnbench: {result['data_d2l_over_cnnbench']:.1f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
