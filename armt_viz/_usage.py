"""``UsageError``: a problem with what the user asked for (the CLI prints it as one line and exits 2)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["UsageError", "check_model_spec"]


class UsageError(ValueError):
    """Bad input a user can fix; the message says what was expected, what was received and how to fix it."""


def check_model_spec(spec) -> None:
    """``'demo'`` or a folder with a ``config.json`` (written by ``save_pretrained``), else ``UsageError``."""
    if not isinstance(spec, (str, Path)) or spec == "demo":
        return
    p = Path(spec)
    if not p.is_dir():
        raise UsageError(f"--model {str(spec)!r}: no such folder; expected 'demo' or a folder written by "
                         "ARMTModel.save_pretrained (with config.json)")
    if not ((p / "config.json").is_file() or (p / "checkpoint" / "config.json").is_file()):
        raise UsageError(f"--model {str(spec)!r}: the folder has no config.json; expected 'demo' or a folder "
                         "written by ARMTModel.save_pretrained")
