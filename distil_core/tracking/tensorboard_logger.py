"""TensorBoard: event files under ``<run_dir>/tensorboard`` (``tensorboard --logdir`` reads them).

Written with torch's ``SummaryWriter`` (torch is already here; the ``tensorboard`` package
provides the format). The config becomes TensorBoard hyperparameters (the HParams tab) and a
text entry; the rollout table a Markdown table in the Text tab.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from distil_core.tracking.library import require
from distil_core.tracking.values import flat_config


class TensorBoardLogger:
    """TensorBoard event files, in <run_dir>/tensorboard unless log_dir says otherwise."""

    def __init__(self, run_dir: str, log_dir: Optional[str] = None):
        self.tb = require("torch.utils.tensorboard", "tensorboard", "tensorboard")
        self.log_dir = log_dir or os.path.join(run_dir, "tensorboard")
        self._writer: Any = None
        self.purge_step: Optional[int] = None

    @property
    def writer(self) -> Any:
        """Opened on first use: a trainer built but never run leaves no event file open."""
        if self._writer is None:
            self._writer = self.tb.SummaryWriter(log_dir=self.log_dir, purge_step=self.purge_step)
        return self._writer

    def resume(self, step: int) -> None:
        """The run goes on from its checkpoint at ``step``: the events an earlier session wrote
        past it are hidden (TensorBoard's ``purge_step``), so every step shows once."""
        if self._writer is not None:
            raise RuntimeError("resume() comes before anything is logged")
        self.purge_step = step + 1

    def log_config(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(flat_config(config), {}):  # experiment, session start, session end
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_table(self, step: int, rows: list[dict[str, Any]]) -> None:
        self.writer.add_text("rollouts", markdown_table(rows), step)

    def close(self, failed: bool = False) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a Markdown table (TensorBoard's Text tab renders it); cells on one line each."""
    columns = list(rows[0])

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


__all__ = ["TensorBoardLogger", "markdown_table"]
