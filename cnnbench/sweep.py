"""Sweeps: every setting of a grid, for each seed, one run folder each (`cnnbench sweep`).

A sweep folder (``runs/sweep-<model>-<plan digest>`` or ``--dir``) holds::

    .lock                  the pid of the sweep running in it (one at a time)
    sweep.yaml             the plan: model, recipe (and its sha256), fixed keys, grid, seeds, runs
    lr=0.003,seed=0/       a run folder per (setting, seed), named by its grid values and seed
    logs/NAME.log          a run's output, with --parallel

Every run's configuration is resolved and checked (``config.resolve``) before the first starts,
so a bad key or value stops the whole sweep in one line and leaves no folder. The default
folder's name ends in a digest of the plan (``plan_digest``: model, recipe and its content, fixed
keys, grid, seeds), so the same command finds the same folder and a different plan another one.
Running the sweep again (the same command, or ``--resume DIR``) skips the finished runs (their
``results.json``; their files are not touched), resumes the interrupted ones from their last
checkpoint and starts the rest. ``--parallel N`` runs N at once, as ``cnnbench train``
processes: one GPU each on CUDA, ``threads`` set so that N x threads fit the cores on the CPU.

A sweep file is a recipe with three more keys (``model``, ``config``, ``grid``, ``seeds``)::

    model: lenet
    grid: {lr: [0.003, 0.01], batch_size: [128, 256]}
    seeds: [0, 1]
    epochs: 1            # any other key is fixed for every run
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from cnnbench import recipe as cfg
from cnnbench import train
from cnnbench.errors import CnnbenchError
from cnnbench.files import SWEEP_PLAN, RunLayout, guarded, write_yaml
from cnnbench.keys import parse_assignments, parse_value
from cnnbench.launchers import Job, Stop
from cnnbench.runs import list_runs
from cnnbench.training.runs import (claim_run_dir, lock_holder, lock_run,
                                    release_run, resolve_mode)

PLAN = SWEEP_PLAN
FILE_KEYS = ("model", "config", "grid", "seeds")  # a sweep file's own keys; the rest are fixed
PLAN_KEYS = ("model", "config", "config_sha256", "fixed", "grid", "seeds")  # what must match


# --- the plan ---

def split_values(text: str) -> list[str]:
    """``0.1,0.2`` -> ['0.1', '0.2']; commas inside brackets or braces stay (``[1,2],[3,4]``)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in [*parts, current] if p.strip()]


def parse_grid(items: list[str] | None) -> dict[str, list]:
    """``--grid KEY=V1,V2`` strings -> {key: [values]} (each value YAML, as ``--set`` reads it)."""
    return parse_assignments(items, "--grid", "lr=0.05,0.1", form="KEY=V1,V2,...",
                             read=lambda text: [parse_value(v) for v in split_values(text)])


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in split_values(text)]
    except ValueError:
        raise CnnbenchError(f"bad --seeds {text!r}: use whole numbers, e.g. 0,1,2") from None


def read_sweep_file(path: str | os.PathLike) -> dict:
    """A sweep YAML -> {model, config, grid, seeds, fixed}."""
    data = cfg.read_yaml(path)
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise CnnbenchError(f"{path}: grid must map each key to a list of values, "
                            "e.g. grid: {lr: [0.05, 0.1]}")
    seeds = data.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise CnnbenchError(f"{path}: seeds must be a list of whole numbers, e.g. [0, 1, 2]")
    fixed = {k: v for k, v in data.items() if k not in (*FILE_KEYS, "runs", "config_sha256",
                                                           "fixed")}
    fixed.update(data.get("fixed") or {})  # a written plan keeps them apart
    return {"model": data.get("model"), "config": data.get("config"), "grid": grid,
            "seeds": seeds, "fixed": fixed}


def spec(model: str | None = None, config_file: str | None = None, fixed: dict | None = None,
         grid: dict | None = None, seeds: list[int] | None = None,
         file: str | os.PathLike | None = None) -> dict:
    """What to sweep, from a sweep file (or a sweep's folder: its plan) and/or the command line,
    which beats the file: its fixed keys, a grid key's values, the seeds."""
    if file and Path(file).is_dir():
        read_plan(file)  # a one-line error when it is no sweep
        file = Path(file) / PLAN
    base = read_sweep_file(file) if file else {"grid": {}, "fixed": {}}
    return {"model": model or base.get("model"), "config": config_file or base.get("config"),
            "fixed": {**base["fixed"], **{k: v for k, v in (fixed or {}).items()
                                          if v is not None}},
            "grid": {**base["grid"], **(grid or {})},
            "seeds": seeds if seeds is not None else base.get("seeds")}


def value_text(value) -> str:
    """A value as it reads in a run's name: YAML's flow style without spaces (0.003, true,
    [0.9,0.99], {width:8}); a path's slashes become underscores."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("...").strip().replace(" ", "")
    return text.replace("/", "_").replace(os.sep, "_")


def run_name(setting: dict, seed: int) -> str:
    return ",".join(f"{k}={value_text(v)}" for k, v in [*setting.items(), ("seed", seed)])


def settings(grid: dict) -> list[dict]:
    """Every combination of the grid's values, the first key varying slowest."""
    combos = [{}]
    for key, values in grid.items():
        combos = [{**c, key: v} for c in combos for v in values]
    return combos


MAX_RUNS = 100  # runs a sweep starts without --yes
MAX_RUNS_EVER = 100_000  # each is resolved before the first starts


def check_size(s: dict, yes: bool = False) -> int:
    """The number of runs ``s`` asks for, counted before any is resolved: more than
    ``MAX_RUNS`` needs ``yes`` (``--yes``), more than ``MAX_RUNS_EVER`` is refused."""
    grid = s["grid"] if isinstance(s["grid"], dict) else {}
    runs = math.prod(len(v) if isinstance(v, list) else 1 for v in grid.values())
    runs *= len(s["seeds"]) if isinstance(s["seeds"], list) and s["seeds"] else 1
    if runs > MAX_RUNS_EVER:
        raise CnnbenchError(f"the sweep asks for {runs:,} runs, more than {MAX_RUNS_EVER:,}: "
                            f"give fewer grid values or seeds")
    if runs > MAX_RUNS and not yes:
        raise CnnbenchError(f"the sweep asks for {runs:,} runs (more than {MAX_RUNS}): add "
                            f"--yes to start them all, or give fewer grid values or seeds")
    return runs


def make_plan(s: dict) -> tuple[dict, list[dict]]:
    """The plan (what sweep.yaml holds) and every run's resolved configuration; a bad key or
    value in any run is a one-line error here, before any folder or run."""
    if not s["model"]:
        raise CnnbenchError("no model: give MODEL or a sweep file with a `model:` key")
    grid, fixed = s["grid"], s["fixed"]
    for key, values in grid.items():
        if key == "seed":
            raise CnnbenchError("seed is not a grid key: give the seeds with --seeds 0,1,2")
        if not isinstance(values, list) or not values:
            raise CnnbenchError(f"the grid gives no values for {key}: give at least one, "
                                f"e.g. {key}=V1,V2")
        twice = [v for i, v in enumerate(values) if v in values[:i]]
        if twice:
            raise CnnbenchError(f"the grid gives {key}={value_text(twice[0])} twice")
        if key in fixed:
            raise CnnbenchError(f"{key} is both fixed ({value_text(fixed[key])}) and in the "
                                f"grid: give it in one place")
    if "seed" in fixed and s["seeds"] is not None:
        raise CnnbenchError("give the seed with --seeds or as a fixed key, not both")
    recipe = s["config"] or cfg.default_recipe(s["model"])
    base = cfg.resolve(s["model"], recipe, fixed)  # a bad fixed key fails once, here
    seeds = s["seeds"] if s["seeds"] is not None else [base["seed"]]
    if not seeds:
        raise CnnbenchError("--seeds gives no seed: give at least one, e.g. 0,1")
    if len(set(seeds)) != len(seeds):
        raise CnnbenchError(f"--seeds gives a seed twice: {seeds}")
    runs, configs = [], []
    for setting in settings(grid):
        for seed in seeds:
            overrides = {**setting, "seed": seed}
            try:
                configs.append(cfg.resolve(s["model"], recipe, {**fixed, **overrides}))
            except CnnbenchError as exc:
                raise CnnbenchError(f"{exc} (sweep run {run_name(setting, seed)})") from None
            runs.append({"name": run_name(setting, seed), "overrides": overrides})
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise CnnbenchError("two grid values give the same run name; use values that differ "
                            "in their text")
    for config in configs:
        _check_model_args(config)
    plan = {"model": s["model"], "config": str(recipe) if recipe else None,
            "config_sha256": _sha256(recipe), "fixed": fixed, "grid": grid, "seeds": seeds,
            "runs": runs}
    return plan, configs


def _check_model_args(config: dict) -> None:
    from cnnbench.models import get_model_info
    from cnnbench.registry import check_options

    check_options(get_model_info(config["model"]), config["model_args"])


def _sha256(path) -> str | None:
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise CnnbenchError(f"cannot read config {path}: {exc.strerror or exc}") from None


def read_plan(folder: str | os.PathLike) -> dict:
    path = Path(folder) / PLAN
    if not path.is_file():
        raise CnnbenchError(f"{folder} is not a cnnbench sweep (no {PLAN})")
    plan = cfg.read_yaml(path)
    if not isinstance(plan.get("runs"), list):
        raise CnnbenchError(f"{path} has no runs: list (not written by cnnbench sweep?)")
    return plan


def plan_digest(plan: dict, keys=PLAN_KEYS) -> str:
    """Eight hex digits naming the plan (the ``keys`` a rerun must match): the default sweep
    folder is ``sweep-MODEL-DIGEST``, so that the same command continues the same sweep."""
    text = json.dumps({k: plan.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_folder(plan: dict, root: str | os.PathLike = "runs", keys=PLAN_KEYS) -> Path:
    model = str(plan["model"]).replace(":", "-").replace("/", "-")
    return Path(root) / f"sweep-{model}-{plan_digest(plan, keys)}"


def is_search(folder: str | os.PathLike) -> bool:
    """A sweep folder holding an Optuna search (``cnnbench.search``), not a grid."""
    return is_sweep(folder) and "search" in read_plan(folder)


def check_same_plan(folder: Path, plan: dict, keys=PLAN_KEYS) -> None:
    """Continuing a sweep must mean the same sweep: a one-line error naming what differs."""
    saved = read_plan(folder)
    for key in keys:
        if saved.get(key) != plan.get(key):
            what = ("the recipe file changed since the sweep began" if key == "config_sha256"
                    else f"its {key} is {saved.get(key)!r}, here {plan.get(key)!r}")
            raise CnnbenchError(f"{folder} holds another sweep ({what}): give another --dir, "
                                f"or `cnnbench sweep --resume {folder}` to continue it as it was")


# --- running it ---

def prepare(s: dict, folder: str | os.PathLike | None = None, resume: bool = False,
            root: str | os.PathLike = "runs", parallel: int = 1) -> tuple[dict, list[dict], Path]:
    """Plan, check every run (and ``parallel`` against the GPUs), then claim (make and lock)
    the sweep folder and write its plan. ``folder`` holding a sweep continues it when the plan
    is the same."""
    if resume and folder is None:
        raise CnnbenchError("--resume needs the sweep's folder")
    if parallel < 1:
        raise CnnbenchError("--parallel must be >= 1")
    plan, configs = make_plan(s)
    if parallel > 1:
        slots(configs, parallel)
    if folder is None:
        folder = default_folder(plan, root)
    if (Path(folder) / PLAN).is_file():
        folder = Path(folder)
        check_same_plan(folder, plan)
        lock_run(folder)
        return plan, configs, folder
    if resume:
        read_plan(folder)  # the one-line error: not a sweep
    folder = claim_run_dir(folder)
    write_yaml(folder / PLAN, plan)
    return plan, configs, folder


def run_state(folder: Path) -> str:
    """``finished`` (results.json), ``resume`` (a checkpoint to continue) or ``start``."""
    if RunLayout(folder).results.is_file():
        return "finished"
    return "resume" if RunLayout(folder).last.is_file() else "start"


def _stop_callback(stop: Stop):
    """A callback that carries a signal between the sweep and a run: one that came while the run
    was being built stops it before training (its folder is removed: nothing to resume), and
    one the trainer caught too late to act on (during the test) stops the sweep after it."""
    from cnnbench.training.interrupt import Interrupt, Interrupted
    from cnnbench.training.loop import Callback

    class StopSweep(Callback):
        order = 96  # after Interrupt's handlers are in place (before_fit), restored (after_fit)

        def before_fit(self, trainer) -> None:
            if stop.signum is not None:
                raise Interrupted(f"{signal.Signals(stop.signum).name}: stopped", stop.signum)

        def after_fit(self, trainer) -> None:
            for callback in trainer.callbacks:
                if isinstance(callback, Interrupt) and callback.signum and stop.signum is None:
                    stop.signum = callback.signum

    return StopSweep()


def run_sweep(s: dict, folder: str | os.PathLike | None = None, resume: bool = False,
              parallel: int = 1, root: str | os.PathLike = "runs", say=None,
              reporter=None, launcher=None, nproc: int = 1) -> dict:
    """Run (or continue) a sweep; returns :func:`summarize` of its folder. ``say`` gets a
    line per run; ``reporter`` (``render.TrainReporter``) the runs' progress when sequential.
    ``launcher`` (``launchers.get_launcher``) other than the local one runs the runs that are
    left as its jobs (``GridRun``), ``parallel`` of them at once; made ``across`` nodes, each
    job is one run over them (``train.NodeShare``, ``nproc`` processes per node). Stopped by
    a signal, it raises ``Interrupted`` naming the command that continues it."""
    from cnnbench.training.interrupt import Interrupted

    say = say or (lambda line: None)
    elsewhere = launcher is not None and launcher.name != "local"
    if launcher is not None:
        parallel = launcher.parallel
    plan, configs, folder = prepare(s, folder, resume, root, 1 if elsewhere else parallel)
    try:
        todo = []
        for n, (entry, config) in enumerate(zip(plan["runs"], configs), 1):
            state = run_state(folder / entry["name"])
            if state == "finished":
                say(f"[{n}/{len(configs)}] {entry['name']}: finished, skipped")
            else:
                todo.append((n, entry, config, state))
        with Stop() as stop:
            if elsewhere:
                jobs = [job_of(plan, entry, folder, state, launcher.nnodes, nproc)
                        for n, entry, config, state in todo]
                failures = launcher.launch(jobs, folder, say, stop)
            elif parallel == 1:
                failures = _run_here(plan, folder, todo, len(configs), stop, say, reporter)
            else:
                failures = _run_processes(plan, folder, todo, len(configs), configs, parallel,
                                          stop, say)
        if stop.signum is not None:
            left = sum(run_state(folder / r["name"]) != "finished" for r in plan["runs"])
            raise Interrupted(f"{signal.Signals(stop.signum).name}: the sweep stopped with "
                              f"{left} of {len(configs)} runs to go; continue with: cnnbench "
                              f"sweep --resume {folder}", stop.signum)
    finally:
        release_run(folder)
    if failures:
        name, message = failures[0]
        raise CnnbenchError(f"{len(failures)} of {len(configs)} runs failed ({name}: {message}); "
                            f"`cnnbench sweep --resume {folder}` retries them")
    return summarize(folder)


def job_of(plan: dict, entry: dict, folder: Path, state: str, nnodes: int | None = None,
           nproc: int = 1) -> Job:
    """One run of the sweep as a launcher's job: trained in the job's process, or with
    ``nnodes`` one training over the job's nodes, ``nproc`` processes on each."""
    run_dir = (Path(folder) / entry["name"]).resolve()
    command = worker_command(plan, entry, run_dir, state)
    if nnodes is None:
        return Job(entry["name"], GridRun(plan, entry, folder), command)
    argv = command[command.index("train"):]  # less the interpreter
    return Job(entry["name"], train.NodeShare(nproc, argv, run_dir, resumed=state == "resume"),
               command)


class GridRun:
    """One run of the sweep as a launcher's job: picklable; wherever it runs (a Slurm job, a
    requeued one), it skips a finished run, resumes one with a checkpoint, or starts it."""

    def __init__(self, plan: dict, entry: dict, folder: Path):
        self.plan, self.entry, self.folder = plan, entry, Path(folder).resolve()

    def __call__(self) -> None:
        from cnnbench import render

        run_dir = self.folder / self.entry["name"]
        state = run_state(run_dir)
        if state != "finished":
            train_one(self.plan, self.entry, run_dir, state, render.TrainReporter(quiet=True))


def exit_code_of(work) -> int:
    """``work()`` in a sweep's worker process: 0; after a stop on a signal its message on stderr
    and 128 + the signal; after a one-line error that line and 2."""
    from cnnbench.training.interrupt import Interrupted

    try:
        work()
        return 0
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except CnnbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def train_one(plan: dict, entry: dict, run_dir: Path, state: str, reporter=None,
              callbacks=(), extra: dict | None = None) -> dict | None:
    """One run of the sweep through the library: resumed from its checkpoint, or trained
    afresh in its folder (``extra``: settings of this execution, e.g. ``threads``)."""
    if state == "resume":
        return train.resume(run_dir, None, reporter, callbacks)
    _clear_failed_start(run_dir)
    return train.train(plan["model"], plan["config"],
                       {**plan["fixed"], **entry["overrides"], **(extra or {})},
                       run_dir=run_dir, reporter=reporter, callbacks=callbacks)


def _run_here(plan, folder, todo, total, stop, say, reporter) -> list:
    """One run after another in this process."""
    import torch

    from cnnbench.training.interrupt import Interrupted

    threads = torch.get_num_threads()  # a resumed run pins its own: the next starts afresh
    failures = []
    for n, entry, config, state in todo:
        if stop.signum is not None:
            break
        say(f"[{n}/{total}] {entry['name']}: {'resuming' if state == 'resume' else 'training'}")
        torch.set_num_threads(threads)
        try:
            train_one(plan, entry, folder / entry["name"], state, reporter,
                      [_stop_callback(stop)])
        except Interrupted as exc:
            stop.signum = stop.signum or exc.exit_code - 128
            break
        except CnnbenchError as exc:
            say(f"[{n}/{total}] {entry['name']}: failed: {exc}")
            failures.append((entry["name"], str(exc)))
    torch.set_num_threads(threads)
    return failures


def _clear_failed_start(run_dir: Path) -> None:
    """A run folder with no checkpoint (stopped before its first epoch ended) has nothing to
    resume: it goes, so the run starts afresh there."""
    import shutil

    from cnnbench.checkpoints import pid_alive

    if run_dir.exists() and not RunLayout(run_dir).last.is_file():
        holder = lock_holder(run_dir)
        if holder is not None and holder != os.getpid() and pid_alive(holder):
            raise CnnbenchError(f"{run_dir} is in use by another run (process {holder})")
        shutil.rmtree(run_dir)


def worker_command(plan: dict, entry: dict, run_dir: Path, state: str,
                   extra: dict | None = None) -> list[str]:
    """The ``cnnbench train`` command line of one run: as the sweep would train it here."""
    base = [sys.executable, "-m", "cnnbench", "train", "--quiet"]
    if state == "resume":
        return [*base, "--resume", str(run_dir)]
    args = [*base, plan["model"], "--run-dir", str(run_dir)]
    if plan["config"]:
        args += ["--config", plan["config"]]
    for key, value in {**plan["fixed"], **entry["overrides"], **(extra or {})}.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        args += ["--set", f"{key}={text.removesuffix('...').strip()}"]
    return args


def slots(configs: list[dict], parallel: int) -> tuple[list[dict] | None, dict]:
    """The environment of each of ``parallel`` workers (None: the CPU) and settings every run
    takes: one GPU each (CUDA_VISIBLE_DEVICES) on CUDA; on the CPU, unless a run sets
    ``threads``, the cores shared out (``threads`` = cores // parallel)."""
    from cnnbench.devices import resolve_device

    if any(resolve_device(c["device"]).type == "cuda" for c in configs):
        import torch

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = ([g for g in visible.split(",") if g.strip()] if visible
                else [str(i) for i in range(torch.cuda.device_count())])
        if parallel > len(gpus):
            raise CnnbenchError(f"--parallel {parallel} runs one per GPU, but {len(gpus)} "
                                f"GPU(s) are visible: give --parallel {len(gpus)} or less")
        return [{"CUDA_VISIBLE_DEVICES": gpus[i]} for i in range(parallel)], {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    extra = {} if any(c.get("threads") for c in configs) else {
        "threads": max(1, (cores or 1) // parallel)}
    return None, extra


def one_thread(config: dict, extra: dict, run_dir: Path, state: str) -> bool:
    """The run trains on one thread: a new one as configured, a resumed one as its
    ``config.yaml`` says (``threads`` unset, it would take the checkpoint's count)."""
    if state == "resume":
        try:
            config = cfg.read_yaml(RunLayout(run_dir).config)
        except CnnbenchError:
            return False
    return {**config, **extra}.get("threads") == 1


class Forked:
    """A run on one CPU thread in a forked copy of this process: no interpreter start or
    imports to pay, which on a small run cost more than the training. (With more threads,
    OpenMP can hang in a child forked after the parent ran parallel work.) ``poll`` and
    ``send_signal`` as a ``subprocess.Popen``'s."""

    def __init__(self, plan: dict, entry: dict, run_dir: Path, state: str, extra: dict,
                 log: Path):
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid, self.code = os.fork(), None
        if self.pid == 0:
            code = 1
            try:
                code = self.child(plan, entry, run_dir, state, extra, log)
            finally:
                os._exit(code)

    @staticmethod
    def child(plan, entry, run_dir, state, extra, log) -> int:
        import traceback


        os.setsid()  # a Ctrl-C in the terminal reaches the sweep, which passes it on once
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = os.fdopen(fd, "w", buffering=1)  # (pytest replaces them)
        from cnnbench import render

        try:
            return exit_code_of(lambda: train_one(plan, entry, run_dir, state,
                                                  render.TrainReporter(quiet=True), (), extra))
        except KeyboardInterrupt:
            return 130
        except BaseException:  # noqa: BLE001 - the sweep reports it; the log has the trace
            traceback.print_exc()
            return 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()

    def poll(self) -> int | None:
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)


def _run_processes(plan, folder, todo, total, configs, parallel, stop, say) -> list:
    """Up to ``parallel`` runs at once, each in its own process and session (so that a Ctrl-C
    reaches it once, from here): a run on one CPU thread forked (``Forked``), the others
    as ``cnnbench train`` processes, with one GPU each on CUDA; output in ``logs/NAME.log``."""
    envs, extra = slots(configs, parallel)
    with guarded(folder / "logs"):
        (folder / "logs").mkdir(exist_ok=True)
    free, running, failures = list(range(parallel)), {}, []

    def forward(signum):
        for proc, *_ in running.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    stop.forward = forward
    queue = list(todo)
    while queue or running:
        while queue and free and stop.signum is None:
            n, entry, config, state = queue.pop(0)
            run_dir, log = folder / entry["name"], folder / "logs" / f"{entry['name']}.log"
            slot = free.pop(0)
            say(f"[{n}/{total}] {entry['name']}: {'resuming' if state == 'resume' else 'training'}"
                f" (process {slot + 1} of {parallel})")
            if envs is None and one_thread(config, extra, run_dir, state):
                proc = Forked(plan, entry, run_dir, state, extra, log)
            else:
                if state == "start":
                    _clear_failed_start(run_dir)
                with guarded(log):
                    out = open(log, "ab")  # closed below, once the child has it
                with out:
                    proc = subprocess.Popen(worker_command(plan, entry, run_dir, state, extra),
                                            stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(envs[slot] if envs else {})},
                                            start_new_session=True)
            running[proc.pid] = (proc, slot, n, entry)
        if stop.signum is not None:
            queue.clear()  # the runs not started wait for the next `sweep --resume`
        time.sleep(0.05)
        for pid, (proc, slot, n, entry) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[pid]
            free.append(slot)
            if code == 0:
                say(f"[{n}/{total}] {entry['name']}: finished")
            elif code in (130, 143) and stop.signum is not None:
                say(f"[{n}/{total}] {entry['name']}: stopped, resumable")
            else:
                message = _last_line(folder / "logs" / f"{entry['name']}.log") or f"exit {code}"
                say(f"[{n}/{total}] {entry['name']}: failed: {message}")
                failures.append((entry["name"], message))
    return failures


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


# --- the table ---

def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one value), min, max and n."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if not n:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


def summarize(folder: str | os.PathLike) -> dict:
    """The sweep's table: one row per setting (the grid's values) with the best validation and
    the test metric over its seeds (``spread``), the best setting (by the monitor's mean best
    validation value, in the monitor's mode) marked."""
    folder = Path(folder)
    plan = read_plan(folder)
    rows_by_run = {r["run"]: r for r in list_runs(folder)}
    grid = plan.get("grid") or {}
    settings_rows: dict[str, dict] = {}
    monitor, mode = None, "max"
    for entry in plan["runs"]:
        setting = {k: entry["overrides"].get(k) for k in grid}
        key = ",".join(f"{k}={value_text(v)}" for k, v in setting.items())
        row = settings_rows.setdefault(key, {"setting": setting, "runs": [], "finished": 0,
                                             "best_val": [], "test": [], "minutes": []})
        row["runs"].append(entry["name"])
        run = rows_by_run.get(entry["name"])
        if run is None:
            continue
        monitor = monitor or run["monitor"]
        if run["status"] == "finished":
            row["finished"] += 1
            row["best_val"].append(run["best_val"])
            row["test"].append(run["test"])
            row["minutes"].append(run["minutes"])
    if monitor:
        config = _first_config(folder, plan)
        mode = resolve_mode(config.get("mode"), monitor)
    rows = []
    for row in settings_rows.values():
        rows.append({"setting": row["setting"], "runs": row["runs"],
                     "finished": row["finished"], "of": len(row["runs"]),
                     "best_val": spread(row["best_val"]), "test": spread(row["test"]),
                     "minutes": spread(row["minutes"])["mean"], "best": False})
    scored = [r for r in rows if r["best_val"]["mean"] is not None]
    if scored:
        pick = (min if mode == "min" else max)(scored, key=lambda r: r["best_val"]["mean"])
        pick["best"] = True
    return {"sweep": str(folder), "model": plan["model"], "varied": list(grid),
            "seeds": plan.get("seeds"), "monitor": monitor, "mode": mode, "rows": rows}


def _first_config(folder: Path, plan: dict) -> dict:
    for entry in plan["runs"]:
        path = RunLayout(folder / entry["name"]).config
        if path.is_file():
            try:
                return cfg.read_yaml(path)
            except CnnbenchError:
                continue
    return {}


def is_sweep(folder: str | os.PathLike) -> bool:
    return (Path(folder) / PLAN).is_file()
