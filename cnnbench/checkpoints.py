"""Weight files: read safely (``weights_only=True``, one clear error for a bad file; written by
``files.save_torch``), and loaded into a model by name and shape (``init_from``, torchvision's weights from
the hub cache: never the network)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnbench.errors import CnnbenchError, say, shown
from cnnbench.files import RunLayout

PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel's, torch.compile's


def read_checkpoint(path: str | os.PathLike):
    """The object saved in ``path`` (tensors, dicts, numbers only); a missing or damaged file
    is a one-line ``CnnbenchError``."""
    path = Path(path)
    if not path.is_file():
        raise CnnbenchError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged zip/pickle
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CnnbenchError(f"cannot read checkpoint {path}: it is truncated or damaged, or not "
                            f"a PyTorch weights file ({reason})") from None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``.NAME.tmp-PID`` files in ``folder`` whose writer (PID) is no longer running."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# The entries of a trainer checkpoint and their types (those an older one lacks are not
# checked): a damaged or crafted file is a one-line error before anything is built from it.
STATE_TYPES = {"model": dict, "optimizer": dict, "epoch": int, "config": dict, "schedule": dict,
               "scaler": dict, "rng": dict, "started": str, "threads": int, "class_names": list,
               "context": dict, "row": (dict, type(None)), "position": (dict, type(None)),
               "best": (int, float), "best_epoch": int, "early_stopping": (dict, type(None)),
               "ema": (dict, type(None))}


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A trainer checkpoint (``last.pt``/``best.pt``): model, optimizer, epoch and the rest,
    each of its type (``STATE_TYPES``), the weights tensors by name."""
    state = read_checkpoint(path)
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch"} <= set(state):
        raise CnnbenchError(f"{path} is not a cnnbench checkpoint")
    for key, kinds in STATE_TYPES.items():
        value = state.get(key)
        if key in state and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise CnnbenchError(f"{path} is damaged: its {key} is {shown(value)}")
    if state["epoch"] < 0 or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CnnbenchError(f"{path} is damaged: its epoch or weights are not what a run saves")
    return state


# -- weights into a model: by name and shape (init_from, torchvision weights) --

CHECKPOINT_NAMES = RunLayout.CHECKPOINT_NAMES  # a run folder's checkpoints/NAME.pt


def weights_file(path: str | os.PathLike, checkpoint: str | None = None,
                 what: str = "init_from") -> Path:
    """The file ``path`` names: itself, or a run folder's ``checkpoints/{checkpoint}.pt``
    (``checkpoint`` None: ``best.pt``, else ``last.pt``). ``what`` starts the error lines."""
    if checkpoint is not None and checkpoint not in CHECKPOINT_NAMES:
        raise CnnbenchError(f"--checkpoint must be {' or '.join(CHECKPOINT_NAMES)}, not "
                            f"{checkpoint!r}")
    path = Path(path).expanduser()
    if path.is_dir():
        layout = RunLayout(path)
        for name in [checkpoint] if checkpoint else CHECKPOINT_NAMES:
            if layout.checkpoint(name).is_file():
                return layout.checkpoint(name)
        if checkpoint:
            raise CnnbenchError(f"no checkpoint at {layout.checkpoint(checkpoint)}")
        raise CnnbenchError(f"{what}: {path} is a folder without checkpoints/best.pt or "
                            "last.pt (give a cnnbench run folder or a weights file)")
    if not path.is_file():
        raise CnnbenchError(f"{what}: no file or run folder at {path}")
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


# -- the normalisation that starting weights were trained with --

def _preset_statistics(entry) -> tuple[tuple, tuple] | None:
    """The mean and std of a torchvision weights entry's ``transforms()`` (None for presets
    without them, e.g. detection's)."""
    preset = entry.transforms()
    mean, std = getattr(preset, "mean", None), getattr(preset, "std", None)
    return (tuple(map(float, mean)), tuple(map(float, std))) if mean and std else None


# torchvision's published files: NAME-HASH.pth or NAME_HASH.pth (resnet18-f37072fd.pth)
PUBLISHED_NAME = re.compile(r"[\w.-]+[-_][0-9a-f]{8,}\.pth")


def _torchvision_entry_of(file: Path):
    """``(model name, weights entry)`` whose published file is named like ``file``, if any:
    an ``init_from`` file fetched from torchvision is known by its name (``resnet18-f37072fd.pth``)."""
    if not PUBLISHED_NAME.fullmatch(file.name):  # best.pt, a state dict of one's own...
        return None
    import torchvision.models as tvm

    for name in tvm.list_models():
        try:
            entries = list(tvm.get_model_weights(name))
        except (ValueError, KeyError):
            continue
        for entry in entries:
            if os.path.basename(entry.url) == file.name:
                return name, entry
    return None


def weights_statistics(model: str, model_args: dict,
                       init_from: str | None) -> tuple[tuple, tuple, str] | None:
    """``(mean, std, where)``: the per-channel normalisation the starting weights were trained
    with, as the references fine-tune (torchvision's ``weights.transforms()``, timm's
    ``pretrained_cfg``, fastai's ``normalize`` from the pretrained model): a ``torchvision:``
    model's ``weights=NAME``, or an ``init_from`` file that is one of torchvision's published
    weights. None when the weights start from random values or from a run of ours (whose own
    data statistics are then used)."""
    found = None
    weights = model_args.get("weights")
    if model.startswith("torchvision:") and isinstance(weights, str) and weights:
        tv_name = model.split(":", 1)[1]
        found = (tv_name, torchvision_weights(tv_name, weights)[0])
    elif init_from:
        found = _torchvision_entry_of(weights_file(init_from))
    if found is None:
        return None
    name, entry = found
    stats = _preset_statistics(entry)
    if stats is None:
        return None
    return (*stats, f"the weights' own (torchvision {name} {entry.name})")
