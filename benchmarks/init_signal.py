"""How each ``init:`` starts a model: logits and first/last-layer gradients on one batch.

A deep ReLU stack without batch normalisation trained by plain or momentum SGD stalls when its
first layers get almost no gradient. One forward and backward pass on a random batch (pixels
normalised as the recipes do) shows it before any training: the spread of the logits, the loss,
and ``|grad| / |weight|`` of the first convolution and of the last linear layer, per init.

    .venv/bin/python benchmarks/init_signal.py vgg11 -m ratio=4 --size 224
    .venv/bin/python benchmarks/init_signal.py alexnet --size 224
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("-m", "--model-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inits", nargs="+",
                        default=["default", "xavier_uniform", "kaiming_normal"])
    args = parser.parse_args()
    torch.set_num_threads(1)

    from cnnbench.building import build
    from cnnbench.keys import parse_set
    from cnnbench.training.weight_init import init_weights

    model_args = parse_set(args.model_arg)
    x = (torch.rand(args.batch, 1, args.size, args.size) - 0.286) / 0.353
    y = torch.randint(0, 10, (args.batch,))
    for init in args.inits:
        torch.manual_seed(0)
        model, _ = build(args.model, model_args, in_channels=1)
        init_weights(model, init).train()
        torch.manual_seed(1)  # the same dropout draws for every init
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        convs = [p for p in model.parameters() if p.dim() == 4]
        linears = [p for p in model.parameters() if p.dim() == 2]
        first = float(convs[0].grad.norm() / convs[0].detach().norm())
        last = float(linears[-1].grad.norm() / linears[-1].detach().norm()) if linears else float("nan")
        print(f"{args.model} {init:<15} logits std {float(out.detach().std()):.2e}  loss {float(loss.detach()):.3f}"
              f"  first conv |g|/|w| {first:.2e}  last linear |g|/|w| {last:.2e}")


if __name__ == "__main__":
    main()
