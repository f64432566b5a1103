"""MLflow: a run in a file store at ``<run_dir>/mlruns`` unless a tracking URI is given.

``mlflow ui --backend-store-uri <run_dir>/mlruns`` shows it. MLflow calls the file store
legacy and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set; for that local default the
variable is set (a database store needs SQLAlchemy, which ``mlflow-skinny`` leaves out).
Everything goes through one ``MlflowClient``: no process-wide active run, so several runs in one
process do not mix.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Optional

from distil_core.tracking import library
from distil_core.tracking.values import flat_config

NOT_IN_NAMES = re.compile(r"[^\w./\- :]")
"""What an MLflow metric or parameter name may not hold (``pass@1`` is logged as ``pass_at_1``)."""

BATCH = 100
"""Parameters per ``log_batch`` call (MLflow's limit)."""

VALUE_LIMIT = 500
"""Characters kept of a parameter's value (older MLflow servers take no more)."""


def metric_name(key: str) -> str:
    return NOT_IN_NAMES.sub("_", key.replace("@", "_at_"))


class MlflowLogger:
    """An MLflow run, in a file store under the run directory unless tracking_uri says otherwise."""

    def __init__(self, run_dir: str, tracking_uri: Optional[str] = None, experiment: str = "distil",
                 run_name: Optional[str] = None):
        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or Path(run_dir, "mlruns").absolute().as_uri()
        if self.uri.startswith("file:") or "://" not in self.uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow = library.require("mlflow", "mlflow", "mlflow")
        self.experiment, self.name = experiment, run_name or library.run_name(run_dir)
        self.client: Any = None
        self.run_id: Optional[str] = None

    def start(self) -> str:
        if self.run_id is None:
            self.client = self.mlflow.MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=self.name).info.run_id
        return self.run_id

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        run_id = self.start()
        params = [Param(metric_name(k), str(v)[:VALUE_LIMIT]) for k, v in flat_config(config).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(run_id, params=params[i:i + BATCH])
        self.client.log_dict(run_id, config, "config.json")

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        run_id = self.start()
        self.client.log_batch(run_id, metrics=[Metric(metric_name(k), v, now, step) for k, v in metrics.items()])

    def log_table(self, step: int, rows: list[dict[str, Any]]) -> None:
        """The table as MLflow writes one (``columns`` and ``data``), one JSON artifact per step."""
        columns = list(rows[0])
        table = {"columns": columns, "data": [[r.get(c) for c in columns] for r in rows]}
        self.client.log_dict(self.start(), table, f"rollouts/step_{step:06d}.json")

    def close(self, failed: bool = False) -> None:
        if self.run_id is not None:
            run_id, self.run_id = self.run_id, None
            self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


__all__ = ["MlflowLogger", "metric_name"]
