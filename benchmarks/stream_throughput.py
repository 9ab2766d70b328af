"""Images/s of cnnbench's streaming loader against torchvision's ImageFolder + DataLoader.

Same files (``stream_data.py``'s 224 px JPEGs), same workers, same batch (64), same
transforms: RandomResizedCrop 224 (scale 0.08-1, ratio 3/4-4/3) + horizontal flip. Each round
runs, interleaved, in this order:

(a) torchvision: ``ImageFolder(train/, Compose([RandomResizedCrop(224), RandomHorizontalFlip(),
    PILToTensor()]))`` through ``DataLoader(batch_size=64, num_workers=W)``: Pillow decodes and
    crops;
(b) cnnbench: ``stream.FileSplit`` with ``rrc_scale: [0.08, 1]`` and ``hflip``
    (``augment.stream_transform``: ``decode_image`` + v2 ``RandomResizedCrop`` and
    ``RandomHorizontalFlip`` on the uint8 tensor in the workers, seeded per image);
(c) the same as (b) with Pillow decoding every file (``images.TORCHVISION_DECODES`` emptied):
    the share of the gain that is decode_image's.

Each reads ``--images`` images (after two warm-up batches, whose time, with the worker start,
is left out); a fresh loader per round. Then a profile in this process, one image at a time:
the CPU milliseconds per image of reading the file, decoding it (decode_image and Pillow), the
random crop (tensor, and Pillow's), the flip, the per-image seed and stacking a batch: what
limits the loader.

    .venv/bin/python benchmarks/stream_throughput.py /tmp/stream10k --workers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

BATCH = 64


def rate(batches, images: int) -> float:
    """Images/s over ``images`` images of ``batches``, after two warm-up batches."""
    it = iter(batches)
    for _ in range(2):
        next(it)
    t0, seen = time.perf_counter(), 0
    for batch in it:
        seen += batch[0].shape[0]
        if seen >= images:
            break
    return seen / (time.perf_counter() - t0)


def torchvision_loader(train: Path, workers: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    dataset = datasets.ImageFolder(str(train), transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
        transforms.PILToTensor()]))
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(0))


def ours(root: Path, workers: int, pillow: bool = False):
    from cnnbench.data import images, imagefolder, stream

    images.TORCHVISION_DECODES = () if pillow else (".jpg", ".jpeg", ".png")
    config = {"rrc_scale": [0.08, 1.0], "rrc_ratio": [0.75, 4 / 3], "hflip": True,
              "workers": workers, "prefetch": 2}
    classes, files, labels = imagefolder.scan(root / "train")
    split = stream.file_split([f[0] for f in files], labels, (224, 224), 3, config, train=True)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
    for images_, targets in split.batches(order, range(0, len(split), BATCH), BATCH,
                                          seed=(0, 1)):
        yield images_, targets


def profile(root: Path, n: int = 200) -> dict:
    """CPU milliseconds per image of each stage, one image at a time in this process."""
    from PIL import Image
    from torchvision import transforms
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms import v2

    paths = sorted((root / "train").rglob("*.jpg"))[:n]
    rrc, flip = v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()
    pil_rrc = transforms.RandomResizedCrop(224)
    stages = ("read file", "decode_image", "Pillow decode (+ RGB)", "v2 RandomResizedCrop (tensor)",
              "RandomResizedCrop (Pillow)", "v2 RandomHorizontalFlip", "seed (CPU generator)",
              "PILToTensor")
    times = dict.fromkeys(stages, 0.0)
    crops = []
    for i, p in enumerate(paths):
        t = [time.process_time()]
        data = read_file(str(p))
        t.append(time.process_time())
        image = decode_image(data, mode=ImageReadMode.RGB)
        t.append(time.process_time())
        with Image.open(p) as im:
            pil = im.convert("RGB")
        t.append(time.process_time())
        crop = rrc(image)
        t.append(time.process_time())
        pil_crop = pil_rrc(pil)
        t.append(time.process_time())
        crops.append(flip(crop))
        t.append(time.process_time())
        torch.default_generator.manual_seed(i)
        t.append(time.process_time())
        transforms.functional.pil_to_tensor(pil_crop)
        t.append(time.process_time())
        for key, a, b in zip(stages, t, t[1:]):
            times[key] += b - a
    t0 = time.process_time()
    for s in range(0, len(crops), BATCH):
        torch.stack(crops[s:s + BATCH])
    times["stack a batch (per image)"] = time.process_time() - t0
    return {k: round(v / len(paths) * 1e3, 3) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the workers do the work; as DataLoader sets for its workers
    runs = {"torchvision ImageFolder": [], "cnnbench stream": [],
            "cnnbench stream, Pillow decode": []}
    for r in range(args.rounds):
        for name, make in (
                ("torchvision ImageFolder", lambda: torchvision_loader(args.root / "train",
                                                                       args.workers)),
                ("cnnbench stream", lambda: ours(args.root, args.workers)),
                ("cnnbench stream, Pillow decode", lambda: ours(args.root, args.workers, True))):
            runs[name].append(rate(make(), args.images))
            print(f"round {r + 1}: {name}: {runs[name][-1]:.0f} images/s", flush=True)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    base = medians["torchvision ImageFolder"]
    print(json.dumps({"workers": args.workers, "images": args.images, "rounds": args.rounds,
                      "images_per_second": {k: round(v, 1) for k, v in medians.items()},
                      "vs_torchvision": {k: round(v / base, 3) for k, v in medians.items()},
                      "profile_ms_per_image": profile(args.root)}, indent=1))


if __name__ == "__main__":
    main()
