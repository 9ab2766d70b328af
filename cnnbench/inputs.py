"""Parsing what a user types: ``--input-size`` and ``--model-arg``.

Shared by every command, so that `summary`, `bench`, `train` and `receptive-field` parse them the
same way.
"""

from __future__ import annotations

import ast

from cnnbench.errors import CnnbenchError
from cnnbench.registry import ModelInfo


def parse_input_size(text: str | None, info: ModelInfo) -> tuple[int, int, int]:
    """``CxHxW``, ``HxW`` or ``S`` (square) -> ``(C, H, W)``; channels default to the model's."""
    if not text:
        return info.input_size
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) == 2:
        dims = [info.in_channels, *dims]
    if len(dims) != 3 or min(dims) < 1:
        raise CnnbenchError(f"bad --input-size {text!r}: use CxHxW, HxW or one number "
                            "(e.g. 1x96x96 or 96x96)")
    return tuple(dims)


def parse_model_args(items: list[str] | None) -> dict:
    """``KEY=VALUE`` strings -> keyword arguments; values are Python literals or plain strings."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise CnnbenchError(f"bad --model-arg {item!r}: use KEY=VALUE, e.g. ratio=4")
        try:
            options[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key] = value.strip()
    return options
