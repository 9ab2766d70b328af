"""A trainer from a configuration, and the entry points ``cnnbench train`` calls.

``build_trainer`` does, in this order: device and threads, seeds, the task's data (on the
device), the task's context, the model (seeded again, so the first weights do not depend on how
the data were made; ``init:`` redraws them, then ``init_from:`` loads the matching tensors of a
trained model), the optimizer (``lr_mult``: one rate per layer group) and its schedule, AMP, the
callbacks (``freeze_epochs``) and, when resuming, every state from the checkpoint.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from cnnbench import config as cfg
from cnnbench.building import build, ensure_input_fits
from cnnbench.checkpoints import load_checkpoint
from cnnbench.data.sources import load_data
from cnnbench.devices import resolve_device
from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.keys import Key, declare
from cnnbench.registry import USER_SOURCE, get_model_info
from cnnbench.tasks.base import get_task, stored_context
from cnnbench.training import distributed, transfer
from cnnbench.training.compiling import drop_last
from cnnbench.training.weight_init import init_weights
from cnnbench.training.callbacks import Report, standard_callbacks
from cnnbench.training.checks import check_classes, check_labels, check_same_classes
from cnnbench.training.interrupt import resource_errors, say
from cnnbench.training.loop import Callback, Trainer, batch_starts
from cnnbench.training.optimizers import build_optimizer, param_groups
from cnnbench.training.rng import seed_everything
from cnnbench.training.runs import (check_run_dir, check_writable, claim_run_dir, lock_run,
                                    new_run_dir, reconcile_metrics, release_run)
from cnnbench.training.schedules import build_schedule

# Keys that may change when a run is resumed; the rest would not fit the checkpoint.
RESUMABLE_KEYS = {"epochs", "device", "amp", "compile", "log_graph", "log_images", "data",
                  "eval_batch_size", "log_every_steps", "log_histograms",
                  "sync_batchnorm", "patience", "min_delta",
                  "data_mode", "data_budget_gb", "workers", "prefetch"}
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The autocast types each device runs: CPU autocast runs bf16; fp16 on the CPU has no fast
# kernels and torch's GradScaler is made for CUDA, so it is refused rather than emulated.
AMP_DEVICES = {"cuda": ("bf16", "fp16"), "cpu": ("bf16",)}

KEYS = declare(
    Key("model", None, str, help="a registered model (cnnbench models)"),
    Key("model_args", {}, dict, help="the builder's keyword options, e.g. {ratio: 4}"),
    Key("task", None, str, help="default: the model's task in the registry"),
    Key("input_size", None, None, help='96, "96x96" or "1x96x96"; default: the model\'s'),
    Key("device", "auto", str, ("auto", "cpu", "cuda", "mps"), help="where the run trains"),
    Key("threads", None, int, bounds="[1, inf)",
        help="CPU threads for torch (default: torch's choice)"),
)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device``; a one-line error where it does not run."""
    if amp == "none":
        return None
    runs = AMP_DEVICES.get(device.type, ())
    if amp not in runs:
        raise CnnbenchError(f"amp {amp} does not run on {device.type}: use --amp "
                            f"{' or '.join([*runs, 'none'])}")
    return AMP_DTYPES[amp]


def build_trainer(config: dict, run_dir: str | os.PathLike | None = None,
                  callbacks: list[Callback] | None = None, checkpoint: dict | None = None,
                  reporter=None) -> Trainer:
    """A ready trainer; ``callbacks`` None: the run-folder ones (``standard_callbacks``)."""
    c = config
    device = distributed.setup(resolve_device(c["device"]))  # cuda:LOCAL_RANK under torchrun
    amp = amp_dtype(c["amp"], device)  # before any work: config.yaml records what runs
    if c["threads"]:
        torch.set_num_threads(c["threads"])  # process-wide, as torch allows nothing finer
    if c.get("init_from") and checkpoint is None:
        transfer.weights_file(c["init_from"])  # a wrong path fails before the data load
    if get_model_info(c["model"]).source == USER_SOURCE:  # module:callable: the user's code
        build(c["model"], c["model_args"], device="meta")  # fails before the data load
    seed_everything(c["seed"])
    shuffle = torch.Generator().manual_seed(c["seed"])

    task_cls = get_task(c["task"])
    data = load_data(c, task_cls)
    splits = tuple(s.to(device) for s in (data.train, data.val, data.test))
    if len(splits[0]) == 0:
        raise CnnbenchError("the training split is empty (check --limit and --data)")
    info = get_model_info(c["model"])
    # A checkpoint's own context: the normalisation it trained with, whatever data come now.
    stored = stored_context(checkpoint)
    check_same_classes(stored, data.class_names)
    context = stored or task_cls.setup(c, data, info)
    check_classes(context, c["model_args"])
    check_labels((data.train, data.val, data.test), context.num_classes)
    task = task_cls(c, context)
    task.streamed = data.info.get("data_mode") == "stream"
    monitor = c["monitor"] or task_cls.monitor
    _check_monitor(monitor, task)

    torch.manual_seed(c["seed"])  # the first weights do not depend on how data were made
    model_args = {**context.model_args, **c["model_args"]}
    model, _ = build(c["model"], model_args, in_channels=c["input_size"][0])
    init_weights(model, c["init"])
    channels_last = device.type == "cuda" and c["channels_last"]
    model = model.to(device, memory_format=(
        torch.channels_last if channels_last else torch.preserve_format))
    ensure_input_fits(model, c["model"], tuple(c["input_size"]), model_args, device)
    model = distributed.prepare_model(model, c, device)
    # init_from, lr_mult and freeze_epochs, over the model's layer groups (transfer.py)
    groups, transfer_callbacks = transfer.prepare(model, c, resuming=checkpoint is not None)
    layers = [(name, m, groups[name]) for name, m in zip(groups, c["lr_mult"])] \
        if c.get("lr_mult") else None

    optimizer = build_optimizer(model, c, param_groups(model, c["lr"], layers))
    share = distributed.share(len(splits[0]))  # one process's images per epoch
    batches = len(batch_starts(share, c["batch_size"], drop_last(c, device)))
    schedule = build_schedule(optimizer, c, math.ceil(batches / c["accumulate_steps"]))
    callbacks = standard_callbacks(c, monitor) if callbacks is None else list(callbacks)
    if reporter is not None:
        callbacks.append(Report(reporter))
    callbacks = distributed.rank_callbacks(callbacks) + transfer_callbacks  # every process
    trainer_cls = distributed.DistributedTrainer if distributed.launched() else Trainer
    trainer = trainer_cls(c, task, splits, model, optimizer, schedule, device=device,
                          amp_dtype=amp,
                          scaler=torch.amp.GradScaler("cuda", enabled=amp == torch.float16),
                          shuffle=shuffle, callbacks=callbacks, run_dir=run_dir, monitor=monitor)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
        distributed.realign_schedule(trainer, checkpoint)
    return trainer


def _check_monitor(monitor: str, task) -> None:
    names = ["loss"]
    for key, metric in task.metrics().items():
        names += list(metric.names or (key,))
    if monitor not in names:
        raise CnnbenchError(f"monitor {monitor!r} is not a metric of the {task.name} task "
                            f"({', '.join(names)}){did_you_mean(monitor, names)}")


def check_request(model: str | None = None, config_file: str | os.PathLike | None = None,
                  run_dir: str | os.PathLike | None = None,
                  resume_dir: str | os.PathLike | None = None, dry_run: bool = False) -> None:
    """The combinations ``cnnbench train`` refuses (one line, before any work): a dry run
    shows a new run's recipe; a resume takes its model, config and folder from the run."""
    if dry_run and resume_dir:
        raise CnnbenchError("--dry-run shows a new run's recipe; it does not take --resume")
    if resume_dir and (model or config_file):
        raise CnnbenchError("--resume takes the model and config from the run folder; "
                            "give only options such as --epochs")
    if resume_dir and run_dir:
        raise CnnbenchError("--resume continues the run in its own folder; it does not take "
                            "--run-dir")


def run(model: str | None = None, config_file: str | os.PathLike | None = None,
        overrides: dict | None = None, *, run_dir: str | os.PathLike | None = None,
        resume_dir: str | os.PathLike | None = None, dry_run: bool = False,
        runs_root: str | os.PathLike = "runs", reporter=None,
        callbacks: list[Callback] = ()) -> dict | None:
    """What ``cnnbench train`` does, for Python callers too: check the request, then return
    the resolved configuration (``dry_run``), or continue ``resume_dir``, or train a new run;
    the results otherwise."""
    check_request(model, config_file, run_dir, resume_dir, dry_run)
    if dry_run:
        return cfg.resolve(model, config_file, overrides)
    if resume_dir:
        return resume(resume_dir, overrides, reporter, callbacks)
    return train(model, config_file, overrides, run_dir, runs_root, reporter, callbacks)


def train(model: str | None = None, config_file: str | os.PathLike | None = None,
          overrides: dict | None = None, run_dir: str | os.PathLike | None = None,
          runs_root: str | os.PathLike = "runs", reporter=None,
          callbacks: list[Callback] = ()) -> dict | None:
    """Resolve the configuration, make a new run folder and train; returns the results."""
    config = cfg.resolve(model, config_file, overrides)
    if distributed.is_main() and run_dir:  # a usable place, before the data load
        check_run_dir(run_dir)
    elif distributed.is_main():
        check_writable(runs_root)
    trainer = build_trainer(config, reporter=reporter)  # data and model first: errors leave no
    trainer.add_callbacks(*callbacks)  # folder
    trainer.run_dir = distributed.on_main(  # rank 0 claims it; every process learns its path
        lambda: claim_run_dir(run_dir) if run_dir else new_run_dir(config["model"], runs_root))
    return fit_in_folder(trainer, new=True)


def fit_in_folder(trainer: Trainer, new: bool) -> dict | None:
    """``trainer.fit()`` in its claimed (locked) folder, unlocked at the end; a new run that
    fails before its first checkpoint leaves no folder behind (it could not be resumed)."""
    failed = True
    try:
        with resource_errors(trainer):
            results = trainer.fit()
        failed = False
        return results
    finally:
        release_run(trainer.run_dir, abandon=new and failed)  # only by the lock's holder


def resume(run_dir: str | os.PathLike, overrides: dict | None = None,
           reporter=None, callbacks: list[Callback] = ()) -> dict | None:
    """Continue ``run_dir`` from ``checkpoints/last.pt`` up to ``epochs`` (the total); a run
    stopped after its last epoch but before its results (during the test) is tested."""
    trainer = resume_trainer(run_dir, overrides, reporter)
    trainer.add_callbacks(*callbacks)
    epochs, tested = trainer.config["epochs"], (Path(run_dir) / "results.json").is_file()
    if trainer.epoch > epochs or (trainer.epoch == epochs and tested):
        raise CnnbenchError(f"{run_dir} already trained {trainer.epoch} of "
                            f"{trainer.config['epochs']} epochs: give a larger --epochs")
    # Rank 0 locks and reconciles; its one-line error stops every process.
    repaired = distributed.on_main(_lock_and_reconcile, trainer.run_dir, trainer.epoch)
    if repaired and distributed.is_main():
        say(f"note: {repaired}")
    return fit_in_folder(trainer, new=False)


def _lock_and_reconcile(run_dir: Path, epoch: int) -> str | None:
    lock_run(run_dir)
    try:
        return reconcile_metrics(run_dir, epoch)
    except BaseException:
        release_run(run_dir)
        raise


def resume_trainer(run_dir: str | os.PathLike, overrides: dict | None = None,
                   reporter=None) -> Trainer:
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise CnnbenchError(f"{run} is not a cnnbench run (no config.yaml)")
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    # Keys added since the run started take their defaults.
    config = {**cfg.defaults(state["config"].get("task")), **state["config"]}
    changed = {k: v for k, v in (overrides or {}).items()
               if v is not None and config.get(k) != v}
    fixed = sorted(set(changed) - RESUMABLE_KEYS)
    if fixed:
        raise CnnbenchError(f"{fixed[0]} cannot change when resuming (only "
                            f"{', '.join(sorted(RESUMABLE_KEYS))} can)")
    for key, value in changed.items():
        config[key] = cfg.check(key, value, source="command line")
    if not config["threads"] and state.get("threads"):
        torch.set_num_threads(state["threads"])  # as many as before: the same sums, bitwise
    return build_trainer(config, run, checkpoint=state, reporter=reporter)
