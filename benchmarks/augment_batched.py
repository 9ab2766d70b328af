"""Augmentation of a batch in memory: batched on the device against torchvision's v2 per image.

The memory path's training augmentation (``rrc_scale: [0.08, 1]``, ``hflip``, ``color_jitter:
0.4``) on a uint8 batch already on the device, two ways, timed in one process, interleaved over
``--rounds`` rounds (``torch.utils.benchmark``; the best round of each counts, and the median):

* ``batched``: ``augment.OnDevice`` (``transforms.random_resized_crop`` + ``color_jitter``, each
  image its own draws), then to float and the batched flip, as ``Classification.prepare`` runs;
* ``per image``: what ``prepare`` ran before: ``v2.Compose([RandomResizedCrop, ColorJitter])``
  called on each image in a Python loop and stacked, then the same float conversion and flip.

``--compile`` adds the batched path under ``torch.compile`` (as the trainer's ``compile:``
compiles ``prepare``). ``--auto-augment trivialaugment`` adds the policy to both (image by image in both: see
``augment.py``). It then prints how far the batched crop is from v2's on the same boxes
(grey levels), for crops smaller than the output (memory's case) and, for the antialiasing
question, for a crop shrunk 2x.

Run: ``.venv/bin/python benchmarks/augment_batched.py`` (``--size 32`` for 32 px; ``--device
cuda`` on a GPU; ``--compile``). The batching is for a GPU, where every small kernel launch of the per-image
loop costs ~5-10 us and each v2 draw reads a number back on the host; on a CPU it saves the
Python and dispatch overhead only.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.utils import benchmark
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as VF

from cnnbench.data import augment
from cnnbench.data import transforms as T

CONFIG = {"rrc_scale": [0.08, 1.0], "rrc_ratio": [3 / 4, 4 / 3], "color_jitter": 0.4}


def paths(size: int, policy: str, compile: bool) -> dict:
    config = {**CONFIG, "auto_augment": policy}
    batched = augment.OnDevice.from_config(config, (size, size))
    batched.each = None  # the batched path at every size (the trainer's CPU goes per image above 64 px)
    each = augment.train_transform(config, (size, size))

    def run_batched(images):
        return T.random_hflip(T.to_float(batched(images)))[0]

    def run_each(images):
        return T.random_hflip(T.to_float(torch.stack([each(image) for image in images])))[0]

    found = {"batched": run_batched, "per image": run_each}
    if compile:  # as the trainer's ``compile:`` takes prepare (inductor fuses the passes)
        found["compiled"] = torch.compile(run_batched)
    return found


class Operators(TorchDispatchMode):
    """Counts the ATen operators run (views aside): on tensors of 3 or more dimensions (the
    images: each a kernel launch on a GPU) and on the rest (parameter draws; v2 draws on the
    CPU, ``OnDevice`` on the images' device)."""

    def __init__(self):
        super().__init__()
        self.on_images = self.other = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if any(t.dim() >= 3 for t in tensors):
                self.on_images += 1
            else:
                self.other += 1
        return func(*args, **(kwargs or {}))


def crop_differences(device) -> dict:
    """Grey levels between the batched crop and v2's on the same (v2-drawn) boxes."""
    torch.manual_seed(0)
    low = torch.rand(64, 3, 16, 16, device=device)
    images = (F.interpolate(low, size=(224, 224), mode="bicubic").clamp(0, 1) * 255).round()
    images = images.to(torch.uint8)
    found = {}
    for name, scale, out in (("upscaled (crop <= output)", (0.08, 1.0), 224),
                             ("shrunk 2x", (1.0, 1.0), 112)):
        crop = v2.RandomResizedCrop(out, scale=scale)
        drawn = [crop.make_params([images[0]]) for _ in range(len(images))]
        boxes = tuple(torch.tensor([d[k] for d in drawn], device=device)
                      for k in ("top", "left", "height", "width"))
        ours = T.resized_crop(images, boxes, (out, out)).int()
        for ref, antialias in (("v2 uint8", True), ("v2 float", True), ("v2 float, no AA", False)):
            theirs = torch.stack([
                VF.resized_crop(im.float() if "float" in ref else im, **d, size=[out, out],
                                antialias=antialias).round().to(torch.uint8)
                for im, d in zip(images, drawn)]).int()
            diff = (ours - theirs).abs().float()
            found[f"{name} vs {ref}"] = {"max": diff.max().item(), "mean": diff.mean().item(),
                                         "share differing": (diff > 0).float().mean().item()}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--auto-augment", default="none", choices=augment.AUTO_AUGMENT)
    parser.add_argument("--compile", action="store_true",
                        help="also time the batched path under torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8,
                           device=device)
    fns = paths(args.size, args.auto_augment, args.compile)
    for fn in fns.values():
        fn(images)  # warm-up
    seconds = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            timer = benchmark.Timer("fn(images)", globals={"fn": fn, "images": images},
                                    num_threads=args.threads)
            seconds[name].append(timer.timeit(1).median)
    print(f"batch {args.batch} at {args.size} px, {args.device}, {args.threads} threads, "
          f"auto_augment {args.auto_augment}, best of {args.rounds} interleaved rounds "
          "(median in brackets):")
    rate = {name: args.batch / min(s) for name, s in seconds.items()}
    for name, s in seconds.items():
        print(f"  {name:10s} {rate[name]:9.0f} images/s ({args.batch / statistics.median(s):.0f})"
              "  rounds: " + ", ".join(f"{args.batch / x:.0f}" for x in s))
    for name in ("batched", "per image"):
        with Operators() as ops:
            fns[name](images)
        print(f"  {name:10s} operators per batch: {ops.on_images} on the images, "
              f"{ops.other} others")
    for name in rate:
        if name != "per image":
            print(f"  {name} / per image: {rate[name] / rate['per image']:.2f}x")
    if args.size == 224 and args.auto_augment == "none":
        for name, d in crop_differences(device).items():
            print(f"  crop {name}: max {d['max']:.0f}, mean {d['mean']:.4f}, "
                  f"{100 * d['share differing']:.2f}% of values differ")


if __name__ == "__main__":
    main()
