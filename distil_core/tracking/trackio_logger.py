"""trackio: a local trackio store (SQLite) under ``<run_dir>/trackio``.

trackio reads its store's location (``TRACKIO_DIR``) once, when it is imported, into several of
its modules; :func:`point_store` sets it before the import and, for a later run in the same
process, moves those module-level paths to the new store. View a run with
``TRACKIO_DIR=<run_dir>/trackio trackio show --project distil``.
"""

from __future__ import annotations

import contextlib
import io
import os
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


class TrackioLogger(RunStyleLogger):
    """A trackio run in a local store, in <run_dir>/trackio unless dir says otherwise."""

    def __init__(self, run_dir: str, project: str = "distil", name: Optional[str] = None,
                 dir: Optional[str] = None, space_id: Optional[str] = None):
        self.store = os.path.abspath(dir or os.path.join(run_dir, "trackio"))
        point_store(self.store)  # before trackio is first imported: it reads the location then
        self.trackio = self.module = require("trackio", "trackio", "trackio")
        self.project, self.name, self.space_id = project, name or run_name(run_dir), space_id
        self.run: Any = None

    def start(self, config: Optional[dict[str, Any]] = None) -> Any:
        if self.run is None:
            point_store(self.store)  # another run in this process may have moved it
            os.makedirs(self.store, exist_ok=True)
            with contextlib.redirect_stdout(io.StringIO()):  # its banner names a store it did not find
                self.run = self.trackio.init(project=self.project, name=self.name, config=config or {},
                                             space_id=self.space_id, resume="allow", embed=False,
                                             auto_log_cpu=False, auto_log_gpu=False)
        return self.run

    def finish(self, run: Any, failed: bool) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            run.finish()

__all__ = ["TrackioLogger", "point_store"]
