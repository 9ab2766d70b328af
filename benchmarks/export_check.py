"""Issue 26's figures for export, bench FILE and predict --csv, measured on this machine's CPU.

1. Export equality: one-epoch runs of lenet, resnet18, unet and single-object (small, real
   Fashion-MNIST data: ``--limit``, small scenes) are exported to ONNX and TorchScript;
   ``cnnbench export`` reports the largest absolute difference from the eager model on the
   run's own test images (the target: <= 1e-5 in float32).
2. Speed: ``cnnbench bench FILE.onnx --compile`` for lenet and resnet18 at batch 1 and 64:
   onnxruntime's CPU provider, eager PyTorch and torch.compile, as ratios to eager.
3. Memory: ``cnnbench predict RUN FOLDER --csv`` over 1,000 and over 10,000 PNG files (the
   Fashion-MNIST test images) in child processes; their peak RSS (``wait4``'s ru_maxrss) should
   agree within 10 %.

    .venv/bin/python benchmarks/export_check.py                 # all three, about 10 minutes
    .venv/bin/python benchmarks/export_check.py --only memory   # one part
    .venv/bin/python benchmarks/export_check.py --work /tmp/x   # keep the runs and files there

The runs are trained in ``--work`` (a temporary folder by default) with ``cnnbench train``; the
figures are printed and written to ``WORK/export_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENES = ["--set", "scenes=256", "--set", "test_scenes=64", "--set", "scene_size=32",
          "-i", "1x32x32"]
RUNS = {  # name: (model, cnnbench train options); one epoch, small
    "lenet": ("lenet", ["--limit", "1000"]),
    # 32 steps at the recipe's lr scaled to batch 32: batch-norm statistics and weights sane
    # (8 steps at lr 0.2 left outputs near 3e6, where float32's last bits alone are ~0.1)
    "resnet18": ("resnet18", ["--limit", "1024", "-b", "32", "--lr", "0.025", "-i", "1x64x64"]),
    "unet": ("unet", ["--limit", "256", *SCENES]),
    "single-object": ("single-object", ["--limit", "256", *SCENES]),
}


def cnnbench(*args, env=None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "cnnbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"cnnbench {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
    return done


def train_runs(work: Path, names) -> dict[str, Path]:
    runs = {}
    for name in names:
        model, options = RUNS[name]
        run = work / "runs" / (name if name != "resnet18" else "resnet18-64")
        if not (run / "checkpoints" / "best.pt").is_file():
            t0 = time.perf_counter()
            cnnbench("train", model, "--epochs", "1", "--quiet", "--set", "log_graph=false",
                     "--run-dir", run, *options)
            print(f"trained {name} in {time.perf_counter() - t0:.0f} s", flush=True)
        runs[name] = run
    return runs


def equality(runs: dict[str, Path]) -> list[dict]:
    rows = []
    for name, run in runs.items():
        for fmt in ("onnx", "torchscript"):
            result = json.loads(cnnbench("export", run, "--format", fmt, "--json").stdout)
            rows.append({"model": name, "format": fmt, "max_abs_diff": result["max_abs_diff"],
                         "max_abs_output": result["max_abs_output"],
                         "images": result["checked_images"], "file": result["file"]})
            print(f"export {name:14} {fmt:12} max abs diff {result['max_abs_diff']:.3g} "
                  f"(outputs up to {result['max_abs_output']:.3g}, "
                  f"{result['checked_images']} test images)", flush=True)
    return rows


def speed(runs: dict[str, Path], min_run_time: float) -> list[dict]:
    rows = []
    for name in ("lenet", "resnet18"):
        onnx = runs[name] / "export" / "best.onnx"
        if not onnx.is_file():
            cnnbench("export", runs[name], "--format", "onnx")
        result = json.loads(cnnbench("bench", onnx, "-b", "1,64", "--compile",
                                     "--min-run-time", min_run_time, "--json").stdout)
        for r in result["rows"]:
            rows.append({"model": name, "runtime": r["runtime"],
                         "batch": r["infer_batch_size"], "ms": r["infer_step_time"],
                         "iqr_ms": r["infer_step_time_iqr"],
                         "speed_vs_eager": r["speed_vs_eager"],
                         "threads": result["threads"], "device": result["device_name"]})
            print(f"bench {name:9} batch {r['infer_batch_size']:3} {r['runtime']:28} "
                  f"{r['infer_step_time']:9.3f} ms  x{r['speed_vs_eager']:.2f} eager "
                  f"({result['device_name']})", flush=True)
    return rows


def write_test_pngs(folder: Path, n: int) -> None:
    from PIL import Image

    from cnnbench.data import fashion_mnist as fm

    if folder.is_dir() and len(list(folder.glob("*.png"))) == n:
        return
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = fm.load_split("test")
    for i in range(n):
        Image.fromarray(images[i % len(images), 0].numpy()).save(folder / f"{i:05d}.png")


def peak_rss_mb(args) -> tuple[float, float]:
    """Peak RSS (MiB) and wall seconds of ``cnnbench ARGS`` in a child process."""
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "cnnbench", *map(str, args)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        sys.exit(f"cnnbench {' '.join(map(str, args))} failed: {child.stderr.read()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def memory(runs: dict[str, Path], work: Path, batch_size: int) -> list[dict]:
    rows = []
    for n in (1000, 10000):
        folder = work / f"pngs-{n}"
        write_test_pngs(folder, n)
        rss, seconds = peak_rss_mb(["predict", runs["lenet"], folder, "--csv",
                                    work / f"predict-{n}.csv", "--batch-size", batch_size])
        lines = sum(1 for _ in open(work / f"predict-{n}.csv")) - 1
        rows.append({"files": n, "rows": lines, "peak_rss_mb": round(rss, 1),
                     "seconds": round(seconds, 1), "batch_size": batch_size})
        print(f"predict --csv over {n:6,} files: {lines:,} rows, peak RSS {rss:.1f} MiB, "
              f"{seconds:.1f} s", flush=True)
    ratio = rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"peak RSS 10,000 / 1,000 files: {ratio:.3f} (target within 10 %)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--only", choices=("equality", "speed", "memory"), default=None)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="export_check-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CNNBENCH_SCENES_CACHE", str(work / "scenes"))
    sys.path.insert(0, str(ROOT))
    parts = [args.only] if args.only else ["equality", "speed", "memory"]
    needed = {"equality": list(RUNS), "speed": ["lenet", "resnet18"], "memory": ["lenet"]}
    runs = train_runs(work, dict.fromkeys(n for p in parts for n in needed[p]))
    figures = {"load_average": os.getloadavg(), "cores": os.cpu_count()}
    if "equality" in parts:
        figures["equality"] = equality(runs)
    if "speed" in parts:
        figures["speed"] = speed(runs, args.min_run_time)
    if "memory" in parts:
        figures["memory"] = memory(runs, work, args.batch_size)
    (work / "export_check.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures in {work / 'export_check.json'}")


if __name__ == "__main__":
    main()
