"""What wandb and trackio share: trackio copies wandb's API, so one class logs to both.

A run starts on first use (with the config, when that comes first), logs a dict of values at a
step, and logs a table built with the library's own ``Table``. Each tracker says how its run
starts (:meth:`RunStyleLogger.start`) and ends (:meth:`RunStyleLogger.finish`).
"""

from __future__ import annotations

from typing import Any, Optional


class RunStyleLogger:
    """A :class:`~distil_core.protocols.Logger` over a wandb-style library held in ``module``."""

    module: Any
    run: Any = None

    def start(self, config: Optional[dict[str, Any]] = None) -> Any:
        """The run, started with ``config`` when this is the first call."""
        raise NotImplementedError

    def finish(self, run: Any, failed: bool) -> None:
        raise NotImplementedError

    def log_config(self, config: dict[str, Any]) -> None:
        self.start(config)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.start().log(metrics, step=step)

    def log_table(self, step: int, rows: list[dict[str, Any]]) -> None:
        columns = list(rows[0])
        table = self.module.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        self.start().log({"rollouts": table}, step=step)

    def close(self, failed: bool = False) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            self.finish(run, failed)


__all__ = ["RunStyleLogger"]
