"""A tracker's library, imported when the tracker is built and never before.

``distil`` starts, lists plugins and trains without any tracking library installed; a run that
names one in ``train.report_to`` without its library stops before the model loads, with the
``pip install`` that adds it.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from typing import Any, Optional

from distil_core.errors import ConfigError
from distil_core.io import atomic_write_json
from distil_core.run_files import TRACKER_IDS

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


def remembered_id(run_dir: str, tracker: str) -> Optional[str]:
    """The run id ``tracker`` wrote into the run directory's ``trackers.json``, or None.

    A file that cannot be read, or holds no text id for the tracker, is a None with a warning
    that names it: the tracker then starts a new run, and training goes on."""
    path = os.path.join(run_dir, TRACKER_IDS)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            found = json.load(fh).get(tracker)
    except (OSError, ValueError, AttributeError, RecursionError) as exc:
        warnings.warn(f"tracker {tracker!r}: {path} cannot be read ({type(exc).__name__}); the resumed "
                      "session logs into a new run.", stacklevel=2)
        return None
    if found is None:
        return None
    if not isinstance(found, str) or not found or len(found) > 128:
        warnings.warn(f"tracker {tracker!r}: {path} holds {found!r:.80} as its run id, not an id; the resumed "
                      "session logs into a new run.", stacklevel=2)
        return None
    return found


def remember_id(run_dir: str, tracker: str, run_id: str) -> None:
    """Write ``run_id`` as ``tracker``'s into the run directory's ``trackers.json``, atomically,
    keeping the other trackers' ids."""
    path = os.path.join(run_dir, TRACKER_IDS)
    ids: dict[str, Any] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            loaded = json.load(fh)
        ids = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError, RecursionError):
        pass  # none yet, or unreadable: it is written anew
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_json(path, {**ids, tracker: run_id})


__all__ = ["DISTRIBUTION", "OFFLINE_ENV", "remember_id", "remembered_id", "require", "run_name"]
