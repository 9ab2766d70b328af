"""Transfer learning: start from trained weights, train the head first, then all, at
discriminative rates (the fast.ai lesson's ``ConvLearner.pretrained``, ``freeze_to``,
``unfreeze`` and ``lrs = [lr/100, lr/10, lr]``).

- ``init_from: PATH`` loads every tensor whose name and shape match the model from a cnnbench run
  folder (its ``best.pt``, else ``last.pt``), a checkpoint, a plain state dict or a torchvision
  ``.pth`` already on disk; ``-m weights=DEFAULT`` on a ``torchvision:`` model loads the file of
  that ``Weights`` entry from the torch hub cache. Nothing is downloaded. The loader reports what
  it loaded and what it skipped, and why; zero matches is a one-line error.
- Layer groups: a model may define ``layer_groups()``, a mapping from each group's name to its
  submodules' names, body first, head last (parameters in no listed submodule join the last
  group). Otherwise the rule is generic: the head is a child named ``head``, ``heads``, ``fc``
  or ``classifier``, else the last child that has parameters (descending through a lone
  container), and the body is the rest.
- ``lr_mult: [m1, ..., mk]``: one multiplier of ``lr`` per group (``optimizers.param_groups``).
- ``freeze_epochs: N``: :class:`Freeze` trains only the last group for the first N epochs.
"""

from __future__ import annotations

from torch import nn

from cnnbench.checkpoints import LoadReport, init_from
from cnnbench.errors import CnnbenchError, say
from cnnbench.keys import Key, declare
from cnnbench.training import distributed
from cnnbench.training.loop import Callback

KEYS = declare(
    Key("init_from", None, str,
        help="run folder, checkpoint or state dict (or torchvision weights on disk): every "
             "tensor whose name and shape match is loaded"),
    Key("freeze_epochs", 0, int, bounds="[0, inf)",
        help="train only the head (the last layer group) for this many epochs, then all"),
    Key("train_bn", False, bool, help="frozen groups' norms train too (fastai 2), not eval"),
    Key("lr_mult", None, list, bounds="(0, inf)",
        help="lr multiple per layer group, body first, e.g. [0.01, 0.1, 1]"),
)

HEAD_NAMES = ("head", "heads", "fc", "classifier")


def _statistics(context) -> str | None:
    if context is None or not context.stats:
        return None
    numbers = ", ".join(f"{m:.3f}/{s:.3f}" for m, s in zip(context.mean, context.std))
    return f"{context.stats} statistics, mean/std {numbers}"


# -- layer groups --

def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def head_name(model: nn.Module) -> str | None:
    """The generic rule's head: see the module's notes."""
    prefix, module = "", model
    while True:
        children = [(n, c) for n, c in module.named_children() if _has_parameters(c)]
        named = [n for n, _ in children if n in HEAD_NAMES]
        if named:
            return prefix + named[-1]
        if not children:
            return None
        name, child = children[-1]
        if len(children) == 1 and any(True for _ in child.children()):
            prefix, module = f"{prefix}{name}.", child
            continue
        return prefix + name


def layer_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Each group's parameters, body first, head last (see the module's notes)."""
    declared = getattr(model, "layer_groups", None)
    if callable(declared):
        names = declared()
        rest = list(names)[-1]  # what the declaration does not list joins the head
    else:
        head = head_name(model)
        names = {"body": [], "head": [head]} if head else {"all": []}
        rest = next(iter(names))  # the body: all but the head
    groups: dict[str, list[nn.Parameter]] = {group: [] for group in names}
    owner = {prefix: group for group, prefixes in names.items() for prefix in prefixes}
    for name, p in model.named_parameters():
        parts = name.split(".")
        prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))
        groups[next((owner[q] for q in prefixes if q in owner), rest)].append(p)
    return {group: params for group, params in groups.items() if params}


def check_lr_mult(lr_mult: list | None, groups: dict, model_name: str) -> None:
    if lr_mult is not None and len(lr_mult) != len(groups):
        raise CnnbenchError(f"lr_mult has {len(lr_mult)} rates but {model_name} has "
                            f"{len(groups)} layer groups ({', '.join(groups)}): give one each")


def check_freeze(freeze_epochs: int, groups: dict, model_name: str) -> None:
    if freeze_epochs and distributed.launched():
        # DistributedDataParallel fixes the parameters it reduces when it is made.
        raise CnnbenchError("freeze_epochs does not run under --nproc (DistributedDataParallel "
                            "expects a gradient for every parameter): train in one process")
    if freeze_epochs and len(groups) < 2:
        raise CnnbenchError(f"freeze_epochs needs a body and a head, but {model_name} has one "
                            f"layer group ({', '.join(groups)})")


# -- the run --

class Freeze(Callback):
    """fastai's ``fine_tune``: for the first ``epochs`` epochs only the last group (the head)
    trains; the others have ``requires_grad`` off (no gradient, so the optimizer leaves them and
    their moments alone, weight decay too) and, as fastai 0.7 (the lesson's) did for frozen
    layers, their batch norms stay in eval mode: running statistics used and kept. With
    ``train_bn`` (fastai 2's default) the norms of frozen groups train as usual, weights and
    statistics, which lets the body adapt to inputs normalised otherwise than in pretraining.
    Then every group trains, on one schedule over all the epochs (fastai runs two).

    The state follows from the epoch, so a resumed run is frozen exactly when the first was;
    the checkpoint also records it (``freeze``) for a reader.
    """

    order = 5  # before the epoch's training starts

    def __init__(self, groups: dict[str, list[nn.Parameter]], model: nn.Module, epochs: int,
                 train_bn: bool = False):
        self.epochs = epochs
        body = {id(p): p for params in list(groups.values())[:-1] for p in params}
        # The norms: modules with frozen parameters and running statistics (buffers) of their
        # own, torch's BatchNorm as well as the notes' own (models/lenet.py).
        self.norms = [m for m in model.modules()
                      if any(id(p) in body for p in m.parameters(recurse=False))
                      and any(True for _ in m.buffers(recurse=False))]
        if train_bn:
            for norm in self.norms:
                for p in norm.parameters(recurse=False):
                    body.pop(id(p))
            self.norms = []
        self.params = list(body.values())
        self.hooks: list = []
        self.frozen = False

    def before_epoch(self, trainer, epoch: int) -> None:
        self.set(epoch <= self.epochs)

    def after_fit(self, trainer) -> None:
        self.set(False)

    def set(self, frozen: bool) -> None:
        if frozen == self.frozen:
            return
        self.frozen = frozen
        for p in self.params:
            p.requires_grad_(not frozen)
        for hook in self.hooks:
            hook.remove()
        # The loop calls model.train() each epoch: a pre-hook puts the frozen norms back.
        self.hooks = [m.register_forward_pre_hook(_eval_mode) for m in self.norms] if frozen \
            else []

    def state_dict(self) -> dict:
        return {"freeze": {"epochs": self.epochs, "frozen": self.frozen}}


def _eval_mode(module: nn.Module, args) -> None:
    module.training = False


class TransferLog(Callback):
    """Puts what ``init_from`` loaded, and the normalisation the run uses, into
    ``results.json`` (``init_from``), also on resume."""

    def __init__(self, report: LoadReport | None = None, statistics: str | None = None):
        self.summary = report.summary() if report else None
        if self.summary is not None and statistics:
            self.summary["statistics"] = statistics

    def after_test(self, trainer, results: dict) -> None:
        if self.summary:
            results["init_from"] = self.summary

    def state_dict(self) -> dict:
        return {"init_from": self.summary} if self.summary else {}

    def load_state_dict(self, state: dict) -> None:
        self.summary = state.get("init_from") or self.summary


def prepare(model: nn.Module, config: dict, resuming: bool, context=None
            ) -> tuple[dict, list[Callback]]:
    """Load ``init_from`` (a new run only), say which normalisation a run from trained weights
    uses (``context``: the task's), check ``lr_mult`` and ``freeze_epochs`` against the model's
    groups; the groups and the callbacks the run needs."""
    if config["model_args"].get("weights") and config.get("init", "default") != "default":
        raise CnnbenchError(f"init: {config['init']} would redraw the weights that weights="
                            f"{config['model_args']['weights']} loads: leave one out")
    groups = layer_groups(model)
    check_lr_mult(config.get("lr_mult"), groups, config["model"])
    check_freeze(config.get("freeze_epochs", 0), groups, config["model"])
    report, statistics = None, _statistics(context)
    if config.get("init_from") and not resuming:
        report = init_from(model, config["init_from"])
        say(f"init_from: {report.line()}")
    if statistics and not resuming and (config.get("init_from")
                                        or config["model_args"].get("weights")):
        say(f"normalisation: {statistics}")
    callbacks: list[Callback] = [TransferLog(report, statistics)] \
        if config.get("init_from") else []
    if config.get("lr_mult") or config.get("freeze_epochs"):
        rates = config.get("lr_mult") or [1] * len(groups)
        frozen = (f"; epochs 1-{config['freeze_epochs']} train the {list(groups)[-1]} only"
                  if config.get("freeze_epochs") else "")
        say("layer groups: " + ", ".join(f"{g} (lr x {m:g})" for g, m in zip(groups, rates))
            + frozen)
    if config.get("freeze_epochs"):
        callbacks.append(Freeze(groups, model, config["freeze_epochs"],
                                config.get("train_bn", False)))
    return groups, callbacks
