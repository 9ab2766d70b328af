"""The scenes export round trip: train from the built-in scenes and from their exported files.

Exports the built-in scenes (``scenes_export.export``: ``--scenes`` training and
``--test-scenes`` test scenes) as JPEG + COCO JSON (``--quality``), as PNG + COCO JSON (the
control: the same pixels as the built-in source) and as PNG images + mask PNGs, then trains,
with the same settings and seed on both sides of each pair,

* detection (``ssd-resnet`` by default) from ``scenes`` and from ``coco:.../train.json``, JPEG
  and PNG;
* segmentation (``unet``, small width) from ``scenes`` and from ``masks:...``;

each run a ``cnnbench train`` process on ``--threads`` threads. Prints one JSON object: each
run's test metric (mAP@0.5 for detection, mIoU for segmentation) and minutes, and each pair's
difference from the built-in source (target of issue 24: |diff| <= 0.01). The PNG control tells
JPEG loss from a mismatch in the pipeline: with the same pixels the run must repeat the
built-in one (diff 0).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/scenes_roundtrip.py OUT
    PYTHONPATH=$PWD .venv/bin/python benchmarks/scenes_roundtrip.py OUT --scenes 500 --epochs 1
    PYTHONPATH=$PWD .venv/bin/python benchmarks/scenes_roundtrip.py OUT --seed 1 \\
        --runs detection_scenes detection_coco_jpeg    # the same export, another seed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cnnbench.data import scenes_export


PAIRS = {  # difference: (from the export, from the built-in source, metric)
    "detection_jpeg_map50": ("detection_coco_jpeg", "detection_scenes", "test_map50"),
    "detection_png_map50": ("detection_coco_png", "detection_scenes", "test_map50"),
    "segmentation_miou": ("segmentation_masks", "segmentation_scenes", "test_miou"),
}


def train(out: Path, name: str, model: str, data: str, extra: list[str], args) -> dict:
    """One ``cnnbench train`` run; its test metric, test loss and minutes."""
    cmd = [sys.executable, "-m", "cnnbench", "train", model, "--data", data,
           "--epochs", str(args.epochs), "--seed", str(args.seed), "--run-dir",
           str(out / "runs" / name), "--quiet", "--json",
           "--set", f"scenes={args.scenes}", "--set", f"test_scenes={args.test_scenes}",
           "--set", f"val_size={args.val_size}", "--set", f"threads={args.threads}",
           "--set", "log_images=false", *extra]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode:
        sys.exit(f"{name} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    results = json.loads(proc.stdout)
    metric = "test_map50" if "test_map50" in results else "test_miou"
    return {metric: results[metric], "test_loss": results["test_loss"],
            "minutes": round((time.monotonic() - start) / 60, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a new folder: the exports and the runs")
    parser.add_argument("--scenes", type=int, default=3000)
    parser.add_argument("--test-scenes", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=500, help="at most scenes / 5")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--detector", default="ssd-resnet")
    parser.add_argument("--detector-args", nargs="*", default=["width=16", "head_channels=96"])
    parser.add_argument("--segmenter", default="unet")
    parser.add_argument("--segmenter-args", nargs="*", default=["width=8"])
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST (default: installed)")
    parser.add_argument("--runs", nargs="*", default=None, help="only these runs (default: all)")
    args = parser.parse_args()
    if args.val_size * 5 > args.scenes:
        sys.exit("--val-size must be at most a fifth of --scenes (the file sources' rule)")
    size = dict(scenes_count=args.scenes, test_scenes=args.test_scenes)
    start = time.monotonic()
    if not (args.out / "jpeg").exists():  # an export made by an earlier call is the same
        scenes_export.export(args.out / "jpeg", args.data_dir, **size, quality=args.quality)
        scenes_export.export(args.out / "png", args.data_dir, **size, formats=("coco",),
                             image_format="png")
    export_minutes = round((time.monotonic() - start) / 60, 2)
    built_in = f"scenes:{args.data_dir}" if args.data_dir else "scenes"
    detector = [a for m in args.detector_args for a in ("-m", m)]
    segmenter = [a for m in args.segmenter_args for a in ("-m", m)]
    runs = {
        "detection_scenes": (args.detector, built_in, detector),
        "detection_coco_jpeg": (args.detector, f"coco:{args.out / 'jpeg/coco/train.json'}",
                                detector),
        "detection_coco_png": (args.detector, f"coco:{args.out / 'png/coco/train.json'}",
                               detector),
        "segmentation_scenes": (args.segmenter, built_in, segmenter),
        "segmentation_masks": (args.segmenter, f"masks:{args.out / 'jpeg/masks'}", segmenter),
    }
    results = {name: train(args.out, f"{name}-s{args.seed}", *run, args)
               for name, run in runs.items() if name in (args.runs or runs)}
    diff = {}
    for name, (ours, theirs, metric) in PAIRS.items():
        if ours in results and theirs in results:
            diff[name] = round(results[ours][metric] - results[theirs][metric], 4)
    print(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "out"},
                      "export_minutes": export_minutes, "runs": results, "diff": diff,
                      "within_0.01": {k: abs(v) <= 0.01 for k, v in diff.items()}}, indent=2,
                     default=str))

if __name__ == "__main__":
    main()
