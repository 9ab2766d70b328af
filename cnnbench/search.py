"""Search, not only grids: Optuna's samplers over a space of keys (`cnnbench sweep --search`).

``--space KEY=[int:][log:]LOW..HIGH`` gives a range (``log:`` samples it on a log scale, ``int:``
whole numbers) and ``--space KEY=V1,V2,...`` a choice. Each trial is one run folder,
``trial-NNN``, trained through the library with :class:`Pruning` as a callback: it reports the
epoch's validation value of the monitor to the trial, and stops the run (``CancelFitException``)
when the pruner (Optuna's ``MedianPruner`` by default) says so. A trial's value is its best
validation value (``best_val_<monitor>``, in the monitor's mode).

The study lives in Optuna's journal file ``optuna.journal`` in the sweep folder (a file any
number of processes or machines on a shared file system can append to), or in any Optuna
storage given by ``--storage URL``. Workers (``--parallel N`` processes here, or Slurm jobs)
share it: each asks for a trial until ``--trials`` have been asked. Running the same command
again continues the study: a trial left running by a killed worker resumes from its checkpoint
(the same trial, the same parameters), and new ones are asked until there are ``--trials``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import optuna
import yaml

from cnnbench import recipe as cfg
from cnnbench import train
from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.files import write_yaml
from cnnbench.keys import parse_assignments, parse_value
from cnnbench.launchers import Job, LocalLauncher
from cnnbench.sweep import (PLAN, Stop, _check_model_args, _sha256, check_same_plan,
                            default_folder, exit_code_of, read_plan, run_state, slots,
                            split_values)
from cnnbench.training.runs import (claim_run_dir, lock_holder, lock_run, read_metrics,
                                    release_run, resolve_mode)

SEARCH_KEYS = ("model", "config", "config_sha256", "fixed", "space", "search", "pruner",
               "seeds", "storage")  # what a rerun must match (``--trials`` may grow)
JOURNAL = "optuna.journal"
PICTURES = {"history": "optimization_history.png", "importance": "param_importances.png"}


class OptunaInfo(NamedTuple):
    """A sampler or pruner by name: Optuna's class and our defaults, which ``NAME:KEY=VALUE,...``
    overrides by the class's own keyword names."""
    make: Callable
    defaults: dict


def _samplers() -> dict[str, OptunaInfo]:
    # TPE (Bayesian) draws its first n_startup_trials (Optuna's default: 10) at random.
    return {"tpe": OptunaInfo(optuna.samplers.TPESampler, {}),
            "random": OptunaInfo(optuna.samplers.RandomSampler, {})}


def _pruners() -> dict[str, OptunaInfo]:
    # median: after n_startup_trials whole trials, a trial worse than the median of the earlier
    # ones at the same epoch stops there. halving (successive halving): a trial goes past epoch
    # min_resource x reduction_factor^k only while in the best 1/reduction_factor (4) of the
    # trials that reached it. hyperband: successive halving in several brackets.
    P = optuna.pruners
    return {"median": OptunaInfo(P.MedianPruner, {"n_startup_trials": 4}),
            "halving": OptunaInfo(P.SuccessiveHalvingPruner, {}),
            "hyperband": OptunaInfo(P.HyperbandPruner, {}),
            "none": OptunaInfo(P.NopPruner, {})}


SEARCHES = ("tpe", "random")
PRUNERS = ("median", "halving", "hyperband", "none")
SEARCH_EXAMPLE = "tpe:n_startup_trials=4"
PRUNER_EXAMPLE = "halving:min_resource=1,reduction_factor=3"


def make_sampler(text: str, seed: int):
    """``--search NAME[:KEY=VALUE,...]``'s sampler, seeded by ``seed`` (``tpe``,
    ``tpe:n_startup_trials=4,multivariate=true``, ``random``)."""
    return _optuna_object(_samplers(), text, "--search", SEARCH_EXAMPLE, seed=seed)


def make_pruner(text: str):
    """``--pruner NAME[:KEY=VALUE,...]``: the pruner, its options named as Optuna's constructor
    names them (``median:n_startup_trials=2,n_warmup_steps=1``,
    ``halving:min_resource=1,reduction_factor=3``)."""
    return _optuna_object(_pruners(), text, "--pruner", PRUNER_EXAMPLE)


def _optuna_object(table: dict, text: str, option: str, example: str, **fixed):
    """The table's entry named before the colon of ``text``, made with its defaults, the
    KEY=VALUE options after the colon and ``fixed``; an unknown name or option is one line."""
    name, _, rest = str(text).partition(":")
    if name not in table:
        names = ["grid", *table] if option == "--search" else list(table)
        raise CnnbenchError(f"unknown {option} {name!r}: use {', '.join(names)}"
                            f"{did_you_mean(name, table)}")
    options = parse_assignments([p for p in rest.split(",") if p.strip()], option, example)
    clash = sorted(set(options) & set(fixed))
    if clash:
        raise CnnbenchError(f"{option} {text!r}: {clash[0]} is not an option here (it comes "
                            f"from --seeds)")
    info = table[name]
    try:
        return info.make(**{**info.defaults, **options, **fixed})
    except (TypeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise CnnbenchError(f"bad {option} {text!r}: {reason[:200]} (e.g. {option} "
                            f"{example})") from None


# --- the space ---

RANGE = re.compile(r"^(?P<int>int:)?(?P<log>log:)?(?P<low>[^.][^ ]*?)\.\.(?P<high>.+)$")


def parse_dimension(key: str, text: str) -> dict:
    """``[int:][log:]LOW..HIGH`` -> a range, ``V1,V2,...`` -> a choice; an empty range,
    reversed bounds or the log of a non-positive bound is a one-line error."""
    text = text.strip()
    match = RANGE.match(text)
    if match is None:
        values = [parse_value(v) for v in split_values(text)]
        if not values:
            raise CnnbenchError(f"--space gives no values for {key}: give LOW..HIGH, "
                                f"log:LOW..HIGH or V1,V2,...")
        if len(values) != len({yaml.safe_dump(v) for v in values}):
            raise CnnbenchError(f"--space gives a value of {key} twice")
        return {"choice": values}
    kind = int if match["int"] else float
    try:
        low, high = kind(match["low"]), kind(match["high"])
    except ValueError:
        raise CnnbenchError(f"bad --space {key}={text}: the bounds must be "
                            f"{'whole ' if kind is int else ''}numbers, e.g. "
                            f"{key}=log:1e-4..1e-1") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise CnnbenchError(f"bad --space {key}={text}: the bounds must be finite")
    if low > high:
        raise CnnbenchError(f"--space {key}={text}: the bounds are reversed (low {low:g} > "
                            f"high {high:g})")
    if low == high:
        raise CnnbenchError(f"--space {key}={text} is an empty range: give low < high, or "
                            f"fix the key with --set {key}={low:g}")
    if match["log"] and low <= 0:
        raise CnnbenchError(f"--space {key}={text}: a log range needs bounds > 0, "
                            f"not {low:g}")
    return {"low": low, "high": high, "log": bool(match["log"]), "int": kind is int}


def parse_space(items: list[str] | None) -> dict[str, dict]:
    """``--space KEY=...`` strings -> {key: dimension}."""
    texts = parse_assignments(items, "--space", "lr=log:1e-4..1e-1",
                              form="KEY=LOW..HIGH, KEY=log:LOW..HIGH or KEY=V1,V2,...",
                              read=lambda text: text)
    return {key: parse_dimension(key, text) for key, text in texts.items()}


def corners(space: dict) -> list[dict]:
    """Settings that touch every bound and choice: checked before any folder is made."""
    picks = []
    for key, dim in space.items():
        for value in dim["choice"] if "choice" in dim else (dim["low"], dim["high"]):
            picks.append({key: value})
    return picks


def suggest(trial, space: dict) -> dict:
    """The trial's values of the space (Optuna's suggest_* calls)."""
    params = {}
    for key, dim in space.items():
        if "choice" in dim:
            params[key] = trial.suggest_categorical(key, dim["choice"])
        elif dim["int"]:
            params[key] = trial.suggest_int(key, dim["low"], dim["high"], log=dim["log"])
        else:
            params[key] = trial.suggest_float(key, dim["low"], dim["high"], log=dim["log"])
    return params


# --- the plan and the study ---

def make_plan(s: dict, space: dict, search: str, trials: int, pruner: str = "median",
              storage: str | None = None) -> dict:
    """What sweep.yaml holds for a search; every bound and choice of the space, and the fixed
    keys, are resolved and checked here, before any folder."""
    make_sampler(search, 0)
    make_pruner(pruner)
    if not s["model"]:
        raise CnnbenchError("no model: give MODEL or a sweep file with a `model:` key")
    if not space:
        raise CnnbenchError(f"--search {search} needs a space: give --space KEY=LOW..HIGH "
                            f"(e.g. --space lr=log:1e-4..1e-1)")
    if s["grid"]:
        raise CnnbenchError("--grid and --search are two ways to choose the runs: give one "
                            "(a list of values is --space KEY=V1,V2,...)")
    if trials is None or trials < 1:
        raise CnnbenchError("--trials must be >= 1")
    fixed = s["fixed"]
    for key in space:
        if key in fixed:
            raise CnnbenchError(f"{key} is both fixed and in the space: give it in one place")
        if key == "seed":
            raise CnnbenchError("seed is not searched: give it with --seeds")
    seeds = s["seeds"]
    if seeds is not None and len(seeds) != 1:
        raise CnnbenchError(f"a search takes one seed (it seeds the sampler and every trial), "
                            f"not {len(seeds)}")
    recipe = s["config"] or cfg.default_recipe(s["model"])
    base = cfg.resolve(s["model"], recipe, fixed)
    seed = seeds[0] if seeds else base["seed"]
    for pick in corners(space):
        try:
            config = cfg.resolve(s["model"], recipe, {**fixed, **pick, "seed": seed})
        except CnnbenchError as exc:
            raise CnnbenchError(f"{exc} (--space {next(iter(pick))})") from None
        _check_model_args(config)
    monitor = base["monitor"] or _task_monitor(base["task"])
    return {"model": s["model"], "config": str(recipe) if recipe else None,
            "config_sha256": _sha256(recipe), "fixed": fixed, "space": space,
            "search": search, "pruner": pruner, "seeds": [seed], "storage": storage,
            "trials": trials, "monitor": monitor,
            "direction": "minimize" if resolve_mode(base["mode"], monitor) == "min"
            else "maximize", "runs": []}


def _task_monitor(task: str) -> str:
    from cnnbench.tasks.base import get_task

    return get_task(task).monitor


def storage_url(plan: dict, folder: Path) -> str:
    return plan["storage"] or str(Path(folder) / JOURNAL)


def open_storage(url: str):
    """An Optuna storage: a journal file (a path, or ``journal:PATH``) or any storage URL
    Optuna opens (``sqlite:///...``, ``postgresql://...``); one that cannot be opened is a
    one-line error."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" not in url:
        path = Path(url.removeprefix("journal:"))
        if not path.parent.is_dir():
            raise CnnbenchError(f"cannot open the storage {url}: no folder {path.parent}")
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return optuna.storages.get_storage(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's, a driver's: all one line to the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CnnbenchError(f"cannot open the storage {url}: {reason}") from None


def load_study(plan: dict, folder: Path, storage=None, worker: int = 0):
    """The study, its sampler seeded by the plan's seed, the trials it holds and ``worker``:
    a worker that joins later, or another worker, must not draw the same points again."""
    import numpy as np

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage or open_storage(storage_url(plan, folder))
    name = study_name(plan, folder)
    study = optuna.create_study(storage=storage, study_name=name, direction=plan["direction"],
                                pruner=make_pruner(plan["pruner"]), load_if_exists=True)
    held = len(study.get_trials(deepcopy=False))
    seed = int(np.random.SeedSequence([plan["seeds"][0], held, worker]).generate_state(1)[0])
    study.sampler = make_sampler(plan["search"], seed)
    return study


def study_name(plan: dict, folder: Path) -> str:
    """Named after the plan (not the folder, which may move): ``cnnbench-MODEL-DIGEST``."""
    return f"cnnbench-{default_folder(plan, '', SEARCH_KEYS).name.removeprefix('sweep-')}"


def prepare(s: dict, space: dict, search: str, trials: int, pruner: str = "median",
            storage: str | None = None, folder: str | os.PathLike | None = None,
            root: str | os.PathLike = "runs", parallel: int = 1) -> tuple[dict, Path]:
    """Plan and check, open a ``--storage`` (before any folder), then claim the sweep folder
    (``sweep-MODEL-DIGEST`` by default), write its plan and create or load the study."""
    if parallel < 1:
        raise CnnbenchError("--parallel must be >= 1")
    plan = make_plan(s, space, search, trials, pruner, storage)
    if parallel > 1:
        slots([cfg.resolve(plan["model"], plan["config"], plan["fixed"])], parallel)
    opened = open_storage(storage) if storage else None
    folder = Path(folder) if folder is not None else default_folder(plan, root, SEARCH_KEYS)
    if (folder / PLAN).is_file():
        check_same_plan(folder, plan, SEARCH_KEYS)
        lock_run(folder)
        saved = read_plan(folder)
        if saved.get("trials") != trials:  # more trials continue the same study
            write_yaml(folder / PLAN, {**saved, "trials": trials})
        plan = read_plan(folder)
    else:
        folder = claim_run_dir(folder)
        write_yaml(folder / PLAN, plan)
    try:
        load_study(plan, folder, opened)
    except BaseException:
        release_run(folder)
        raise
    return plan, folder


# --- the trials ---

def _pruning_callback(trial, monitor: str, already: set[int]):
    from cnnbench.training.loop import Callback, CancelFitException

    class Pruning(Callback):
        """Reports each epoch's validation value of the monitor to the trial, and stops the
        run when the pruner says the trial is worse than the others at this epoch."""

        order = 50  # after the epoch's checkpoint and its row in metrics.jsonl

        def __init__(self):
            self.pruned = False

        def after_epoch(self, trainer, row: dict) -> None:
            value = row.get(f"val_{monitor}")
            if value is None or not math.isfinite(value):
                return
            if row["epoch"] not in already:  # a resumed trial reported its first epochs
                trial.report(value, row["epoch"])
            # After the last epoch there is nothing left to save: the trial is complete (and
            # tested), not pruned with its whole cost spent.
            if row["epoch"] < trainer.config["epochs"] and trial.should_prune():
                self.pruned = True
                raise CancelFitException

    return Pruning()


def run_trial(plan: dict, folder: Path, trial, say=None, reporter=None, extra=None,
              reported: set[int] = frozenset()) -> str:
    """Train (or resume) one trial in ``folder/trial-NNN`` and tell the study how it went:
    ``complete``, ``pruned`` or ``failed: message``. A signal stops it resumable (Interrupted
    goes up; the trial stays running in the study, and the next run of the sweep resumes it).
    ``reported``: the epochs a resumed trial already reported."""
    say = say or (lambda line: None)
    name = f"trial-{trial.number:03d}"
    run_dir = folder / name
    trial.set_user_attr("run", name)
    params = suggest(trial, plan["space"])
    pruning = _pruning_callback(trial, plan["monitor"], set(reported))
    state = run_state(run_dir)
    shown = ",".join(f"{k}={_short(v)}" for k, v in params.items())
    say(f"{name} {shown}: {'resuming' if state == 'resume' else 'training'}")
    try:
        if state == "resume":
            results = train.resume(run_dir, None, reporter, [pruning])
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a start killed before its first checkpoint
            results = train.train(plan["model"], plan["config"],
                                  {**plan["fixed"], **params, "seed": plan["seeds"][0],
                                   **(extra or {})},
                                  run_dir=run_dir, reporter=reporter, callbacks=[pruning])
    except CnnbenchError as exc:
        trial.set_user_attr("error", str(exc))
        trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        say(f"{name}: failed: {exc}")
        return f"failed: {exc}"
    epochs = len(read_metrics(run_dir))
    trial.set_user_attr("epochs", epochs)
    if results is None and pruning.pruned:
        trial.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        say(f"{name}: pruned after epoch {epochs}")
        return "pruned"
    monitor = plan["monitor"]
    trial.set_user_attr(f"test_{monitor}", results.get(f"test_{monitor}"))
    value = results.get(f"best_val_{monitor}")
    trial.study.tell(trial, value)
    say(f"{name}: best val {monitor} {value:.4f}, test {results.get(f'test_{monitor}'):.4f}")
    return "complete"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def stale_trials(study, folder: Path) -> list[int]:
    """Trials the study holds as running whose run folder no live process holds: left by a
    killed worker (the sweep folder's lock says no sweep of ours is running)."""
    from cnnbench.checkpoints import pid_alive

    numbers = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        holder = lock_holder(folder / f"trial-{t.number:03d}")
        if holder is None or not pid_alive(holder):
            numbers.append(t.number)
    return numbers


def work(folder: str | os.PathLike, resume: list[int] = (), say=None, reporter=None,
         extra: dict | None = None, worker: int = 0) -> list[str]:
    """One worker: first the trials in ``resume`` (numbers), then new trials while the study
    holds fewer than the plan's ``trials``. Returns how each trial went."""
    folder = Path(folder)
    plan = read_plan(folder)
    study = load_study(plan, folder, worker=worker)
    outcomes = []
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number in resume:
        frozen = by_number[number]
        trial = optuna.trial.Trial(study, frozen._trial_id)
        outcomes.append(run_trial(plan, folder, trial, say, reporter, extra,
                                  set(frozen.intermediate_values)))
    while len(study.get_trials(deepcopy=False)) - _failed(study) < plan["trials"]:
        outcomes.append(run_trial(plan, folder, study.ask(), say, reporter, extra))
        if sum(o.startswith("failed") for o in outcomes) >= plan["trials"]:
            break  # the same failure every time: stop rather than ask forever
    return outcomes


def _failed(study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))


class SearchWorker:
    """A worker as a job (``launchers.Job.call``): picklable, for a process or a Slurm job."""

    def __init__(self, folder: Path, resume: list[int], extra: dict, worker: int = 0,
                 here: bool = False, say=None, reporter=None):
        """``here``: in the sweep's own process, saying ``say`` and showing ``reporter`` (None:
        nothing); elsewhere, a line per trial and per epoch to the job's log."""
        self.folder, self.resume, self.extra = Path(folder).resolve(), list(resume), extra
        self.here, self.say, self.reporter, self.worker = here, say, reporter, worker

    def __call__(self) -> None:
        from cnnbench import render

        work(self.folder, self.resume, say=self.say if self.here else print,
             reporter=self.reporter if self.here else render.TrainReporter(quiet=True),
             extra=self.extra, worker=self.worker)


def run_search(s: dict, space: dict, search: str, trials: int, pruner: str = "median",
               storage: str | None = None, folder: str | os.PathLike | None = None,
               launcher=None, root: str | os.PathLike = "runs", say=None,
               reporter=None) -> dict:
    """Run (or continue) a search with ``launcher`` (``launchers.get_launcher``; default:
    here, one worker); returns :func:`summarize` of its folder. Workers: the launcher's
    ``parallel``."""
    from cnnbench.training.interrupt import Interrupted

    launcher = launcher or LocalLauncher(1)
    say = say or (lambda line: None)
    plan, folder = prepare(s, space, search, trials, pruner, storage, folder, root,
                           launcher.parallel if launcher.name == "local" else 1)
    try:
        stale = stale_trials(load_study(plan, folder), folder)
        if stale:
            say(f"resuming trial(s) {', '.join(map(str, stale))}, left running")
        envs, extra = None, {}
        if launcher.name == "local" and launcher.parallel > 1:
            envs, extra = slots([cfg.resolve(plan["model"], plan["config"], plan["fixed"])],
                                launcher.parallel)
        workers = launcher.parallel
        here = workers == 1 and launcher.name == "local"
        jobs = [Job(f"worker-{k + 1}",
                    SearchWorker(folder, stale[k::workers], extra, k, here,
                                 *((say, reporter) if here else ())),  # (picklable elsewhere)
                    worker_command(folder, stale[k::workers], extra, k))
                for k in range(workers)]
        with Stop() as stop:
            failures = launcher.launch(jobs, folder, say, stop, envs)
        if stop.signum is not None:
            raise Interrupted(f"{signal.Signals(stop.signum).name}: the search stopped; the "
                              f"same command continues it in {folder}", stop.signum)
    finally:
        release_run(folder)
    table = summarize(folder)
    if failures:
        name, message = failures[0]
        raise CnnbenchError(f"{len(failures)} worker(s) failed ({name}: {message}); the "
                            f"same command continues the search in {folder}")
    return table


def worker_command(folder: Path, resume: list[int], extra: dict, worker: int = 0) -> list[str]:
    """A worker process: ``python -m cnnbench.search FOLDER --worker K [--resume N,...]
    [--set KEY=VALUE]...``."""
    args = [sys.executable, "-m", "cnnbench.search", str(Path(folder).resolve()),
            "--worker", str(worker)]
    if resume:
        args += ["--resume", ",".join(map(str, resume))]
    for key, value in extra.items():
        args += ["--set", f"{key}={value}"]
    return args


# --- the table and the pictures ---

def summarize(folder: str | os.PathLike, pictures: bool = False) -> dict:
    """The search's trials (number, state, parameters, epochs, best validation and test value),
    counts, and the best complete trial; with ``pictures``, Optuna's optimization history and
    parameter importances drawn to PNGs in the folder."""
    folder = Path(folder)
    plan = read_plan(folder)
    study = load_study(plan, folder)
    monitor = plan["monitor"]
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "state": t.state.name.lower(), "params": t.params,
                     "run": t.user_attrs.get("run"),
                     "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)),
                     "value": t.value, f"test_{monitor}": t.user_attrs.get(f"test_{monitor}"),
                     "error": t.user_attrs.get("error")})
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    best = None
    if complete:
        pick = min if plan["direction"] == "minimize" else max
        best = pick(complete, key=lambda r: r["value"])["trial"]
    counts = {state: sum(r["state"] == state for r in rows)
              for state in ("complete", "pruned", "running", "fail")}
    result = {"sweep": str(folder), "model": plan["model"], "search": plan["search"],
              "pruner": plan["pruner"], "monitor": monitor, "direction": plan["direction"],
              "trials": plan["trials"], "counts": counts, "best": best,
              "epochs": sum(r["epochs"] or 0 for r in rows), "rows": rows,
              "storage": storage_url(plan, folder), "pictures": {}}
    if pictures and len(complete) >= 1:
        result["pictures"] = draw(study, folder, monitor, len(complete))
    return result


def draw(study, folder: Path, monitor: str, complete: int) -> dict:
    """Optuna's matplotlib views to PNG files in ``folder``: the optimization history, and the
    parameter importances (fANOVA: at least two complete trials)."""
    import warnings

    import optuna.visualization.matplotlib as views

    from cnnbench.plots import save_png

    drawn = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = views.plot_optimization_history(study, target_name=f"best val {monitor}")
        save_png(ax.figure, str(folder / PICTURES["history"]))
        drawn["history"] = str(folder / PICTURES["history"])
        if complete >= 2:
            try:
                ax = views.plot_param_importances(study)
            except (ValueError, RuntimeError):  # e.g. every complete trial took one value
                return drawn
            save_png(ax.figure, str(folder / PICTURES["importance"]))
            drawn["importance"] = str(folder / PICTURES["importance"])
    return drawn


def main(argv: list[str] | None = None) -> int:
    """A worker process (``run_workers``): ``FOLDER [--resume N,...] [--set KEY=VALUE]...``."""
    import argparse

    from cnnbench import render

    parser = argparse.ArgumentParser(prog="python -m cnnbench.search")
    parser.add_argument("folder")
    parser.add_argument("--resume", default="")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    extra = parse_assignments(args.set, "--set", "threads=1")
    resume = [int(n) for n in args.resume.split(",") if n]
    return exit_code_of(lambda: work(args.folder, resume, say=print,
                                      reporter=render.TrainReporter(quiet=True),
                                      extra=extra, worker=args.worker))


if __name__ == "__main__":
    sys.exit(main())
