"""Each tracker's own run id, kept in the run directory, so that a resumed run logs on into the
tracker run it started (wandb, MLflow) rather than opening a new one.

The ids live in ``trackers.json`` beside the run's logs (``--overwrite`` removes it with them).
The file is a convenience, never a reason to lose a tracker: one that cannot be read, or that
holds no usable id, means a new tracker run, with a warning naming the file; one that cannot be
written means the next resume opens a new run, with a warning too. A copy of a run directory
carries the file, so a copy resumed logs into the original's tracker runs: delete the copy's
``trackers.json`` to give it its own.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any, Optional

from distil_core.io import atomic_write_json
from distil_core.run_files import TRACKER_IDS

LONGEST_ID = 128
"""More characters than any tracker's run id has (wandb's 8, MLflow's 32)."""
ID = re.compile(rf"[A-Za-z0-9_-]{{1,{LONGEST_ID}}}")
"""What a run id is made of (wandb's and MLflow's): one that holds anything else (``a/b c``,
``../etc``) would be refused by its tracker on every resume, and the tracker lost each time;
read as none, a new run starts and its id replaces it."""


def remembered_id(run_dir: str, tracker: str) -> Optional[str]:
    """The run id ``tracker`` kept in the run directory's ``trackers.json``, or None: no file, or
    no id for the tracker in it (a run started before it had one). A file that cannot be read,
    or that holds something other than an id for the tracker, is a None with a warning naming
    the file."""
    path = os.path.join(run_dir, TRACKER_IDS)
    ids = read_ids(path, tracker)
    found = ids.get(tracker)
    if found is None:
        return None
    if not isinstance(found, str) or not ID.fullmatch(found):
        warnings.warn(f"tracker {tracker!r}: {path} holds {found!r:.80} as its run id, not an id; the resumed "
                      "session logs into a new run.", stacklevel=2)
        return None
    return found


def remember_id(run_dir: str, tracker: str, run_id: str) -> None:
    """Keep ``run_id`` as ``tracker``'s in ``trackers.json``, atomically, with the other trackers'
    ids. A write that fails (a full disk, a read-only directory) is a warning, not a lost tracker."""
    path = os.path.join(run_dir, TRACKER_IDS)
    with warnings.catch_warnings():  # a damaged file was named when read for the resume; it is written anew
        warnings.simplefilter("ignore")
        ids = read_ids(path, tracker)
    try:
        atomic_write_json(path, {**ids, tracker: run_id})
    except OSError as exc:
        warnings.warn(f"tracker {tracker!r}: its run id could not be written to {path} ({exc}); a resumed "
                      "session will log into a new run.", stacklevel=2)


def read_ids(path: str, tracker: str) -> dict[str, Any]:
    """The ids ``trackers.json`` at ``path`` holds; {} when it is missing, and {} with a warning
    (naming ``tracker``, which reads it) when it is not a JSON object."""
    try:
        with open(path, encoding="utf-8") as fh:
            ids = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        why = f"cannot be read ({type(exc).__name__})"
    else:
        if isinstance(ids, dict):
            return ids
        why = f"is not a JSON object (a {type(ids).__name__})"
    warnings.warn(f"tracker {tracker!r}: {path} {why}; the resumed session logs into a new run.", stacklevel=3)
    return {}


__all__ = ["remember_id", "remembered_id"]
