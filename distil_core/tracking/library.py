"""A tracker's library, imported when the tracker is built and never before.

``distil`` starts, lists plugins and trains without any tracking library installed; a run that
names one in ``train.report_to`` without its library stops before the model loads, with the
``pip install`` that adds it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from distil_core.errors import ConfigError

DISTRIBUTION = "distil-toolkit"
"""The name ``pip`` knows this package by (its extras hold each tracker's library)."""

OFFLINE_ENV = {
    "WANDB_SILENT": "true",
    "WANDB_DISABLE_GIT": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}
"""Set (unless the user set them) before a tracking library is imported: no usage reports, no
chatter on the console. Where each tracker writes is set by the tracker itself."""


def require(module: str, tracker: str, extra: str) -> Any:
    """``module`` imported, or a :class:`ConfigError` naming the tracker and the extra to install."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"train.report_to names {tracker!r}, but its library is not installed ({exc}). "
            f"Install it with: pip install '{DISTRIBUTION}[{extra}]'"
        ) from None


def run_name(run_dir: str) -> str:
    """A tracker's default run name: the run directory's own name (``distil-20250101-120000``)."""
    return os.path.basename(os.path.normpath(os.path.abspath(run_dir)))


__all__ = ["DISTRIBUTION", "OFFLINE_ENV", "require", "run_name"]
