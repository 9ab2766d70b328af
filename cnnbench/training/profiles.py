"""Device profiles. A recipe (``experiments/<model>.yaml``) may hold a ``cuda:`` block: keys that
change when the run is on a CUDA device (the paper's width, a GPU-sized batch with its learning
rate, bf16, a compile mode). :func:`apply_profile` merges it over the recipe (``model_args``
key by key) before the command line, which still wins; ``profile`` in the resolved configuration
says which block was applied (``cuda`` or ``none``). The profile follows the *requested* device
(``auto`` means CUDA when torch sees one), so ``--dry-run --device cuda`` shows a GPU recipe on
any machine.
"""

from __future__ import annotations

import torch

from cnnbench.errors import CnnbenchError
from cnnbench.keys import Key, declare

PROFILES = ("cuda",)  # the device blocks a recipe may hold

KEYS = declare(
    Key("profile", "auto", str, ("auto", "none", *PROFILES),
        help="the recipe's device block applied (auto: follow the device)"),
)


def profile_for(device: str | None, profile: str | None = "auto") -> str:
    """``cuda`` or ``none``: the block a run on ``device`` applies (``profile`` may force it)."""
    if profile and profile != "auto":
        return profile
    device = device or "auto"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "none"
    return "cuda" if device.split(":")[0] == "cuda" else "none"


def apply_profile(recipe: dict, device: str | None, profile: str | None = "auto") -> dict:
    """``recipe`` with its block for ``device`` merged in and every block removed."""
    recipe = dict(recipe)
    blocks = {name: recipe.pop(name) for name in PROFILES if name in recipe}
    chosen = profile_for(device or recipe.get("device"), profile or recipe.get("profile"))
    recipe["profile"] = chosen
    for name, block in blocks.items():  # every block, also those this device does not use
        if block is not None and not isinstance(block, dict):
            raise CnnbenchError(f"the recipe's {name}: block must be a mapping of keys to values")
    block = blocks.get(chosen) or {}
    if isinstance(block.get("model_args"), dict) and isinstance(recipe.get("model_args"), dict):
        block = {**block, "model_args": {**recipe["model_args"], **block["model_args"]}}
    return {**recipe, **block}
