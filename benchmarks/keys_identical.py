"""A change that should change no result changes none: every recipe resolves to the same
configuration, and a few tiny runs end with bitwise the same weights, before (``--base``, a
checkout of the commit before it) and after (this checkout).

Run (from the checkout; 04f1af6 is the last commit before issue 22's re-layering):
  mkdir /tmp/base && git archive 04f1af6 | tar -x -C /tmp/base
  PYTHONPATH=$PWD python3 benchmarks/keys_identical.py --base /tmp/base --out /tmp/keys-runs

Each side runs in its own process with its own tree on ``PYTHONPATH``; the resolver is
``cnnbench.recipe.resolve`` (``cnnbench.config.resolve`` before the re-layering). Resolved dicts
are compared with ``==`` for every ``experiments/*.yaml`` on ``--device cpu`` and ``--device
cuda`` (which applies the recipe's ``cuda:`` block), except the defaults changed on purpose
(``CHANGED_DEFAULTS``), which must then differ exactly as stated there; the runs compare
``torch.equal`` on every tensor of ``checkpoints/last.pt``'s model state. Exit code 1 on any
other difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RESOLVE = """
import json, sys
from pathlib import Path
try:
    from cnnbench.recipe import resolve
except ImportError:  # before issue 22's re-layering
    from cnnbench.config import resolve
out = {}
for path in sorted(Path(sys.argv[1]).glob("*.yaml")):
    for device in ("cpu", "cuda"):
        out[f"{path.stem} {device}"] = resolve(None, path, {"device": device})
print(json.dumps(out))
"""

# Defaults changed on purpose since 04f1af6, as (before, after): issue 22 part 6 (start-up) made
# the TensorBoard graph, a trace of the model, opt-in.
CHANGED_DEFAULTS = {"log_graph": (True, False)}

# Tiny runs: (name, recipe, extra command-line options).
RUNS = (
    ("lenet", "lenet", ["--limit", "512", "--epochs", "1"]),
    ("lenet-bn", "lenet-bn", ["--limit", "256", "--epochs", "1"]),
    ("unet", "unet", ["--limit", "16", "--epochs", "1", "-s", "scenes=48", "-s", "val_size=8",
                      "-s", "batch_size=8", "-m", "width=8"]),
    ("resnet18", "resnet18", ["--limit", "128", "--epochs", "1", "-i", "32"]),
    ("single-object", "single-object", ["--limit", "16", "--epochs", "1", "-s", "scenes=48",
                                        "-s", "val_size=8", "-s", "batch_size=8"]),
    ("multi-label", "multi-label", ["--limit", "16", "--epochs", "1", "-s", "scenes=48",
                                    "-s", "val_size=8", "-s", "batch_size=8"]),
    ("ssd-resnet", "ssd-resnet", ["--limit", "16", "--epochs", "1", "-s", "scenes=48",
                                  "-s", "val_size=8", "-s", "batch_size=8"]),
)


def side(tree: Path, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True,
                          text=True, check=True, **kwargs)


def resolved(tree: Path) -> dict:
    return json.loads(side(tree, ["-c", RESOLVE, str(ROOT / "experiments")]).stdout)


def train(tree: Path, recipe: str, extra: list[str], folder: Path) -> None:
    side(tree, ["-m", "cnnbench", "train", "--config", str(ROOT / "experiments" / f"{recipe}.yaml"),
                "--device", "cpu", "--run-dir", str(folder), "--quiet", "-s", "log_graph=false",
                "-s", "log_images=false", *extra])


def same_weights(a: Path, b: Path) -> tuple[int, list[str]]:
    import torch
    wa = torch.load(a / "checkpoints" / "last.pt", weights_only=True)["model"]
    wb = torch.load(b / "checkpoints" / "last.pt", weights_only=True)["model"]
    differ = [k for k in wa if k not in wb or not torch.equal(wa[k], wb[k])]
    return len(wa), differ + sorted(set(wb) - set(wa))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, type=Path, help="checkout of the commit before")
    p.add_argument("--out", required=True, type=Path, help="folder for the runs")
    p.add_argument("--runs", nargs="*", default=[r[0] for r in RUNS])
    args = p.parse_args()
    failed = False

    before, after = resolved(args.base), resolved(ROOT)
    same = 0
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name, {}), after.get(name, {})
        keys = {k for k in {**a, **b} if a.get(k, "-") != b.get(k, "-")}
        unexpected = sorted(k for k in keys if (a.get(k, "-"), b.get(k, "-"))
                            != CHANGED_DEFAULTS.get(k))
        if unexpected or name not in before or name not in after:
            failed = True
            print(f"DIFFERENT {name}: {unexpected}")
        else:
            same += 1
    changed = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in CHANGED_DEFAULTS.items())
    print(f"resolved configurations: {same}/{len(after)} identical "
          f"({len(after) // 2} recipes x cpu, cuda) but for the defaults changed on purpose "
          f"({changed})")

    for name, recipe, extra in RUNS:
        if name not in args.runs:
            continue
        folders = {label: args.out / f"{name}-{label}" for label in ("before", "after")}
        for (label, folder), tree in zip(folders.items(), (args.base, ROOT)):
            train(tree, recipe, extra, folder)
        tensors, differ = same_weights(*folders.values())
        failed |= bool(differ)
        print(f"run {name} ({' '.join(extra)}): {tensors - len(differ)}/{tensors} tensors of "
              f"last.pt bitwise equal" + (f"; differ: {differ[:5]}" if differ else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
