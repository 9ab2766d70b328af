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

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnbench.checkpoints import read_checkpoint
from cnnbench.errors import CnnbenchError
from cnnbench.keys import Key, declare
from cnnbench.training.interrupt import say
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

PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel's, torch.compile's
HEAD_NAMES = ("head", "heads", "fc", "classifier")


# -- loading --

def weights_file(path: str | os.PathLike) -> Path:
    """The file ``path`` names: itself, or a run folder's ``best.pt`` (else ``last.pt``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CnnbenchError(f"init_from: {path} is a folder without checkpoints/best.pt or "
                            "last.pt (give a cnnbench run folder or a weights file)")
    if not path.is_file():
        raise CnnbenchError(f"init_from: no file or run folder at {path}")
    return path


def state_dict_of(saved, path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file: a cnnbench checkpoint's ``model``, a ``state_dict`` (Lightning
    and others) or ``model_state_dict`` entry, or the file itself; prefixes stripped."""
    if isinstance(saved, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(saved.get(key), dict):
                saved = saved[key]
                break
    tensors = {k: v for k, v in saved.items() if isinstance(v, torch.Tensor)} \
        if isinstance(saved, dict) else {}
    if not tensors:
        raise CnnbenchError(f"{path} holds no tensors by name (not a state dict or checkpoint)")
    return {_strip(k): v for k, v in tensors.items()}


def _strip(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


@dataclass
class LoadReport:
    """What :func:`load_matching` did: names loaded, and the skipped ones by reason."""

    source: str
    loaded: list[str] = field(default_factory=list)
    shape_mismatch: dict[str, str] = field(default_factory=dict)  # name: "file [..] model [..]"
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model

    def line(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.shape_mismatch:
            name, shapes = next(iter(self.shape_mismatch.items()))
            parts.append(f"skipped {len(self.shape_mismatch)} of another shape (e.g. {name}: "
                         f"{shapes})")
        if self.missing:
            parts.append(f"{len(self.missing)} of the model not in the file "
                         f"(e.g. {self.missing[0]}) keep their first values")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} in the file not in the model "
                         f"(e.g. {self.unexpected[0]}) unused")
        return "; ".join(parts)

    def summary(self) -> dict:
        return {"from": self.source, "loaded": len(self.loaded),
                "shape_mismatch": len(self.shape_mismatch), "missing": len(self.missing),
                "unexpected": len(self.unexpected)}


def load_matching(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy into ``model`` every tensor of ``tensors`` whose name and shape match (parameters and
    buffers); a one-line error when none does."""
    own = model.state_dict()
    report = LoadReport(source)
    matched = {}
    for name, value in tensors.items():
        if name not in own:
            report.unexpected.append(name)
        elif value.shape != own[name].shape:
            report.shape_mismatch[name] = (f"file {list(value.shape)}, model "
                                           f"{list(own[name].shape)}")
        else:
            matched[name] = value
            report.loaded.append(name)
    report.missing = [name for name in own if name not in tensors]
    if not matched:
        example = next(iter(tensors))
        raise CnnbenchError(f"mismatched weights: no tensor of {source} fits the model by name "
                            f"and shape (the file has e.g. {example!r}, the model "
                            f"{next(iter(own), 'none')!r})")
    model.load_state_dict(matched, strict=False)
    return report


def init_from(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load the matching tensors of ``path`` (see :func:`weights_file`) into ``model``."""
    file = weights_file(path)
    return load_matching(model, state_dict_of(read_checkpoint(file), file), str(file))


def torchvision_weights(tv_name: str, weights: str):
    """The ``Weights`` entry ``weights`` (``DEFAULT``, ``IMAGENET1K_V1``...) of a torchvision
    model, and the path its file would have in the torch hub cache."""
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(tv_name)
    except (ValueError, KeyError):
        raise CnnbenchError(f"torchvision has no weights for {tv_name}") from None
    names = ["DEFAULT", *enum.__members__]
    if weights not in names:
        raise CnnbenchError(f"weights={weights} is not one of {tv_name}'s: {', '.join(names)}")
    entry = enum[weights]  # DEFAULT is an alias of one of them
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return entry, folder / os.path.basename(entry.url)


def load_torchvision_weights(model: nn.Module, tv_name: str,
                             weights: str) -> LoadReport | None:
    """Load ``weights`` of ``tv_name`` from the hub cache (never the network), by name and
    shape, so a head for another number of classes keeps its first values. A model on the
    ``meta`` device (shapes only: ``summary``) has nothing to copy into: None."""
    entry, file = torchvision_weights(tv_name, weights)
    if not file.is_file():
        raise CnnbenchError(f"weights={weights} needs {file.name} in {file.parent} (cnnbench "
                            f"downloads nothing: fetch {entry.url} there yourself)")
    if any(p.is_meta for p in model.parameters()):
        return None
    report = load_matching(model, state_dict_of(read_checkpoint(file), file), str(file))
    say(f"weights={weights}: {report.line()}")
    return report


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
    from cnnbench.training import distributed

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
    """Puts what ``init_from`` loaded into ``results.json`` (``init_from``), also on resume."""

    def __init__(self, report: LoadReport | None = None):
        self.summary = report.summary() if report else None

    def after_test(self, trainer, results: dict) -> None:
        if self.summary:
            results["init_from"] = self.summary

    def state_dict(self) -> dict:
        return {"init_from": self.summary} if self.summary else {}

    def load_state_dict(self, state: dict) -> None:
        self.summary = state.get("init_from") or self.summary


def prepare(model: nn.Module, config: dict, resuming: bool) -> tuple[dict, list[Callback]]:
    """Load ``init_from`` (a new run only), check ``lr_mult`` and ``freeze_epochs`` against the
    model's groups; the groups and the callbacks the run needs."""
    if config["model_args"].get("weights") and config.get("init", "default") != "default":
        raise CnnbenchError(f"init: {config['init']} would redraw the weights that weights="
                            f"{config['model_args']['weights']} loads: leave one out")
    groups = layer_groups(model)
    check_lr_mult(config.get("lr_mult"), groups, config["model"])
    check_freeze(config.get("freeze_epochs", 0), groups, config["model"])
    report = None
    if config.get("init_from") and not resuming:
        report = init_from(model, config["init_from"])
        say(f"init_from: {report.line()}")
    callbacks: list[Callback] = [TransferLog(report)] if config.get("init_from") else []
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
