"""Weights & Biases: an offline run under ``<run_dir>/wandb`` unless told otherwise.

Offline by default, so a run needs no account and no network; ``wandb sync <run_dir>/wandb/
offline-run-*`` uploads it later. ``mode: online`` (or ``WANDB_MODE``) logs live.

wandb's run metadata is off: it records the command line, where ``--set expert.options.api_key=…``
would pass a secret that the config given to every tracker has hidden. wandb takes steps in
order only (it drops a row at a step below one it logged, saying nothing under
``WANDB_SILENT``), so such a row is left out here with a warning naming the tracker and the step.

A resumed run logs on into the wandb run it started: its id is kept in the run directory's
``trackers.json`` and given back to ``wandb.init(id=…, resume="allow")``. Offline, each session is
its own ``offline-run-*`` folder with that id, and ``wandb sync`` uploads them into one run. wandb
cannot take back what the interrupted session logged past the checkpoint: those steps keep its
rows (wandb takes each step once).
"""

from __future__ import annotations

import os
import secrets
import warnings
from typing import Any, Optional

from distil_core.tracking.library import remember_id, remembered_id, require, run_name
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
        self.run_dir = run_dir
        self.run: Any = None
        self.step = 0  # the highest step logged
        self.resumed = False

    def resume(self, step: int) -> None:
        """The run goes on from its checkpoint at ``step``: it logs on into the wandb run it started."""
        if self.run is not None:
            raise RuntimeError("resume() comes before anything is logged")
        self.resumed = True

    def start(self, config: Optional[dict[str, Any]] = None) -> Any:
        if self.run is None:
            os.makedirs(self.init["dir"], exist_ok=True)
            settings = self.wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, save_code=False)
            run_id = remembered_id(self.run_dir, "wandb") if self.resumed else None
            if run_id is None:  # wandb's own ids are 8 characters of [0-9a-z]
                run_id = secrets.token_hex(4)
                remember_id(self.run_dir, "wandb", run_id)
            self.run = self.wandb.init(config=config or {}, settings=settings, id=run_id, resume="allow",
                                       **self.init)
        return self.run

    def finish(self, run: Any, failed: bool) -> None:
        run.finish(exit_code=1 if failed else 0)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.in_order(step, metrics):
            super().log_metrics(step, metrics)

    def log_table(self, step: int, rows: list[dict[str, Any]]) -> None:
        if self.in_order(step, ["rollouts"]):
            super().log_table(step, rows)

    def in_order(self, step: int, keys: Any) -> bool:
        """Whether wandb takes a row at ``step``; if not, a warning names what is left out."""
        if step < self.step:
            warnings.warn(f"tracker 'wandb' leaves out {', '.join(map(repr, keys))} at step {step}: wandb takes "
                          f"steps in order only, and step {self.step} is logged.", stacklevel=3)
            return False
        self.step = step
        return True

__all__ = ["WandbLogger"]
