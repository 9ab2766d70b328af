"""A trainer from a resolved configuration (``cnnbench.train`` resolves it and calls this).

``build_trainer`` does, in this order: device and threads, seeds, the task's data (on the
device), the task's context, the model (seeded again, so the first weights do not depend on how
the data were made; ``init:`` redraws them, then ``init_from:`` loads the matching tensors of a
trained model), the optimizer (``lr_mult``: one rate per layer group) and its schedule, AMP, the
callbacks (``freeze_epochs``) and, when resuming, every state from the checkpoint.
"""

from __future__ import annotations

import math
import os

import torch

from cnnbench.building import build, ensure_input_fits
from cnnbench.checkpoints import weights_file
from cnnbench.data.sources import load_data
from cnnbench.devices import resolve_device
from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.keys import Key, declare
from cnnbench.models import get_model_info
from cnnbench.registry import USER_SOURCE
from cnnbench.tasks.base import get_task, stored_context
from cnnbench.training import distributed, transfer
from cnnbench.training.compiling import drop_last
from cnnbench.training.weight_init import init_weights
from cnnbench.training.callbacks import Report, standard_callbacks
from cnnbench.training.checks import check_classes, check_labels, check_same_classes
from cnnbench.training.loop import Callback, Trainer, batch_starts
from cnnbench.training.optimizers import build_optimizer, param_groups
from cnnbench.training.rng import seed_everything
from cnnbench.training.schedules import build_schedule

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


def _check_monitor(monitor: str, task) -> None:
    names = ["loss"]
    for key, metric in task.metrics().items():
        names += list(metric.names or (key,))
    if monitor not in names:
        raise CnnbenchError(f"monitor {monitor!r} is not a metric of the {task.name} task "
                            f"({', '.join(names)}){did_you_mean(monitor, names)}")
