"""`cnnbench summary` against torchinfo: parameters, layer output shapes, FLOPs and wall time.

For every registered model and every torchvision classification model (``--torchvision``), in
one process:

* params: ``total_params`` of both;
* shapes: layers whose output shape differs (each module's last call; torchinfo's rows, ours at
  the full depth), out of the layers both show;
* FLOPs: ours against torchinfo's mult-adds x 2, layer by layer. The two count differently by
  design, so a layer's difference is *explained* only where both numbers equal what each tool's
  rule gives from the layer's shapes (:func:`explain`): torchinfo counts a bias add per output
  position, a normalisation layer's parameters once per sample, a Linear once per sample (not
  per token), a transposed convolution at its output positions, and only leaf layers with
  weights; the FLOP formulas count none of these but every matmul. Any other difference is
  *unexplained*: the figure to keep at zero;
* wall time (``--rounds``, 0 to skip): building the model and summarising it, the way each tool
  is used from Python (``summarize(name)``; ``torchinfo.summary(get_model(name), input_size,
  device="cpu")``), after one warm-up each, best of the rounds, the two interleaved so that load
  from other work hits both alike. The ratio is ours / torchinfo's (below 1: we are quicker).

torchinfo is in the dev extra (``pip install -e .[dev]``):

    .venv/bin/python benchmarks/torchinfo_compare.py --rounds 0            # the counts
    .venv/bin/python benchmarks/torchinfo_compare.py --models lenet,nin --torchvision none

Prints a markdown table, the explained differences by kind and the summary line: params equal,
shape mismatches, FLOPs equal or explained, unexplained differences (and the time ratios).
docs/torchinfo.md keeps the latest counts.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections import defaultdict

import torch
import torchinfo
from torch import nn

from cnnbench.models import get_model, get_model_info, list_models
from cnnbench.summary import summarize

# ``--torchvision`` default: every classification model torchvision has.
def torchvision_classifiers() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)



def build(name: str) -> torch.nn.Module:
    return get_model(name, **({"weights": None} if name.startswith("torchvision:") else {}))


def ours(name: str, size) -> dict:
    return summarize(name, size, depth=99)


def theirs(name: str, size):
    return torchinfo.summary(build(name), input_size=(1, *size), device="cpu", verbose=0,
                             depth=99)


def _first_shape(shape):
    """A tensor's shape, or the first tensor's shape in a nested output's shapes."""
    if not isinstance(shape, (list, tuple, dict)) or all(isinstance(d, int) for d in shape):
        return shape
    leaves = shape.values() if isinstance(shape, dict) else shape
    return next((f for f in map(_first_shape, leaves) if f is not None), None)


def shape_mismatches(mine: dict, info) -> tuple[int, int, int]:
    """(mismatches, layers compared, multi-output layers): torchinfo's last row per module
    against our row. torchinfo shows the first tensor of a module returning several; we show
    them all, and compare the first (those layers are counted apart, as explained)."""
    model = info.summary_list[0].module if info.summary_list else None
    names = {m: n for n, m in model.named_modules()} if model is not None else {}
    last = {}
    for row in info.summary_list:
        if row.module in names and names[row.module] and row.output_size:
            last[names[row.module]] = list(row.output_size)
    ours_ = {layer["name"]: layer["output_shape"] for layer in mine["layers"]}
    compared = [n for n in last if ours_.get(n) is not None]
    several = [n for n in compared if _first_shape(ours_[n]) != ours_[n]]
    return (sum(_first_shape(ours_[n]) != last[n] for n in compared), len(compared),
            len(several))


# --- FLOPs, layer by layer -----------------------------------------------------------------

NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _positions(shape) -> int:
    """Batch times spatial positions of an ``[N, C, ...]`` shape."""
    return shape[0] * math.prod(shape[2:])


def explain(module: nn.Module, calls: list, ours: int, theirs: int) -> str | None:
    """Why our FLOPs ``ours`` and torchinfo's ``theirs`` (mult-adds x 2) of one leaf module
    differ, where both equal their tool's rule on the module's shapes (``calls``: torchinfo's
    rows of that module, one per call); None where that does not hold."""
    own = dict(module.named_parameters(recurse=False))
    w = own["weight"].numel() if "weight" in own else 0
    b = own["bias"].numel() if own.get("bias") is not None else 0
    if not own:
        return "no weights (torchinfo counts layers with weights only)" if theirs == 0 else None
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        rule = (sum(2 * w * _positions(c.input_size) for c in calls),
                sum(2 * (w + b) * _positions(c.output_size) for c in calls))
        kind = "transposed convolution (torchinfo: at its output positions)"
    elif isinstance(module, nn.modules.conv._ConvNd) or type(module).__name__ == "DeformConv2d":
        rule = (sum(2 * w * _positions(c.output_size) for c in calls),
                sum(2 * (w + b) * _positions(c.output_size) for c in calls))
        kind = "bias adds (torchinfo counts them, the FLOP formulas do not)"
    elif isinstance(module, nn.Linear):
        tokens = [math.prod(c.output_size[:-1]) for c in calls]
        rule = (sum(2 * w * t for t in tokens),
                sum(2 * (w + b) * c.output_size[0] for c in calls))
        kind = ("bias adds (torchinfo counts them, the FLOP formulas do not)"
                if all(len(c.output_size) == 2 for c in calls)
                else "Linear on tokens (torchinfo: once per sample)")
    elif isinstance(module, NORMS):
        rule = (0, sum(2 * (w + b) * c.output_size[0] for c in calls))
        kind = "normalisation (torchinfo: its parameters once per sample; no FLOP formula)"
    else:
        return None
    return kind if rule == (ours, theirs) else None


def flop_differences(mine: dict, info) -> tuple[dict[str, int], list[str]]:
    """FLOP differences by explanation, and the layers whose difference is unexplained."""
    model = info.summary_list[0].module
    names = {id(m): n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    calls, theirs = defaultdict(list), defaultdict(int)
    for row in info.summary_list:
        if row.is_leaf_layer and id(row.module) in names:
            calls[names[id(row.module)]].append(row)
            theirs[names[id(row.module)]] += 2 * row.macs
    ours = {layer["name"]: layer["flops"] for layer in mine["layers"]}
    ours[""] = mine["flops"] - sum(ours.values())  # the model's own forward
    explained, unexplained = defaultdict(int), []
    for name in sorted(set(ours) | set(theirs)):
        mine_, theirs_ = ours.get(name, 0), theirs.get(name, 0)
        if mine_ == theirs_:
            continue
        module = modules.get(name)
        leaf = module is not None and next(module.children(), None) is None
        if not leaf:
            why = ("outside leaf layers (torchinfo counts leaf layers only)"
                   if theirs_ == 0 else None)
        else:
            why = explain(module, calls[name], mine_, theirs_)
        if why is None:
            unexplained.append(f"{name or '(model)'} ({type(module).__name__}): "
                               f"ours {mine_:,}, torchinfo {theirs_:,}")
        else:
            explained[why] += 1
    return dict(explained), unexplained


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
    bad, compared, several = shape_mismatches(mine, info)
    explained, unexplained = flop_differences(mine, info)
    params_differ = mine["total_params"] != info.total_params
    return {"model": name, "params": mine["total_params"], "params_ti": info.total_params,
            "shapes": f"{bad}/{compared}", "bad": bad, "several": several,
            "flops": mine["flops"],
            "flops_ti": 2 * info.total_mult_adds, "explained": explained,
            "unexplained": unexplained + (["total params"] if params_differ else [])
            + ([f"{bad} shapes"] if bad else []),
            "ours_s": min(t_ours, default=math.nan), "ti_s": min(t_theirs, default=math.nan),
            "device": mine["device"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names (default: every registered one)")
    parser.add_argument("--torchvision", default="all",
                        help="torchvision classification models: all, none or comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (0: no timing)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torchvision googlenet init
    warnings.filterwarnings("ignore", category=UserWarning)  # torchinfo on unused modules
    torch.set_num_threads(1)  # both alike; a loaded 2-core machine makes threads noise
    vision = (torchvision_classifiers() if args.torchvision == "all" else
              [] if args.torchvision == "none" else args.torchvision.split(","))
    names = (args.models.split(",") if args.models else list_models()) + \
        [f"torchvision:{n}" for n in vision]
    timed = args.rounds > 0
    print("| model | params (ours / torchinfo) | shape mismatches | FLOPs ours | "
          "torchinfo MACs x2 | FLOP layers explained | unexplained |"
          + (" ours s (device) | torchinfo s | ratio |" if timed else ""))
    print("|---" * (10 if timed else 7) + "|")
    rows = []
    for name in names:
        r = compare(name, args.rounds)
        rows.append(r)
        same = "=" if r["params"] == r["params_ti"] else f"/ {r['params_ti']:,}"
        times = (f" {r['ours_s']:.3f} ({r['device']}) | {r['ti_s']:.3f} | "
                 f"{r['ours_s'] / r['ti_s']:.2f} |") if timed else ""
        print(f"| {name} | {r['params']:,} {same} | {r['shapes']} | {r['flops'] / 1e9:.4g} G | "
              f"{r['flops_ti'] / 1e9:.4g} G | {sum(r['explained'].values())} | "
              f"{'; '.join(r['unexplained']) or 0} |{times}", flush=True)
    kinds = defaultdict(lambda: [0, 0])  # explanation -> [layers, models]
    for r in rows:
        for why, layers in r["explained"].items():
            kinds[why][0] += layers
            kinds[why][1] += 1
    several = [r for r in rows if r["several"]]
    print(f"\nexplained shape differences: {sum(r['several'] for r in several)} layers in "
          f"{len(several)} models return several tensors (torchinfo shows the first; so do "
          f"the counts above)")
    print("explained FLOP differences (layers, models):")
    for why, (layers, models) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        print(f"- {why}: {layers} layers in {models} models")
    flops_ok = sum(r["flops"] == r["flops_ti"] or not r["unexplained"] for r in rows)
    print(f"\n{len(rows)} models: params equal on "
          f"{sum(r['params'] == r['params_ti'] for r in rows)}/{len(rows)}; shape mismatches "
          f"{sum(r['bad'] for r in rows)}; FLOPs equal on "
          f"{sum(r['flops'] == r['flops_ti'] for r in rows)}/{len(rows)}, equal or explained "
          f"layer by layer on {flops_ok}/{len(rows)}; unexplained differences "
          f"{sum(len(r['unexplained']) for r in rows)}")
    if timed:
        ratios = [r["ours_s"] / r["ti_s"] for r in rows]
        worst = max(rows, key=lambda r: r["ours_s"] / r["ti_s"])
        print(f"time ratio geometric mean {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}"
              f", worst {max(ratios):.2f} ({worst['model']})")


if __name__ == "__main__":
    main()
