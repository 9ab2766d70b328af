"""Training throughput (images/s) of every classifier and dense model with its recipe.

For each model: its recipe (``experiments/<model>.yaml`` with the device profile, so on CUDA the
``cuda:`` block: width, batch, bf16, compile mode), the trainer built as ``cnnbench train``
builds it, ``--warmup`` steps (compilation, CUDA-graph capture, cuDNN autotuning), then
``--steps`` timed training steps over full batches of the training split (the task's
``prepare`` and augmentation included; the schedule is held still). Times end with a device
synchronisation. A benchmark, not a test: nothing is asserted.

Run: ``python benchmarks/throughput.py [--device cuda] [--models lenet resnet18] [--steps 200]``
One JSON line per model, then a table. ``--scenes`` keeps the dense tasks' data small.

``--profile DIR``: after the timed steps, ``--profile-steps`` more steps (with the metric sums, as
in an epoch) under ``torch.profiler``, each part of a step labelled: ``take`` (the batch from the
resident data set), ``forward+loss`` (prepare, model and loss: what ``compile:`` compiles),
``optimizer`` (``zero_grad`` and ``step``, torch's own labels), ``metrics`` (the device-side
sums) and ``backward and rest`` (what is left of the step). Per step: host milliseconds of each
part, device milliseconds of the kernels each part launched (CUDA), the wall time and how much
of it the device was busy; the top operators; a Chrome trace ``DIR/MODEL-trace.json`` (open it in
https://ui.perfetto.dev). This is where ``docs/performance.md``'s "where the time went" comes
from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

CLASSIFIERS = ("lenet", "lenet-bn", "alexnet", "vgg11", "nin", "googlenet", "resnet18",
               "densenet")
DENSE = ("unet", "fpn-seg", "retinanet", "ssd-resnet", "single-object", "multi-label", "ssd")


class Still:
    """A schedule that does not move (a one-cycle schedule would run out of steps)."""

    def step(self) -> None: ...


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PHASES = ("take", "forward+loss", "optimizer", "metrics")


def _labelled(name: str, fn):
    def run(*args, **kwargs):
        with torch.profiler.record_function(name):
            return fn(*args, **kwargs)
    return run


def profile_steps(trainer, starts: list[int], steps: int, folder, name: str) -> dict:
    """``steps`` training steps under torch.profiler: host and device ms per step of each part."""
    from pathlib import Path

    from cnnbench.tasks.metrics import Meter
    from torch.profiler import ProfilerActivity, profile

    split, bs, device = trainer.train_split, trainer.batch_size, trainer.device
    meter = Meter(trainer.task.metrics(), train=True)
    forward, trainer.forward = trainer.forward, _labelled("forward+loss", trainer.forward)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    try:
        with profile(activities=activities) as prof:
            sync(device)
            t0 = time.perf_counter()
            for i in range(steps):
                with torch.profiler.record_function("step"):
                    s = starts[i % len(starts)]
                    with torch.profiler.record_function("take"):
                        images, targets = split.take(slice(s, s + bs))
                    output, y, loss = trainer.train_step(images, targets)
                    with torch.profiler.record_function("metrics"):
                        meter.update(output, y, loss, images.shape[0])
            sync(device)
            wall = time.perf_counter() - t0
    finally:
        trainer.forward = forward
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(folder / f"{name}-trace.json"))

    def part(event_name: str) -> str | None:
        if event_name in ("step", *PHASES):
            return event_name
        if event_name.startswith(("Optimizer.step#", "Optimizer.zero_grad#")):
            return "optimizer"
        return None

    host = dict.fromkeys(("step", *PHASES), 0.0)
    dev = dict.fromkeys(("step", *PHASES), 0.0)
    for event in prof.events():
        key = part(event.name)
        if key and not (key == "optimizer" and event.cpu_parent is not None
                        and part(event.cpu_parent.name) == "optimizer"):
            host[key] += event.cpu_time_total / 1e3  # us -> ms
            dev[key] += event.device_time_total / 1e3
    busy = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3
    per = 1 / steps
    parts = {k: {"host_ms": round(host[k] * per, 4), "device_ms": round(dev[k] * per, 4)}
             for k in PHASES}
    rest = host["step"] - sum(host[k] for k in PHASES)
    parts["backward and rest"] = {"host_ms": round(rest * per, 4),
                                  "device_ms": round((dev["step"] - sum(dev[k] for k in PHASES))
                                                     * per, 4)}
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    top = [{"op": e.key, "calls_per_step": e.count / steps,
            "self_host_ms": round(e.self_cpu_time_total * per / 1e3, 4),
            "self_device_ms": round(e.self_device_time_total * per / 1e3, 4)}
           for e in sorted(prof.key_averages(), key=lambda e: -getattr(e, sort))
           if e.key not in ("step", *PHASES) and part(e.key) is None][:12]
    return {"steps": steps, "wall_ms": round(wall * 1e3 * per, 4),
            "step_host_ms": round(host["step"] * per, 4),
            "device_busy_ms": round(busy * per, 4), "parts": parts, "top_ops": top,
            "trace": str(folder / f"{name}-trace.json")}


def throughput(model: str, device: str, steps: int, warmup: int, scenes: int,
               overrides: dict, profile_dir=None, profiled_steps: int = 10) -> dict:
    from cnnbench import recipe as cfg
    from cnnbench.devices import device_name
    from cnnbench.training.build import build_trainer
    from cnnbench.training.loop import batch_starts

    changes = {"device": device, "log_graph": False, "log_images": False, **overrides}
    config = cfg.resolve(model, overrides=changes)
    if "scenes" in config:
        config = cfg.resolve(model, overrides={**changes, "scenes": scenes,
                                               "val_size": min(config["val_size"], scenes // 10)})
    trainer = build_trainer(config, callbacks=[])
    trainer.schedule = Still()
    trainer.model.train()
    split, bs = trainer.train_split, trainer.batch_size
    starts = list(batch_starts(len(split), bs, drop_last=True))

    def run(k: int) -> None:
        for i in range(k):
            s = starts[i % len(starts)]
            trainer.train_step(*split.take(slice(s, s + bs)))

    t0 = time.perf_counter()
    run(warmup)
    sync(trainer.device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(steps)
    sync(trainer.device)
    seconds = time.perf_counter() - t0
    images = steps * min(bs, len(split))
    profiled = (profile_steps(trainer, starts, profiled_steps, profile_dir, model)
                if profile_dir else None)
    return {"model": model, "device": str(trainer.device),
            "device_name": device_name(trainer.device),
            "profile": config["profile"], "batch_size": bs, "amp": config["amp"],
            "compile": config["compile"], "model_args": config["model_args"],
            "input_size": config["input_size"], "steps": steps, "warmup_seconds": warm,
            "seconds": seconds, "images_per_second": images / seconds,
            **({"profiler": profiled} if profiled else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", nargs="+", default=[*CLASSIFIERS, *DENSE])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--scenes", type=int, default=2000, help="dense tasks' training scenes")
    parser.add_argument("--limit", type=int, default=None, help="images per split (a check)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every model, e.g. compile=false")
    parser.add_argument("--profile", metavar="DIR", help="then profile: a table and a trace")
    parser.add_argument("--profile-steps", type=int, default=10)
    args = parser.parse_args()
    from cnnbench.keys import parse_set

    overrides = parse_set(args.set)
    if args.limit:
        overrides["limit"] = args.limit
    rows = []
    for model in args.models:
        try:
            row = throughput(model, args.device, args.steps, args.warmup, args.scenes, overrides,
                             args.profile, args.profile_steps)
        except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the rest
            row = {"model": model, "error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'model':<14} {'batch':>5} {'amp':>5} {'compile':>15} {'img/s':>10}", file=sys.stderr)
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<14} error: {r['error'][:60]}", file=sys.stderr)
        else:
            print(f"{r['model']:<14} {r['batch_size']:>5} {r['amp']:>5} {str(r['compile']):>15} "
                  f"{r['images_per_second']:>10,.0f}", file=sys.stderr)
    for r in rows:
        if "profiler" in r:
            print_profile(r["model"], r["profiler"])


def print_profile(model: str, p: dict) -> None:
    print(f"\n{model}: {p['wall_ms']:.3f} ms a step (wall), host {p['step_host_ms']:.3f} ms, "
          f"device busy {p['device_busy_ms']:.3f} ms; trace {p['trace']}", file=sys.stderr)
    print(f"  {'part':<18} {'host ms':>9} {'device ms':>10}", file=sys.stderr)
    for name, t in p["parts"].items():
        print(f"  {name:<18} {t['host_ms']:>9.3f} {t['device_ms']:>10.3f}", file=sys.stderr)
    print(f"  {'top operators':<40} {'calls':>6} {'self host':>10} {'self dev':>9}",
          file=sys.stderr)
    for op in p["top_ops"]:
        print(f"  {op['op'][:40]:<40} {op['calls_per_step']:>6.1f} {op['self_host_ms']:>10.3f} "
              f"{op['self_device_ms']:>9.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
