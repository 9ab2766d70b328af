"""`cnnbench summary` against torchinfo: parameters, layer output shapes, FLOPs and wall time.

For every registered model and five torchvision models, in one process:

* params: ``total_params`` of both;
* shapes: layers whose output shape differs (each module's last call; torchinfo's rows, ours at
  the full depth), out of the layers both show;
* FLOPs: ours against torchinfo's mult-adds x 2 (torchinfo counts ConvTranspose2d at 4x and
  misses the work inside ``DeformConv2d``, so a few differ by design);
* wall time: building the model and summarising it, the way each tool is used from Python
  (``summarize(name)``; ``torchinfo.summary(get_model(name), input_size, device="cpu")``), after
  one warm-up each, best of ``--rounds``, the two interleaved so that load from other work hits
  both alike. The ratio is ours / torchinfo's (below 1: we are quicker).

torchinfo is not a cnnbench dependency; install it beside the venv and point PYTHONPATH at it:

    .venv/bin/pip install --target /tmp/tisite torchinfo
    PYTHONPATH=/tmp/tisite .venv/bin/python benchmarks/torchinfo_compare.py [--models lenet,...]

Prints a markdown table and the summary line (geometric mean and worst of the time ratios).
"""

from __future__ import annotations

import argparse
import math
import time

import warnings

import torch
import torchinfo

from cnnbench.registry import get_model, get_model_info, list_models
from cnnbench.summary import summarize

TORCHVISION = ["resnet50", "densenet121", "googlenet", "mobilenet_v3_small", "efficientnet_b0"]


def build(name: str) -> torch.nn.Module:
    return get_model(name, **({"weights": None} if name.startswith("torchvision:") else {}))


def ours(name: str, size) -> dict:
    return summarize(name, size, depth=99)


def theirs(name: str, size):
    return torchinfo.summary(build(name), input_size=(1, *size), device="cpu", verbose=0,
                             depth=99)


def shape_mismatches(mine: dict, info) -> tuple[int, int]:
    """(mismatches, layers compared): torchinfo's last row per module against our row."""
    model = info.summary_list[0].module if info.summary_list else None
    names = {m: n for n, m in model.named_modules()} if model is not None else {}
    last = {}
    for row in info.summary_list:
        if row.module in names and names[row.module] and row.output_size:
            last[names[row.module]] = list(row.output_size)
    ours_ = {layer["name"]: layer["output_shape"] for layer in mine["layers"]}
    compared = [n for n in last if ours_.get(n) is not None]
    return sum(ours_[n] != last[n] for n in compared), len(compared)


def best_of(fn, rounds_out: list, *args) -> None:
    start = time.perf_counter()
    fn(*args)
    rounds_out.append(time.perf_counter() - start)


def compare(name: str, rounds: int) -> dict:
    size = tuple(get_model_info(name).input_size)
    mine, info = ours(name, size), theirs(name, size)  # also the warm-up
    t_ours, t_theirs = [], []
    for _ in range(rounds):
        best_of(ours, t_ours, name, size)
        best_of(theirs, t_theirs, name, size)
    bad, compared = shape_mismatches(mine, info)
    return {"model": name, "params": mine["total_params"], "params_ti": info.total_params,
            "shapes": f"{bad}/{compared}", "bad": bad, "flops": mine["flops"],
            "flops_ti": 2 * info.total_mult_adds, "ours_s": min(t_ours),
            "ti_s": min(t_theirs), "device": mine["device"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names (default: all, + torchvision)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torchvision googlenet init
    torch.set_num_threads(1)  # both alike; a loaded 2-core machine makes threads noise
    names = (args.models.split(",") if args.models
             else list_models() + [f"torchvision:{n}" for n in TORCHVISION])
    print("| model | params (ours / torchinfo) | shape mismatches | FLOPs ours | "
          "torchinfo MACs x2 | ours s (device) | torchinfo s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in names:
        r = compare(name, args.rounds)
        rows.append(r)
        same = "=" if r["params"] == r["params_ti"] else f"/ {r['params_ti']:,}"
        print(f"| {name} | {r['params']:,} {same} | {r['shapes']} | {r['flops'] / 1e9:.4g} G | "
              f"{r['flops_ti'] / 1e9:.4g} G | {r['ours_s']:.3f} ({r['device']}) | "
              f"{r['ti_s']:.3f} | {r['ours_s'] / r['ti_s']:.2f} |", flush=True)
    ratios = [r["ours_s"] / r["ti_s"] for r in rows]
    worst = max(rows, key=lambda r: r["ours_s"] / r["ti_s"])
    print(f"\nparams equal on {sum(r['params'] == r['params_ti'] for r in rows)}/{len(rows)}; "
          f"shape mismatches {sum(r['bad'] for r in rows)}; FLOPs equal on "
          f"{sum(r['flops'] == r['flops_ti'] for r in rows)}/{len(rows)}; time ratio "
          f"geometric mean {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}, worst "
          f"{max(ratios):.2f} ({worst['model']})")


if __name__ == "__main__":
    main()
