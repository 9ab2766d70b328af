"""Every random state a run uses: seeded at the start, saved in checkpoints, restored on resume."""

from __future__ import annotations

import random

import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_states(device: torch.device, shuffle: torch.Generator) -> dict:
    """Every random state the run uses, as tensors, lists and numbers (``weights_only``-safe)."""
    version, internal, gauss = random.getstate()
    states = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(),
              "python": [version, list(internal), gauss]}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    if device.type == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def set_rng_states(states: dict, device: torch.device, shuffle: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    shuffle.set_state(states["shuffle"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
    if device.type == "mps" and "mps" in states:
        torch.mps.set_rng_state(states["mps"])
