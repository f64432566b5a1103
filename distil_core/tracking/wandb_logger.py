"""Weights & Biases: an offline run under ``<run_dir>/wandb`` unless told otherwise.

Offline by default, so a run needs no account and no network; ``wandb sync <run_dir>/wandb/
offline-run-*`` uploads it later. ``mode: online`` (or ``WANDB_MODE``) logs live.

wandb's run metadata is off: it records the command line, where ``--set expert.options.api_key=…``
would pass a secret that the config given to every tracker has hidden. wandb takes steps in
order only (it drops a row at a step below one it logged, saying nothing under
``WANDB_SILENT``), so such a row is left out here with a warning naming the tracker and the step.

A resumed run logs on into the wandb run it started: the id wandb gave that run is kept in the
run directory's ``trackers.json`` (:mod:`~distil_core.tracking.run_ids`) and given back to
``wandb.init(id=…, resume="allow")``; a new run lets wandb choose its id. Offline, each session
is its own ``offline-run-*`` folder with that id, for ``wandb sync`` to upload to that run.
Online, wandb continues the run from the step after the last it holds: the resumed session's
rows up to that step (trained again from the checkpoint) are left out, with one warning.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional

from distil_core.tracking.library import require, run_name
from distil_core.tracking.run_ids import remember_id, remembered_id
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
        self.skip_below = 0  # a resumed online run takes steps from here on (said once)
        self.resumed_at: Optional[int] = None

    def resume(self, step: int) -> None:
        """The run goes on from its checkpoint at ``step``: it logs on into the wandb run it started."""
        if self.run is not None:
            raise RuntimeError("resume() comes before anything is logged")
        self.resumed_at = step

    def start(self, config: Optional[dict[str, Any]] = None) -> Any:
        if self.run is None:
            os.makedirs(self.init["dir"], exist_ok=True)
            settings = self.wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, save_code=False)
            run_id = remembered_id(self.run_dir, "wandb") if self.resumed_at is not None else None
            again = {"id": run_id, "resume": "allow"} if run_id is not None else {}
            self.run = self.wandb.init(config=config or {}, settings=settings, **again, **self.init)
            if run_id is None:
                remember_id(self.run_dir, "wandb", self.run.id)
            self.skip_below = int(getattr(self.run, "starting_step", 0) or 0)  # 0 offline and for a new run
            if self.resumed_at is not None and self.skip_below > self.resumed_at + 1:
                warnings.warn(f"tracker 'wandb' goes on from step {self.skip_below}, after the last step the "
                              f"interrupted session logged there: this session's rows for steps "
                              f"{self.resumed_at + 1}–{self.skip_below - 1} are left out of it.", stacklevel=3)
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
        """Whether wandb takes a row at ``step``; if not, a warning names what is left out (once
        for the steps a resumed online run already holds)."""
        self.start()  # which says where a resumed run goes on from
        if step < self.skip_below:
            return False
        if step < self.step:
            warnings.warn(f"tracker 'wandb' leaves out {', '.join(map(repr, keys))} at step {step}: wandb takes "
                          f"steps in order only, and step {self.step} is logged.", stacklevel=3)
            return False
        self.step = step
        return True

__all__ = ["WandbLogger"]
