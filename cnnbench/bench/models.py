"""`cnnbench bench MODEL...`: inference and training-step speed of models per batch size.

Column names follow timm's ``benchmark.py`` where they fit (``infer_samples_per_sec``,
``infer_step_time`` in ms, ``infer_batch_size``, ``infer_img_size``, ``train_*``, ``param_count``
in millions, ``gmacs`` per sample).
"""

from __future__ import annotations

import fnmatch
import gc
import math
import os
from dataclasses import dataclass

import torch

from cnnbench import recipe as config
from cnnbench.bench.timing import (
    autocast, check_min_run_time, device_name, num_threads, available_cores, choose_threads,
    parse_precision, peak_memory_mb, time_call, time_phases)
from cnnbench.building import build, check_memory, eval_mode
from cnnbench.devices import resolve_device
from cnnbench.errors import CnnbenchError
from cnnbench.inputs import parse_input_size
from cnnbench.models import get_model_info, list_models
from cnnbench.registry import TORCHVISION_PREFIX
from cnnbench.summary import summarize
from cnnbench.training.optimizers import OPTIMIZERS, build_optimizer


SWEEPS = ("batch", "size")


GENERIC_LOSS_NOTE = ("training step: cross-entropy against fixed random labels for classifiers, "
                     "otherwise the mean square of every float output (so any model trains)")


def is_wildcard(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def expand_models(patterns: list[str]) -> list[str]:
    """Model names from names and shell wildcards: ``res*`` matches registered names,
    ``torchvision:resnet1*`` torchvision's. A pattern that matches nothing is an error."""
    names = []
    for pattern in patterns:
        if not is_wildcard(pattern):
            get_model_info(pattern)  # an unknown name fails here, before any benchmark
            names.append(pattern)
            continue
        if pattern.startswith(TORCHVISION_PREFIX):
            import torchvision.models as tvm

            found = [TORCHVISION_PREFIX + n for n in
                     fnmatch.filter(tvm.list_models(), pattern[len(TORCHVISION_PREFIX):])]
        else:
            found = fnmatch.filter(list_models(), pattern)
        if not found:
            raise CnnbenchError(f"no model matches {pattern!r}: `cnnbench models` lists ours, "
                                "torchvision:PATTERN matches torchvision's")
        names += sorted(found)
    return list(dict.fromkeys(names))


def check_optimizer(choice: str | None) -> None:
    if choice is not None and choice not in OPTIMIZERS:
        raise CnnbenchError(f"bad --optimizer {choice!r}: use {', '.join(OPTIMIZERS)}")


def training_optimizer(name: str, choice: str | None = None) -> dict:
    """The optimizer of the timed training step: the one of the model's recipe
    (``experiments/NAME.yaml``) with its hyper-parameters, or ``choice`` with the recipe's (else
    the trainer's default) hyper-parameters."""
    check_optimizer(choice)
    recipe = config.default_recipe(name)
    try:
        settings = config.resolve(name)
    except CnnbenchError:  # no recipe, and a task the trainer cannot run: its defaults
        if recipe is not None:
            raise
        settings = config.defaults()
    source = ("--optimizer" if choice else
              f"{recipe.parent.name}/{recipe.name}" if recipe else "the trainer's default")
    name = choice or settings["optimizer"]
    keys = ("lr", *OPTIMIZERS[name].keys)
    return {"name": name, **{k: settings[k] for k in keys}, "source": source}


def make_optimizer(model: torch.nn.Module, settings: dict) -> torch.optim.Optimizer:
    """The trainer's optimizer (its table and parameter groups) from :func:`training_optimizer`."""
    return build_optimizer(model, {"optimizer": settings["name"], **settings})


def _float_outputs(output):
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for o in output for t in _float_outputs(o)]
    return []


def generic_loss(output, labels=None) -> torch.Tensor:
    """Cross-entropy for ``[N, classes]`` logits with labels, else the mean square of outputs."""
    if labels is not None and isinstance(output, torch.Tensor) and output.dim() == 2:
        return torch.nn.functional.cross_entropy(output.float(), labels)
    tensors = _float_outputs(output)
    if not tensors:
        raise CnnbenchError("the model returns no float tensor to train on")
    return sum(t.float().pow(2).mean() for t in tensors)


def _sweep_configs(sweep, batch_sizes, size, fits):
    if sweep is None:
        return [(b, size) for b in batch_sizes]
    if sweep == "batch":
        top = max(max(batch_sizes), 2)
        sizes = [2 ** i for i in range(int(math.log2(top)) + 1)]
        return [(b, size) for b in sizes]
    if sweep == "size":
        c, h, w = size
        configs = []
        for scale in (0.5, 0.75, 1, 1.5, 2):
            s = (c, max(1, round(h * scale)), max(1, round(w * scale)))
            if fits(s) and (batch_sizes[0], s) not in configs:
                configs.append((batch_sizes[0], s))
        return configs
    raise CnnbenchError(f"bad --sweep {sweep!r}: use {' or '.join(SWEEPS)}")


def bench_models(patterns: list[str], *, input_size: str | None = None,
                 model_args: dict | None = None, **options) -> list[dict]:
    """:func:`bench_model` for every model the names and wildcards in ``patterns`` give;
    ``input_size`` is ``--input-size``'s text, read against each model's own channels."""
    names = expand_models(patterns)
    check_optimizer(options.get("optimizer"))
    sizes = [parse_input_size(input_size, get_model_info(n), model_args) for n in names]
    return [bench_model(n, input_size=s, model_args=model_args, **options)
            for n, s in zip(names, sizes)]


@dataclass
class _Setup:
    """What every timed configuration of one model shares."""
    name: str
    runner: torch.nn.Module  # the model, or its compiled form
    model: torch.nn.Module
    device: torch.device
    amp: torch.dtype | None
    memory_format: torch.memory_format
    min_run_time: float
    num_classes: int | None  # classifiers: cross-entropy against random labels
    optimizer: dict | None  # training_optimizer(); None: no training step
    detail: bool
    notes: list


def bench_model(name: str, *, batch_sizes=(1, 8, 32), input_size=None, device: str = "auto",
                precision: str = "fp32", channels_last: bool = False, compile: bool = False,
                model_args: dict | None = None, min_run_time: float = 0.2, train: bool = True,
                sweep: str | None = None, threads: int | None = None,
                optimizer: str | None = None, detail: bool = False) -> dict:
    """Inference and training-step speed of ``name`` per batch size (or over a sweep).

    Returns ``{"model", "device", ..., "rows": [...], "notes": [...]}``; each row has timm's
    column names plus ``*_step_time_iqr`` (ms), ``*_peak_mem_mb`` and ``*_gflops_per_sec``;
    with ``detail``, the training step's ``train_fwd_time``, ``train_bwd_time`` and
    ``train_opt_time`` (timm's names; ms). A batch that runs out of memory is retried at half
    the size, as timm's benchmark does; the row then lists the sizes that failed.
    """
    check_min_run_time(min_run_time)
    info = get_model_info(name)
    dev = resolve_device(device, allow_mps=False)
    amp = parse_precision(precision)
    n_threads, threads_source = choose_threads(threads)
    optimizer_settings = training_optimizer(name, optimizer) if train else None
    size = tuple(input_size or info.input_size)
    check_memory(size, max(batch_sizes), device=dev)  # a batch whose input alone cannot fit
    with num_threads(n_threads):
        rows, notes = _bench_rows(name, info, dev, amp, size, list(batch_sizes), channels_last,
                                  compile, model_args, min_run_time, optimizer_settings, sweep,
                                  detail)
        measured_on = device_name(dev)  # with the threads the timings used
    return {"model": info.name, "task": info.task, "device": str(dev),
            "device_name": measured_on, "precision": precision,
            "channels_last": channels_last, "compile": compile, "sweep": sweep,
            "threads": n_threads, "threads_source": threads_source, "cores": available_cores(),
            "optimizer": optimizer_settings, "detail": detail, "min_run_time": min_run_time,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rows": rows, "notes": notes}


def _bench_rows(name, info, dev, amp, size, batch_sizes, channels_last, compile, model_args,
                min_run_time, optimizer, sweep, detail) -> tuple[list, list]:
    summaries: dict = {}

    def summary(s):
        if s not in summaries:
            summaries[s] = summarize(name, s, batch_size=1, depth=0, model_args=model_args)
        return summaries[s]

    def fits(s):
        try:
            summary(s)
            return True
        except CnnbenchError:
            return False

    configs = _sweep_configs(sweep, batch_sizes, size, fits)
    notes = []
    if sweep == "size" and len(configs) < 2:
        notes.append(f"{info.name} runs at {size[1]}x{size[2]} only (fixed-size dense layers): "
                     "nothing to sweep")
    params = summary(size)["total_params"]

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    try:
        model, _ = build(name, model_args, in_channels=size[0], device=dev)
        model = model.to(memory_format=memory_format)
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
        raise CnnbenchError(f"out of memory on {dev} placing {info.name} ({params / 1e6:.1f} M "
                            "parameters) on it: try --device cpu") from None
    runner = model
    if compile:
        try:
            runner = torch.compile(model)
        except Exception as exc:  # noqa: BLE001 - a backend can fail in many ways
            raise CnnbenchError(f"--compile failed: {str(exc).splitlines()[0]}") from None
    num_classes = None
    if optimizer is not None and info.task == "classification":
        with torch.no_grad(), eval_mode(model):
            probe = model(torch.zeros(1, *size, device=dev))
        if isinstance(probe, torch.Tensor) and probe.dim() == 2:
            num_classes = probe.shape[1]
    setup = _Setup(name, runner, model, dev, amp, memory_format, min_run_time, num_classes,
                   optimizer, detail, notes)

    if optimizer is not None:
        notes += [GENERIC_LOSS_NOTE, "the weights are restored after every batch size, so each "
                                     "starts from the same model"]
    notes.append("peak memory: " + ("torch.cuda.max_memory_allocated above the memory in use "
                                    "before the step" if dev.type == "cuda" else
                                    "live storages created by PyTorch operators during one step "
                                    "(a dispatch mode; operator scratch memory not seen)"))
    notes.append("FLOPs from FlopCounterMode (1 multiply-add = 2 FLOPs); the training step is "
                 "counted as 3x the forward")
    if detail and optimizer is not None:
        notes.append("--detail: forward (with the loss), backward and optimizer step (with "
                     "zero_grad) timed apart within each step, synchronised between them; their "
                     "medians need not add up to the step's")
    rows = []
    for batch, s in configs:
        flops = summary(s)["flops"]
        row = {"model": info.name, "infer_batch_size": batch, "infer_img_size": s[-1],
               "infer_input_size": list(s), "param_count": round(params / 1e6, 3),
               "gmacs": round(flops / 2 / 1e9, 4), "flops_per_sample": flops}
        _at_largest_batch(setup, "infer", batch, s, row)
        if optimizer is not None:
            _at_largest_batch(setup, "train", batch, s, row)
        rows.append(row)
    return rows, notes


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or any(
        s in str(exc) for s in ("out of memory", "can't allocate memory",
                                "CUBLAS_STATUS_ALLOC_FAILED"))


def _at_largest_batch(setup: _Setup, mode: str, batch: int, size, row: dict) -> None:
    """Time ``mode`` (infer or train) at ``batch`` into ``row``, halving the batch after each
    out-of-memory error; out of memory at batch 1 is a one-line error naming what to reduce."""
    what = "the training step" if mode == "train" else "inference"
    failed = []
    while True:
        try:
            figures = _TIMED[mode](setup, batch, size, row["flops_per_sample"])
            break
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if not _is_out_of_memory(exc):
                raise
        # Out of the except block: the traceback, and the tensors its frames hold, are gone.
        gc.collect()
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
        failed.append(batch)
        if batch == 1:
            ways = ["a smaller --input-size"]
            if setup.amp is None and setup.device.type == "cuda":
                ways.append("--precision bf16")
            ways += ["--no-train"] if mode == "train" else []
            raise CnnbenchError(f"out of memory on {setup.device} in {what} of {setup.name} at "
                                f"batch 1, input {'x'.join(map(str, size))}: try "
                                f"{' or '.join(ways)}")
        batch //= 2
    if not figures:  # the training step could not run: said in a note
        return
    row.update({f"{mode}_batch_size": batch, f"{mode}_img_size": size[-1], **figures})
    if failed:
        row[f"{mode}_oom_batch_sizes"] = failed
        setup.notes.append(f"{setup.name}: {what} ran out of memory at batch "
                           f"{', '.join(map(str, failed))}; measured at batch {batch} (halving "
                           "the batch, as timm's benchmark does)")


def _example_input(batch: int, size, setup: _Setup) -> torch.Tensor:
    return torch.randn(batch, *size, device=setup.device).to(memory_format=setup.memory_format)


def _figures(mode: str, t: dict, batch: int, flops: float, peak_mb: float) -> dict:
    """Timm's columns from a timing; ``flops`` per sample of the forward (a training step
    counts 3 times as much)."""
    seconds = t["median_ms"] / 1e3
    work = (3 if mode == "train" else 1) * flops * batch
    return {f"{mode}_samples_per_sec": round(batch / seconds, 2),
            f"{mode}_step_time": round(t["median_ms"], 3),
            f"{mode}_step_time_iqr": round(t["iqr_ms"], 3),
            f"{mode}_gflops_per_sec": round(work / seconds / 1e9, 2),
            f"{mode}_peak_mem_mb": round(peak_mb, 2)}


def _time_infer(setup: _Setup, batch: int, size, flops: float) -> dict:
    x = _example_input(batch, size, setup)

    def infer():
        with torch.inference_mode(), autocast(setup.device, setup.amp):
            return setup.runner(x)

    setup.model.eval()
    try:
        t = time_call(infer, setup.min_run_time, setup.device)
        return _figures("infer", t, batch, flops, peak_memory_mb(infer, setup.device))
    except RuntimeError as exc:
        if _is_out_of_memory(exc):
            raise
        raise CnnbenchError(f"{setup.name} failed at batch {batch}, input {list(size)}: "
                            f"{str(exc).strip().splitlines()[0]}") from None


def _time_train(setup: _Setup, batch: int, size, flops: float) -> dict:
    """The training step's figures at ``batch``, or ``{}`` (with a note) when it cannot run."""
    dev, model = setup.device, setup.model
    x = _example_input(batch, size, setup)
    labels = (torch.randint(0, setup.num_classes, (batch,), device=dev)
              if setup.num_classes else None)
    optimizer = make_optimizer(model, setup.optimizer)
    scaler = torch.amp.GradScaler(dev.type) if setup.amp is torch.float16 and \
        dev.type == "cuda" else None
    state = {}

    def forward():
        with autocast(dev, setup.amp):
            state["loss"] = generic_loss(setup.runner(x), labels)

    def backward():
        loss = state.pop("loss")
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def optimizer_step():
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step():
        forward()
        backward()
        optimizer_step()

    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        t = time_call(step, setup.min_run_time, dev)
        figures = _figures("train", t, batch, flops, peak_memory_mb(step, dev))
        if setup.detail:
            phases = time_phases({"fwd": forward, "bwd": backward, "opt": optimizer_step},
                                 setup.min_run_time, dev)
            for key, p in phases.items():
                figures[f"train_{key}_time"] = round(p["median_ms"], 3)
                figures[f"train_{key}_time_iqr"] = round(p["iqr_ms"], 3)
        return figures
    except (RuntimeError, ValueError, AssertionError) as exc:
        if _is_out_of_memory(exc):
            raise
        note = (f"training step skipped at batch {batch}: "
                f"{str(exc).strip().splitlines()[0][:120]}")
        if note not in setup.notes:
            setup.notes.append(note)
        return {}
    finally:
        state.clear()
        model.load_state_dict(weights)


_TIMED = {"infer": _time_infer, "train": _time_train}
