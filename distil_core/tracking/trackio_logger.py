"""trackio: a local trackio store (SQLite) under ``<run_dir>/trackio``.

trackio reads its store's location (``TRACKIO_DIR``) once, when it is imported, into several of
its modules; :func:`point_store` sets it before the import and, for a later run in the same
process, moves those module-level paths to the new store. View a run with
``TRACKIO_DIR=<run_dir>/trackio trackio show --project distil``.

A resumed run continues the trackio run of the same name. What the interrupted session logged
after the checkpoint it resumes from is trained again, so those rows are deleted from the store
when the run starts again (:func:`drop_steps_after`): every step shows once, as in metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Optional

from distil_core.tracking.library import require, run_name
from distil_core.tracking.run_style import RunStyleLogger


def point_store(path: str) -> None:
    """Make ``path`` trackio's store, before or after trackio was imported."""
    os.environ["TRACKIO_DIR"] = path
    utils = sys.modules.get("trackio.utils")
    if utils is None:
        return
    moved = {"TRACKIO_DIR": Path(path), "MEDIA_DIR": Path(path) / "media", "ARTIFACTS_DIR": Path(path) / "artifacts"}
    old = {name: getattr(utils, name, None) for name in moved}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "trackio" or name.startswith("trackio.")):
            continue
        for attr, new in moved.items():
            if old[attr] is not None and getattr(module, attr, None) == old[attr]:
                setattr(module, attr, new)


def drop_steps_after(db_path: Path, run_id: str, run_name: str, step: int) -> int:
    """Delete the metric rows (tables included) a run logged past ``step``; how many went.

    trackio has no call for this, so it is one SQL statement on its store. A store that keys rows
    by ``run_id`` (trackio ≥ 0.20) is matched on the id, an older one on the name. A store whose
    ``metrics`` table is not the shape this expects is an error naming the file.
    """
    if not db_path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as conn, conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(metrics)")}
        if not columns:
            return 0
        key, value = ("run_id", run_id) if "run_id" in columns else ("run_name", run_name)
        if not {key, "step"} <= columns:
            raise RuntimeError(f"{db_path}: trackio's metrics table has no {key!r} and 'step' columns "
                               f"(it has {sorted(columns)}), so the steps logged after the checkpoint "
                               "cannot be dropped; they will show twice")
        return conn.execute(f"DELETE FROM metrics WHERE {key} = ? AND step > ?", (value, step)).rowcount


class TrackioLogger(RunStyleLogger):
    """A trackio run in a local store, in <run_dir>/trackio unless dir says otherwise."""

    def __init__(self, run_dir: str, project: str = "distil", name: Optional[str] = None,
                 dir: Optional[str] = None, space_id: Optional[str] = None):
        self.store = os.path.abspath(dir or os.path.join(run_dir, "trackio"))
        point_store(self.store)  # before trackio is first imported: it reads the location then
        self.trackio = self.module = require("trackio", "trackio", "trackio")
        self.project, self.name, self.space_id = project, name or run_name(run_dir), space_id
        self.run: Any = None
        self.resumed_at: Optional[int] = None

    def resume(self, step: int) -> None:
        """The run goes on from its checkpoint at ``step``: when it starts, the rows an earlier
        session logged past that step are dropped from the store."""
        if self.run is not None:
            raise RuntimeError("resume() comes before anything is logged")
        self.resumed_at = step

    def start(self, config: Optional[dict[str, Any]] = None) -> Any:
        if self.run is None:
            point_store(self.store)  # another run in this process may have moved it
            os.makedirs(self.store, exist_ok=True)
            with contextlib.redirect_stdout(io.StringIO()):  # its banner names a store it did not find
                self.run = self.trackio.init(project=self.project, name=self.name, config=config or {},
                                             space_id=self.space_id, resume="allow", embed=False,
                                             auto_log_cpu=False, auto_log_gpu=False)
            if self.resumed_at is not None:
                from trackio.sqlite_storage import SQLiteStorage

                db_path = SQLiteStorage.get_project_db_path(self.project)
                drop_steps_after(db_path, self.run.id, self.run.name, self.resumed_at)
        return self.run

    def finish(self, run: Any, failed: bool) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            run.finish()

__all__ = ["TrackioLogger", "drop_steps_after", "point_store"]
