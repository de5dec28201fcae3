"""Small helpers shared by the task generators: argument checks and seed resolution (no paper section)."""

from __future__ import annotations

import numbers

import numpy as np


def check_int(name: str, value: object, *, low: int, high: int | None = None, where: str) -> int:
    """Return ``value`` as int if it is an integer in ``[low, high]``; otherwise raise with a fix hint."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, received {value!r} ({type(value).__name__})")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{where}: {name} must be {bounds}, received {value!r}")
    return value


def resolve_seed(seed: int | None, where: str) -> int:
    """The seed to record: ``seed`` itself, or a fresh 32-bit seed from OS entropy when ``None``."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    return check_int("seed", seed, low=0, where=where)
