"""Strict JSON out: ``null`` for NaN and infinities, which ``json.dumps`` would write as the
non-standard ``NaN``/``Infinity`` that strict readers (``jq``, browsers, Go, Rust) reject."""

from __future__ import annotations

import json
import math


def finite(data):
    """``data`` with every non-finite float (also nested in dicts, lists, tuples) as None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def dumps(data, **kwargs) -> str:
    return json.dumps(finite(data), allow_nan=False, **kwargs)
