"""Initial weights: the ``init`` key re-draws every Conv2d, ConvTranspose2d and Linear weight
(d2l's train_ch6 applies Xavier-uniform to every Conv2d and Linear)."""

from __future__ import annotations

import torch
from torch import nn

from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.keys import Key, declare


INITS = {
    "default": None,  # PyTorch's own (Kaiming-uniform with a = sqrt(5))
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
}
INIT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def init_weights(model: nn.Module, name: str) -> nn.Module:
    """Re-draw the weight of every Conv2d, ConvTranspose2d and Linear; biases stay as they are.

    Draws from torch's global generator, which ``build_trainer`` has just seeded.
    """
    if name not in INITS:
        raise CnnbenchError(f"init must be one of {', '.join(INITS)}, not {name!r}"
                            f"{did_you_mean(name, INITS)}")
    rule = INITS[name]
    if rule is not None:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, INIT_LAYERS):
                    rule(module.weight)
    return model

KEYS = declare(
    Key("init", "default", str, tuple(INITS), help="weights of every Conv2d/Linear before training"),
)
