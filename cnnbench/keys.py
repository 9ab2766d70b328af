"""Configuration keys: one :class:`Key` per key, declared beside the code that reads it.

A module that reads keys declares them in a list next to its code, e.g. ``training/optimizers.py``::

    KEYS = declare(Key("lr", 0.1, float, bounds="(0, inf)", help="learning rate"), ...)

:func:`declare` adds them to the trainer's table (a name declared twice is an error at import);
a task declares its own keys in its class (``Task.options``, a tuple of :class:`Key`).
``config.resolve`` gathers both, fills in the defaults and checks every value against its key,
so readers use ``config["lr"]`` and never repeat a default. To add a key: one ``Key(...)`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    """One configuration key.

    ``type`` None accepts anything YAML can hold. ``bounds`` is an interval, ``"[1, inf)"`` or
    ``"(0, 1)"``, for a number or each item of a list; every float must also be finite.
    """

    name: str
    default: Any
    type: type | None
    choices: tuple | None = None
    bounds: str | None = None
    help: str = ""


TRAINER_KEYS: dict[str, Key] = {}  # every module's declarations, filled at their import


def table(keys) -> dict[str, Key]:
    """``keys`` by name; a name given twice is an error."""
    result: dict[str, Key] = {}
    for key in keys:
        if key.name in result:
            raise ValueError(f"configuration key {key.name!r} is declared twice")
        result[key.name] = key
    return result


def declare(*keys: Key) -> tuple[Key, ...]:
    """Add ``keys`` to the trainer's table; a name already there is an error."""
    for name in table(keys):
        if name in TRAINER_KEYS:
            raise ValueError(f"configuration key {name!r} is declared twice")
    TRAINER_KEYS.update(table(keys))
    return keys
