"""The hand-written run that ``startup_overhead.py`` holds ``cnnbench train lenet`` against.

What ``cnnbench train lenet`` does (``experiments/lenet.yaml``), written as one plain script
that imports only torch and numpy: read Fashion-MNIST's IDX files, hold out 5,000 random
training images for validation, train the notes' LeNet (sigmoid, average pooling) with AdamW
(lr 0.01, weight decay 0.01), fast.ai's one-cycle schedule, batch 64, label smoothing 0.1 and
normalised pixels, one thread; then the validation and the test pass, and the weights saved.
Nothing else: no run folder, no log, no TensorBoard, no checks.

Run: ``python benchmarks/hand_lenet.py [EPOCHS] [OUT.pt]``.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DATA = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530


def read(name: str, header: int) -> torch.Tensor:
    raw = gzip.decompress((DATA / f"{name}.gz").read_bytes())
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=header).copy())


def batches(images, labels, size):
    for s in range(0, len(labels), size):
        x = (images[s:s + size].float().div_(255) - MEAN) / STD
        yield x, labels[s:s + size]


@torch.no_grad()
def evaluate(model, images, labels) -> tuple[float, float]:
    model.eval()
    loss = correct = 0.0
    for x, y in batches(images, labels, 128):
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    return loss / len(labels), correct / len(labels)


def main() -> None:
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = read("train-images-idx3-ubyte", 16).reshape(-1, 1, 28, 28)
    labels = read("train-labels-idx1-ubyte", 8).long()
    test_x = read("t10k-images-idx3-ubyte", 16).reshape(-1, 1, 28, 28)
    test_y = read("t10k-labels-idx1-ubyte", 8).long()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    val, train = perm[:5000], perm[5000:]
    val_x, val_y, train_x, train_y = images[val], labels[val], images[train], labels[train]

    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Flatten(),
        nn.Linear(400, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    steps = epochs * -(-len(train_y) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.01, total_steps=steps,
                                                   pct_start=0.25, final_div_factor=1e4)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_y))
        for s in range(0, len(order), 64):
            idx = order[s:s + 64]
            x = (train_x[idx].float().div_(255) - MEAN) / STD
            loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch} val loss/acc {evaluate(model, val_x, val_y)}")
    print(f"test loss/acc {evaluate(model, test_x, test_y)}")
    if out is not None:
        torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main()
