"""A trainer from a resolved configuration (``cnnbench.train`` resolves it and calls this).

``build_trainer`` does, in this order: device and threads, seeds, the task's data (on the
device), the task's context, the model (seeded again, so the first weights do not depend on how
the data were made; ``init:`` redraws them, then ``init_from:`` loads the matching tensors of a
trained model), the optimizer (``lr_mult``: one rate per layer group) and its schedule, AMP, the
callbacks (``freeze_epochs``) and, when resuming, every state from the checkpoint.

For inference (``cnnbench/inference.py``), ``restore_model`` builds a checkpoint's model with
its weights and no optimizer or schedule, and ``build_evaluator`` wraps it in a trainer that
only evaluates.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from cnnbench.building import build, ensure_input_fits
from cnnbench.checkpoints import weights_file
from cnnbench.data.sources import load_data
from cnnbench.devices import resolve_device
from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.keys import Key, declare
from cnnbench.models import get_model_info
from cnnbench.registry import USER_SOURCE
from cnnbench.tasks.base import Context, Task, get_task, stored_context
from cnnbench.training import distributed, transfer
from cnnbench.training.compiling import drop_last
from cnnbench.training.weight_init import init_weights
from cnnbench.training.callbacks import Report, standard_callbacks
from cnnbench.training.checks import check_classes, check_labels, check_same_classes
from cnnbench.training.loop import Callback, Trainer, batch_starts
from cnnbench.training.optimizers import build_optimizer, param_groups
from cnnbench.training.rng import seed_everything
from cnnbench.training.runs import monitor_name
from cnnbench.training.schedules import build_schedule

WEIGHTS = ("model", "ema")  # the weights a checkpoint may hold: the model's, its EMA's
# Model options that load weights when the model is built; a checkpoint's model needs none.
WEIGHT_OPTIONS = ("weights", "backbone_weights")
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
        weights_file(c["init_from"])  # a wrong path fails before the data load
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
    monitor = check_monitor(c, task)

    model = distributed.prepare_model(build_model(c, context, device), c, device)
    # init_from, lr_mult and freeze_epochs, over the model's layer groups (transfer.py)
    groups, transfer_callbacks = transfer.prepare(model, c, resuming=checkpoint is not None,
                                                  context=context)
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


def build_model(c: dict, context: Context, device: torch.device,
                trained: bool = False) -> nn.Module:
    """The configuration's model for ``context`` on ``device``, its input size checked. New:
    first weights seeded (so they do not depend on how the data were made) and ``init:``
    applied. ``trained``: the weights will come from a checkpoint, so neither is done, and the
    options that load weights at build time (``WEIGHT_OPTIONS``) are left out."""
    model_args = {**context.model_args, **c["model_args"]}
    if trained:
        model_args = {k: v for k, v in model_args.items() if k not in WEIGHT_OPTIONS}
    else:
        torch.manual_seed(c["seed"])
    model, _ = build(c["model"], model_args, in_channels=c["input_size"][0])
    if not trained:
        init_weights(model, c["init"])
    channels_last = device.type == "cuda" and c["channels_last"]
    model = model.to(device, memory_format=(
        torch.channels_last if channels_last else torch.preserve_format))
    ensure_input_fits(model, c["model"], tuple(c["input_size"]), model_args, device)
    return model


# -- inference: a checkpoint's model, no optimizer, no schedule --

def restore_model(c: dict, state: dict, device: torch.device,
                  weights: str = "model") -> tuple[Task, nn.Module]:
    """The task and the model of a checkpoint (``state``, written with configuration ``c``),
    with its ``weights`` (``model``, or ``ema``: the model EMA's), in eval mode on ``device``.
    The checkpoint's context gives the classes and the normalisation, so no data are loaded
    (unless the checkpoint is older than that)."""
    task_cls = get_task(c["task"])
    context = stored_context(state)
    if context is None:  # written before checkpoints held their context: ask the data
        context = task_cls.setup(c, load_data(c, task_cls), get_model_info(c["model"]))
    check_classes(context, c["model_args"])
    if weights not in WEIGHTS or state.get(weights) is None:
        held = [w for w in WEIGHTS if state.get(w) is not None]
        raise CnnbenchError(f"the checkpoint holds no {weights} weights (it has "
                            f"{', '.join(held) or 'none'})" + (
                                "; train with --set ema=0.999 for EMA weights"
                                if weights == "ema" else ""))
    model = build_model(c, context, device, trained=True)
    try:
        model.load_state_dict(state[weights])
    except (RuntimeError, KeyError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:120]
        raise CnnbenchError(f"the checkpoint does not fit {c['model']} ({reason})") from None
    return task_cls(c, context), model.eval()


def build_evaluator(c: dict, task: Task, model: nn.Module, device: torch.device) -> Trainer:
    """A trainer without optimizer or schedule over the configuration's data (``data``,
    ``limit``): ``evaluate`` and ``predict`` only. The data, batches, forward and device are
    those of the test pass at the end of training, so on the same checkpoint and data the
    figures are bitwise the same."""
    amp = amp_dtype(c["amp"], device)
    if c["threads"]:
        torch.set_num_threads(c["threads"])
    seed_everything(c["seed"])
    data = load_data(c, type(task))
    check_same_classes(task.context, data.class_names)
    check_labels((data.train, data.val, data.test), task.context.num_classes)
    task.streamed = data.info.get("data_mode") == "stream"
    splits = tuple(s.to(device) for s in (data.train, data.val, data.test))
    return Trainer(c, task, splits, model, None, None, device=device, amp_dtype=amp)


def check_monitor(c: dict, task: Task) -> str:
    """The metric that picks best.pt: ``monitor`` (see ``monitor_name``) or the task's; an EMA
    metric (``ema_acc``) with ``ema`` set. Anything else is a one-line error."""
    monitor = monitor_name(c["monitor"] or task.monitor)
    names = ["loss"]
    for key, metric in task.metrics().items():
        names += list(metric.names or (key,))
    if monitor.startswith("ema_") and monitor[4:] in names and not c.get("ema"):
        raise CnnbenchError(f"monitor {monitor!r} follows the model EMA: set its decay too "
                            f"(--set ema=0.999)")
    if c.get("ema"):
        names += [f"ema_{name}" for name in names]
    if monitor not in names:
        raise CnnbenchError(f"monitor {monitor!r} is not a metric of the {task.name} task "
                            f"({', '.join(names)}){did_you_mean(monitor, names)}")
    return monitor
