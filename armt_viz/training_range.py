"""A model's training range (card metadata) and the warning for runs that go past it.

A model folder may declare, in its ``task.json`` (or ``training.json``), the range of stream lengths it was
trained on and the range where its recall was measured good::

    "trained_range": {
        "max_segments_trained": 51,           # longest training sample, in segments
        "recall_exact_up_to_segments": 200,   # recall measured (near-)exact up to here, in segments (0: nowhere)
        "carried_memory": false,               # optional: trained with memory carried across windows
        "source": "MODEL_CARD.md, 'Long streams'"
    }

``trained_range(model)`` reads it (None when the model declares none). ``check_range(model, n_segments)`` returns
the warning text for a run of ``n_segments`` that goes past the measured range (or past the trained range when no
recall range is given), and ``warn_if_beyond(...)`` issues it as a ``BeyondTrainingRange`` warning. The recorder,
the CLI and the dashboard use these, so a run the model cannot handle never passes for a finding.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

__all__ = ["TrainedRange", "BeyondTrainingRange", "trained_range", "range_from_mapping", "check_range",
           "warn_if_beyond", "RANGE_FILES", "RANGE_KEY"]

RANGE_KEY = "trained_range"
RANGE_FILES = ("task.json", "training.json")


class BeyondTrainingRange(UserWarning):
    """A run is longer than the model's training range or its measured recall range."""


@dataclass(frozen=True)
class TrainedRange:
    """Card metadata of a model's range, in segments (None: not stated)."""

    max_segments_trained: int | None = None
    recall_exact_up_to_segments: int | None = None
    source: str = ""
    carried_memory: bool = False  # trained with memory carried across windows (truncated BPTT)

    @property
    def limit(self) -> int | None:
        """Segments past which a run is out of range: the measured recall range, else the trained window (not
        when the memory was carried across windows: then the window does not bound what the model saw)."""
        if self.recall_exact_up_to_segments is not None:
            return self.recall_exact_up_to_segments
        return None if self.carried_memory else self.max_segments_trained

    def to_dict(self) -> dict[str, Any]:
        return {"max_segments_trained": self.max_segments_trained,
                "recall_exact_up_to_segments": self.recall_exact_up_to_segments, "source": self.source,
                "carried_memory": self.carried_memory}


def range_from_mapping(meta: Mapping[str, Any] | None) -> TrainedRange | None:
    """``TrainedRange`` from a ``trained_range`` mapping (see the module docstring); None for None/empty.

    Raises:
        ValueError: a field that is not a positive integer.
    """
    if not meta:
        return None
    out = {}
    for name, low in (("max_segments_trained", 1), ("recall_exact_up_to_segments", 0)):
        v = meta.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise ValueError(f"trained_range.{name} must be an integer >= {low} (segments), got {v!r}; "
                             "fix the model's task.json")
        out[name] = v
    return TrainedRange(**out, source=str(meta.get("source", "")), carried_memory=bool(meta.get("carried_memory")))


def _folder(model_or_dir) -> Path | None:
    if isinstance(model_or_dir, (str, Path)):
        return Path(model_or_dir)
    d = getattr(model_or_dir, "source_dir", None) or getattr(model_or_dir, "source_path", None)
    return Path(d) if d else None


def trained_range(model_or_dir) -> TrainedRange | None:
    """The ``trained_range`` a model (its ``source_dir``) or model folder declares in task.json/training.json."""
    folder = _folder(model_or_dir)
    if folder is None:
        return None
    for name in RANGE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get(RANGE_KEY):
            try:
                return range_from_mapping(meta[RANGE_KEY])
            except ValueError as exc:  # bad card metadata must not stop a recording: say so, check nothing
                warnings.warn(f"{path}: {exc}", UserWarning, stacklevel=2)
                return None
    return None


def check_range(rng: TrainedRange | None, n_segments: int) -> str | None:
    """The warning for a run of ``n_segments`` segments beyond ``rng`` (None when within it or unknown)."""
    if rng is None or rng.limit is None or n_segments <= rng.limit:
        return None
    parts = []
    if rng.recall_exact_up_to_segments == 0:
        parts.append("recall was not measured good at any length")
    if rng.max_segments_trained and rng.carried_memory:
        parts.append(f"trained on {rng.max_segments_trained:,}-segment windows with the memory carried across "
                     "windows (truncated BPTT)")
    elif rng.max_segments_trained:
        parts.append(f"trained on at most {rng.max_segments_trained:,} segments")
    if rng.recall_exact_up_to_segments:
        parts.append(f"recall measured exact up to about {rng.recall_exact_up_to_segments:,}")
    return (f"this run has {n_segments:,} segments, beyond the model's range ({'; '.join(parts)}"
            + (f"; {rng.source}" if rng.source else "") + "): past it, recall degrades toward chance, so compare "
            "answer rates with their chance baseline before reading them as findings")


def warn_if_beyond(model_or_range, n_segments: int, *, stacklevel: int = 3) -> str | None:
    """Issue ``BeyondTrainingRange`` when a run of ``n_segments`` goes past the model's range; returns the text."""
    rng = model_or_range if isinstance(model_or_range, TrainedRange) or model_or_range is None \
        else trained_range(model_or_range)
    text = check_range(rng, n_segments)
    if text:
        warnings.warn(text, BeyondTrainingRange, stacklevel=stacklevel)
    return text
