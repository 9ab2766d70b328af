"""The field algebra: per spatial axis and per unit, the interval of input pixels a unit reads.

``lo``/``hi`` extend into the padding as in Araujo, Norris and Sim, "Computing Receptive Fields
of Convolutional Neural Networks" (Distill, 2019); ``real_lo``/``real_hi`` keep only pixels that
exist. From these come the reported size (largest unit), the effective stride (jump) and the
start (centre of the first unit's region, in input pixels; may be negative with padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

INF = math.inf


@dataclass(frozen=True, eq=False)
class Axis:
    """Per unit along one spatial axis: the input pixels it reads, unclipped and real."""

    lo: np.ndarray
    hi: np.ndarray
    real_lo: np.ndarray  # +inf / -inf for a unit that reads no real pixel (padding)
    real_hi: np.ndarray
    jump: float  # effective stride: input pixels between neighbouring units

    @classmethod
    def input(cls, n: int) -> Axis:
        pos = np.arange(n, dtype=np.float64)
        return cls(pos, pos, pos, pos, 1.0)

    @property
    def n(self) -> int:
        return len(self.lo)

    def take(self, idx: np.ndarray, valid: np.ndarray, jump: float) -> Axis:
        """Output unit ``o`` reads input units ``idx[o, valid[o]]``; outside 0..n-1 is padding.

        Padding units extend the field at the edge's stride (Araujo et al.'s unclipped field)
        but read no real pixel.
        """
        n = self.n
        idx = np.asarray(idx, dtype=np.int64).reshape(len(idx), -1)
        valid = np.broadcast_to(np.asarray(valid, dtype=bool), idx.shape)
        inside = valid & (idx >= 0) & (idx < n)
        clamped = np.clip(idx, 0, n - 1)
        beyond = (np.minimum(idx, 0) + np.maximum(idx - (n - 1), 0)) * self.jump
        lo = np.where(valid, self.lo[clamped] + beyond, INF).min(1)
        hi = np.where(valid, self.hi[clamped] + beyond, -INF).max(1)
        real_lo = np.where(inside, self.real_lo[clamped], INF).min(1)
        real_hi = np.where(inside, self.real_hi[clamped], -INF).max(1)
        return Axis(lo, hi, real_lo, real_hi, jump)

    def window(self, n_out: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> Axis:
        """Convolution or pooling: unit ``o`` reads ``o*stride - padding + t*dilation``."""
        idx = (np.arange(n_out)[:, None] * stride - padding
               + np.arange(kernel)[None, :] * dilation)
        return self.take(idx, True, self.jump * stride)

    def whole(self) -> Axis:
        """One unit reading every unit: global pooling, or a dense layer."""
        return self.take(np.arange(self.n)[None, :], True, self.jump * self.n)

    def size(self) -> float:
        ok = np.isfinite(self.lo) & np.isfinite(self.hi)
        return float((self.hi[ok] - self.lo[ok] + 1).max()) if ok.any() else 0.0

    def start(self) -> float:
        return float((self.lo[0] + self.hi[0]) / 2)

    def centres(self) -> np.ndarray:
        return (self.lo + self.hi) / 2


def join_axes(axes: list[Axis], n: int) -> Axis:
    """Where paths meet a unit reads what any path reads (a path of size 1 is broadcast)."""
    pick = [(a, np.zeros(n, dtype=np.int64) if a.n == 1 and n != 1 else np.arange(n))
            for a in axes]
    return Axis(np.min([a.lo[i] for a, i in pick], axis=0), np.max([a.hi[i] for a, i in pick], axis=0),
                np.min([a.real_lo[i] for a, i in pick], axis=0),
                np.max([a.real_hi[i] for a, i in pick], axis=0),
                max(a.jump for a in axes if a.n == n or n == 1))


def concat_axes(parts: list[Axis]) -> Axis:
    """Maps placed one after another along an axis (concatenation along a spatial axis)."""
    return Axis(*(np.concatenate([getattr(a, attr) for a in parts])
                  for attr in ("lo", "hi", "real_lo", "real_hi")), parts[0].jump)


@dataclass(frozen=True, eq=False)
class Field:
    """The field of a tensor's units: ``axes`` (h, w) sit at tensor dims ``dims``.

    ``dims`` is None once the spatial layout has been flattened away: each element still reads
    one unit's field, and a dense layer after it reads all of them.
    """

    axes: tuple[Axis, Axis]
    dims: tuple[int, int] | None
    flags: frozenset = frozenset()

    @classmethod
    def input(cls, height: int, width: int) -> Field:
        """The field of an NCHW input: every pixel reads itself."""
        return cls((Axis.input(height), Axis.input(width)), (2, 3))

    def moved(self, dims) -> Field:
        return replace(self, dims=None if dims is None else tuple(dims))

    def with_axes(self, axes, dims=None, flags=()) -> Field:
        return Field(tuple(axes), self.dims if dims is None else tuple(dims),
                     self.flags | frozenset(flags))

    def summary(self) -> dict:
        h, w = self.axes
        return {"receptive_field": [num(h.size()), num(w.size())],
                "stride": [num(h.jump), num(w.jump)],
                "start": [num(h.start()), num(w.start())]}

    def union(self) -> tuple[Axis, Axis]:
        return tuple(a.whole() for a in self.axes)

    def centre_unit(self) -> tuple[int, int]:
        """The middle unit of the map (the lower one of an even side)."""
        return tuple((a.n - 1) // 2 for a in self.axes)

    def centred_unit(self, size) -> tuple[int, int]:
        """The unit whose field is centred on the input ``(C, H, W)``, or the nearest to it
        (the lower one of two as near)."""
        unit = []
        for a, n in zip(self.axes, size[1:]):
            off = np.abs(a.centres() - (n - 1) / 2)
            unit.append(int(np.argmin(np.where(np.isfinite(off), off, INF))))
        return tuple(unit)

    def seen_box(self, size) -> list:
        """The input pixels (clipped) the centre unit reads; all units' for a flattened tensor.

        ``size`` is the input's ``(C, H, W)``.
        """
        axes = self.axes if self.dims is not None else self.union()
        unit = self.centre_unit() if self.dims is not None else (0, 0)
        return [clip(a.lo[u], a.hi[u], n) for a, u, n in zip(axes, unit, size[1:])]


def num(x: float):
    """An integer where the value is one, else 4 decimals (what the tables and JSON show)."""
    return int(round(x)) if abs(x - round(x)) < 1e-9 else round(float(x), 4)


def clip(lo: float, hi: float, n: int) -> list[int] | None:
    """``[lo, hi]`` clipped to pixels ``0..n-1``; None where nothing is left."""
    a, b = max(math.ceil(lo - 1e-9), 0), min(math.floor(hi + 1e-9), n - 1)
    return [a, b] if a <= b else None
