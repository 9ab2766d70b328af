"""Configuration keys: one :class:`Key` per key, declared beside the code that reads it.

A module that reads keys declares them in a list next to its code, e.g. ``training/optimizers.py``::

    KEYS = declare(Key("lr", 0.1, float, bounds="(0, inf)", help="learning rate"), ...)

:func:`declare` adds them to the trainer's table (a name declared twice is an error at import);
a task declares its own keys in its class (``Task.options``, a tuple of :class:`Key`).
``recipe.resolve`` gathers both, fills in the defaults and checks every value against its key,
so readers use ``config["lr"]`` and never repeat a default. To add a key: one ``Key(...)`` entry.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnnbench.errors import CnnbenchError, did_you_mean, shown


NO_LEGACY = object()  # Key.legacy: a run that predates the key behaved as its default says


@dataclass(frozen=True)
class Key:
    """One configuration key.

    ``type`` None accepts anything YAML can hold. ``bounds`` is an interval, ``"[1, inf)"`` or
    ``"(0, 1)"``, for a number or each item of a list; every float must also be finite.
    ``legacy``: the value that a run made before the key existed had in effect, where that is not
    ``default`` (a resumed or evaluated old run keeps its behaviour; ``recipe.stored``).
    """

    name: str
    default: Any
    type: type | None
    choices: tuple | None = None
    bounds: str | None = None
    help: str = ""
    legacy: Any = NO_LEGACY


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


# -- values: YAML as typed (recipes, --set, --model-arg) and checked against their key --

MAX_YAML_BYTES = 100_000  # a recipe file or one value; a real recipe holds under 2 KB
MAX_YAML_DEPTH = 32  # lists and mappings inside each other


class YamlRefused(yaml.YAMLError):
    """YAML that :class:`YamlLoader` will not build: aliases, or nesting past MAX_YAML_DEPTH."""


class YamlLoader(yaml.SafeLoader):
    """YAML's safe loader, reading ``1e-3`` as a float as YAML 1.2 does (PyYAML follows YAML 1.1,
    where a float needs a dot: ``1e-3`` would be the string '1e-3').

    Bounded: an alias (``*name``) is refused, so a value is never larger than its text (a few
    hundred bytes of nested aliases would expand to gigabytes when printed, copied or
    checked), and so is nesting deeper than ``MAX_YAML_DEPTH`` (the composer recurses)."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise YamlRefused(f"YAML aliases (*{self.peek_event().anchor}) are not read: write "
                              f"the value out")
        if self.depth >= MAX_YAML_DEPTH:
            raise YamlRefused(f"nested deeper than {MAX_YAML_DEPTH} levels")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"), list("-+.0123456789"))


def parse_value(text: str):
    """One value as typed: YAML (``1e-3`` a float, ``true`` a bool); a string if not YAML;
    nothing (``KEY=``) is None."""
    if not text.strip():
        return None
    if len(text) > MAX_YAML_BYTES:
        raise CnnbenchError(f"a value of {len(text):,} characters (at most {MAX_YAML_BYTES:,}): "
                            f"{shown(text)}")
    try:
        return yaml.load(text, Loader=YamlLoader)
    except YamlRefused as exc:
        raise CnnbenchError(f"{exc}, in {shown(text)}") from None
    except yaml.YAMLError:
        return text.strip()


def parse_assignments(items: list[str] | None, option: str, example: str,
                      read=None, form: str = "KEY=VALUE") -> dict:
    """``KEY=VALUE`` strings -> a dict of :func:`parse_value` values (or ``read(text)``; ``-``
    in a key reads ``_``); a key given twice is a one-line error, as the last would silently
    win."""
    result = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise CnnbenchError(f"bad {option} {item!r}: use {form}, e.g. {example}")
        if key in result:
            raise CnnbenchError(f"{option} gives {key} twice: give each key once")
        result[key] = (read or parse_value)(value)
    return result


class UniqueKeyLoader(YamlLoader):
    """YAML's safe loader (``1e-3`` a float), but a key given twice in one mapping is an error
    (PyYAML keeps the last one silently, so a recipe could say ``lr`` twice and mean either)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):  # SafeLoader's own check, with its message
                return super().construct_mapping(node, deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """A YAML file holding a mapping with text keys (a recipe, a sweep file, a run's
    config.yaml), read through :class:`UniqueKeyLoader`: at most ``MAX_YAML_BYTES`` (only that
    much is read), UTF-8 or UTF-16 (with its byte-order mark), not a pipe; anything else is one
    line."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):  # before open: it would block
            raise CnnbenchError(f"config {path} is a pipe or socket, not a file")
        with open(path, "rb") as f:  # /dev/null reads as an empty recipe, /dev/zero as too long
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise CnnbenchError(f"cannot read config {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise CnnbenchError(f"config {path} is larger than {MAX_YAML_BYTES:,} bytes: not a recipe")
    try:
        data = yaml.load(raw, Loader=UniqueKeyLoader)
    except yaml.reader.ReaderError:
        raise CnnbenchError(f"{path} is not UTF-8 or UTF-16 text (save it as UTF-8)") from None
    except YamlRefused as exc:
        raise CnnbenchError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or ""
        if problem.startswith("duplicate key"):
            raise CnnbenchError(f"{path} gives {problem[10:]} twice{where}") from None
        raise CnnbenchError(f"{path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CnnbenchError(f"{path} must hold a mapping of keys to values")
    bad = next((k for k in data if not isinstance(k, str)), None)
    if bad is not None:
        raise CnnbenchError(f"{path}: key {shown(bad)} is not a name")
    return data


def check(key: str, value, keys: dict[str, Key], source: str = "config"):
    """``value`` for ``key`` (one of ``keys``) converted to the key's type; a one-line error
    otherwise."""
    if not isinstance(key, str):
        raise CnnbenchError(f"key {shown(key)} in {source} is not a name")
    if key not in keys:
        raise CnnbenchError(f"unknown key {shown(key)} in {source}{did_you_mean(key, keys)}")
    spec = keys[key]
    kind, choices = spec.type, spec.choices
    if value is None and spec.default is not None and kind is not None:
        raise CnnbenchError(f"{key} must be {kind.__name__}, not null (in {source}; leave the "
                            f"key out for its default, {shown(spec.default)})")
    if value is None or kind is None:
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an integer past 1e308
            raise CnnbenchError(f"{key} must be a finite number, not {shown(value)} "
                                f"(in {source})") from None
    elif kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    elif kind is list and isinstance(value, tuple):
        value = list(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CnnbenchError(f"{key} must be {kind.__name__}, not {shown(value)} (in {source})")
    for item in value if isinstance(value, list) else [value]:
        if type(item) is int and abs(item) >= 2**63:  # torch and numpy take 64-bit integers
            raise CnnbenchError(f"{key} does not fit in 64 bits: {shown(value)} (in {source})")
    if choices and value not in choices:
        raise CnnbenchError(f"{key} must be one of {', '.join(choices)}, not {shown(value)}"
                            f"{did_you_mean(str(value), choices)}")
    if spec.bounds:
        _check_bounds(key, value, spec.default, spec.bounds, source)
    elif isinstance(value, float) and not math.isfinite(value):
        raise CnnbenchError(f"{key} must be a finite number, not {value} (in {source})")
    return value


def parse_interval(text: str) -> tuple[float, float, bool, bool]:
    """``"[0, 1)"`` -> (0.0, 1.0, low included, high included)."""
    lo, hi = (float(v) for v in text[1:-1].split(","))
    return lo, hi, text[0] == "[", text[-1] == "]"


def _check_bounds(key: str, value, default, interval: str, source: str) -> None:
    items = value if isinstance(value, list) else [value]
    if isinstance(default, list) and len(value) != len(default):
        raise CnnbenchError(f"{key} must hold {len(default)} numbers, not {shown(value)} "
                            f"(in {source})")
    lo, hi, lo_in, hi_in = parse_interval(interval)
    for item in items:
        ok = (isinstance(item, (int, float)) and not isinstance(item, bool)
              and math.isfinite(item) and (lo <= item if lo_in else lo < item)
              and (item <= hi if hi_in else item < hi))
        if not ok:
            lo_text = f"{lo:g}"
            rule = (f"{'>=' if lo_in else '>'} {lo_text}" if math.isinf(hi)
                    else f"in {interval}")
            each = " (each)" if isinstance(value, list) else ""
            raise CnnbenchError(f"{key} must be {rule}{each}, not {shown(value)} (in {source})")


def parse_set(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` strings -> a dict (values are YAML: 0.1, 1e-3, true, [0.9, 0.99])."""
    return parse_assignments(items, "--set", "label_smoothing=0.1")

