"""The optimizers a recipe can name: a table, in the style of timm's ``OptimInfo``.

Each entry names the optimizer class and the configuration keys it takes; the ``optimizer`` key
(``cnnbench train --keys``) lists the names from here. To add an optimizer: one entry.

Parameter groups come from the model: a module may define ``lr_multipliers()``, mapping some of
its own parameters (relative names such as ``"p_conv.weight"``) to a multiple of the learning
rate (a deformable convolution's offset branch learns at 0.1 x). Every other parameter is in the
first group; then one group per multiplier, in the order the modules come. With ``lr_mult``
each layer group (``transfer.py``) is split so, at its own multiple of the rate.
"""

from __future__ import annotations

import pkgutil
from dataclasses import dataclass

from cnnbench.errors import CnnbenchError
from cnnbench.keys import Key, declare


@dataclass(frozen=True)
class OptimInfo:
    cls: str  # the class, imported when a run uses it
    keys: tuple[str, ...]  # configuration keys passed on as keyword arguments (besides lr)
    description: str
    fused: bool = True  # takes fused=True on CUDA (one kernel for every parameter)


OPTIMIZERS: dict[str, OptimInfo] = {
    "sgd": OptimInfo("torch.optim.SGD", ("momentum", "nesterov", "weight_decay"),
                     "SGD, with (Nesterov) momentum if asked"),
    "adamw": OptimInfo("torch.optim.AdamW", ("betas", "weight_decay"),
                       "Adam with decoupled weight decay (Loshchilov and Hutter)"),
    "adam": OptimInfo("torch.optim.Adam", ("betas", "weight_decay"),
                      "Adam (Kingma and Ba); weight decay as an L2 term"),
}


KEYS = declare(
    Key("optimizer", "sgd", str, tuple(OPTIMIZERS), help="the torch.optim optimizer (OPTIMIZERS above)"),
    Key("lr", 0.1, float, bounds="(0, inf)", help="learning rate (the peak, with a schedule)"),
    Key("momentum", 0.0, float, bounds="[0, 1)", help="SGD momentum; Adam's beta1 is betas[0]"),
    Key("nesterov", False, bool, help="SGD: Nesterov momentum"),
    Key("betas", [0.9, 0.999], list, bounds="[0, 1)", help="Adam's betas (each)"),
    Key("weight_decay", 0.0, float, bounds="[0, inf)", help="L2 (SGD, Adam) or decoupled (AdamW)"),
    Key("decay_norm_bias", False, bool, legacy=True,
        help="weight decay on norm layers' weights and on biases too (timm and fastai leave "
             "them out: they set a scale and a shift, not a pattern to regularise)"),
)


def param_groups(model, lr: float, layers: list[tuple[str, float, list]] | None = None
                 ) -> list[dict]:
    """The rest of the parameters at ``lr``, then one group per ``lr_multipliers`` value.

    ``layers`` (``lr_mult``): ``(name, multiplier, parameters)`` per layer group, body first
    (``transfer.layer_groups``); each is split the same way at ``lr`` x its multiplier, the head
    first, so the first group's lr (the one the trainer logs) is the recipe's ``lr``.
    """
    special: dict[int, tuple] = {}  # id: (parameter, its module's multiplier), module order
    for module in model.modules():
        for name, multiplier in getattr(module, "lr_multipliers", dict)().items():
            p = module.get_parameter(name)
            special[id(p)] = (p, multiplier)
    layers = reversed(layers) if layers else [(None, 1.0, list(model.parameters()))]
    groups = []
    for layer, scale, params in layers:
        named = {"layer_group": layer} if layer else {}
        ids = {id(p) for p in params}
        by_multiplier: dict[float, list] = {}
        for key, (p, multiplier) in special.items():
            if key in ids:
                by_multiplier.setdefault(multiplier, []).append(p)
        groups.append({"params": [p for p in params if id(p) not in special], "lr": lr * scale,
                       **named})
        groups += [{"params": ps, "lr": lr * scale * m, **named}
                   for m, ps in by_multiplier.items()]
    return groups


def norms_and_biases(model) -> set[int]:
    """The ids of ``model``'s norm layers' parameters (any module whose class says Norm: the
    notes' own ``BatchNorm`` keeps a 4-d ``gamma``), its biases and every parameter of one
    dimension or fewer (timm's rule)."""
    found = set()
    for module in model.modules():
        norm = "norm" in type(module).__name__.lower()
        for name, p in module.named_parameters(recurse=False):
            if norm or name.endswith("bias") or p.ndim <= 1:
                found.add(id(p))
    return found


def no_decay(groups: list[dict], exempt: set[int]) -> list[dict]:
    """``groups`` with each one's ``exempt`` parameters moved into a twin group right after it
    with ``weight_decay`` 0; a group left empty goes."""
    result = []
    for group in groups:
        flat = [p for p in group["params"] if id(p) in exempt]
        rest = [p for p in group["params"] if id(p) not in exempt]
        result += [g for g in ({**group, "params": rest},
                               {**group, "params": flat, "weight_decay": 0.0}) if g["params"]]
    return result


def build_optimizer(model, config: dict, groups: list[dict] | None = None):
    """The optimizer ``config["optimizer"]`` names, over ``groups`` (default: the model's);
    with weight decay, norm weights and biases are left out of it unless ``decay_norm_bias``."""
    info = OPTIMIZERS[config["optimizer"]]
    options = {k: tuple(config[k]) if isinstance(config[k], list) else config[k]
               for k in info.keys}
    groups = param_groups(model, config["lr"]) if groups is None else groups
    if config.get("weight_decay") and not config.get("decay_norm_bias", True):
        groups = no_decay(groups, norms_and_biases(model))
    first = next((p for g in groups for p in g["params"]), None)
    if info.fused and first is not None and first.device.type == "cuda":
        options["fused"] = True
    try:
        return pkgutil.resolve_name(info.cls)(groups, lr=config["lr"], **options)
    except ValueError as exc:  # e.g. SGD's "Nesterov momentum requires a momentum..."
        raise CnnbenchError(f"optimizer {config['optimizer']}: {exc} (set it with "
                            f"--set KEY=VALUE; it takes {', '.join(info.keys)})") from None
