"""Parsing what a user types about a model: ``--input-size`` and ``--model-arg``.

Shared by every command, so that `summary`, `bench`, `train`, `sweep` and `receptive-field` parse
them the same way. The input's channels follow the model's ``in_channels`` option when it is given.
A value is YAML (``0.1``, ``true``, ``[0.9, 0.99]``, ``{ratio: 4}``), read by ``keys.parse_value``.
"""

from __future__ import annotations

from cnnbench.building import check_memory
from cnnbench.errors import CnnbenchError
from cnnbench.keys import parse_assignments
from cnnbench.registry import ModelInfo, check_options


def _in_channels_option(info: ModelInfo, model_args: dict | None) -> int | None:
    """``in_channels`` from (checked) ``model_args`` when the model has that option."""
    return (model_args or {}).get("in_channels") if "in_channels" in info.options else None


def model_input_size(info: ModelInfo, model_args: dict | None = None,
                     size: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    """The (C, H, W) input of ``info`` built with ``model_args``: ``size`` when given, else the
    model's own with its channels following an ``in_channels`` option.

    Bad model arguments, a size whose channels disagree with ``in_channels`` and an input whose
    tensor alone would not fit in the memory free here are one-line errors.
    """
    check_options(info, model_args or {})
    in_channels = _in_channels_option(info, model_args)
    size = tuple(size or (in_channels or info.in_channels, *info.input_size[1:]))
    if in_channels is not None and size[0] != in_channels:
        raise CnnbenchError(f"input size {'x'.join(map(str, size))} does not match "
                            f"in_channels={in_channels} of {info.name}: give "
                            f"{in_channels}x{size[1]}x{size[2]} or drop one of them")
    check_memory(size)
    return size


def parse_input_size(text: str | None, info: ModelInfo,
                     model_args: dict | None = None) -> tuple[int, int, int]:
    """``CxHxW``, ``HxW`` or ``S`` (square) -> ``(C, H, W)``; channels default to the model's
    (its ``in_channels`` in ``model_args`` when given)."""
    check_options(info, model_args or {})
    if not text:
        return model_input_size(info, model_args)
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) == 2:
        dims = [_in_channels_option(info, model_args) or info.in_channels, *dims]
    if len(dims) != 3 or min(dims) < 1:
        raise CnnbenchError(f"bad --input-size {text!r}: use CxHxW, HxW or one number "
                            "(e.g. 1x96x96 or 96x96)")
    return model_input_size(info, model_args, tuple(dims))


def parse_model_args(items: list[str] | None) -> dict:
    """``--model-arg KEY=VALUE`` strings -> the builder's keyword arguments."""
    return parse_assignments(items, "--model-arg", "ratio=4")
