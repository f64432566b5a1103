"""Weights & Biases: an offline run under ``<run_dir>/wandb`` unless told otherwise.

Offline by default, so a run needs no account and no network; ``wandb sync <run_dir>/wandb/
offline-run-*`` uploads it later. ``mode: online`` (or ``WANDB_MODE``) logs live.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from distil_core.tracking.library import require, run_name
from distil_core.tracking.run_style import RunStyleLogger


class WandbLogger(RunStyleLogger):
    """A Weights & Biases run, offline and under the run directory by default."""

    def __init__(self, run_dir: str, project: str = "distil", name: Optional[str] = None,
                 mode: Optional[str] = None, dir: Optional[str] = None, entity: Optional[str] = None,
                 group: Optional[str] = None, tags: Optional[list[str]] = None):
        self.wandb = self.module = require("wandb", "wandb", "wandb")
        self.init = {
            "project": project, "name": name or run_name(run_dir), "entity": entity, "group": group,
            "tags": tags, "mode": mode or os.environ.get("WANDB_MODE") or "offline", "dir": dir or run_dir,
        }
        self.run: Any = None

    def start(self, config: Optional[dict[str, Any]] = None) -> Any:
        if self.run is None:
            os.makedirs(self.init["dir"], exist_ok=True)
            settings = self.wandb.Settings(console="off", x_disable_stats=True, save_code=False)
            self.run = self.wandb.init(config=config or {}, settings=settings, **self.init)
        return self.run

    def finish(self, run: Any, failed: bool) -> None:
        run.finish(exit_code=1 if failed else 0)

__all__ = ["WandbLogger"]
