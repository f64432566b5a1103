"""MLflow: a run in a file store at ``<run_dir>/mlruns`` unless a tracking URI is given.

``mlflow ui --backend-store-uri <run_dir>/mlruns`` shows it. MLflow calls the file store
legacy and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set; for that local default the
variable is set (a database store needs SQLAlchemy, which ``mlflow-skinny`` leaves out).
Everything goes through one ``MlflowClient``: no process-wide active run, so several runs in one
process do not mix.

A resumed run logs on into the MLflow run it started: its id is kept in the run directory's
``trackers.json`` (:mod:`~distil_core.tracking.run_ids`). MLflow cannot delete a metric's points,
so the steps the interrupted session logged past the checkpoint hold two points each, the later
one the resumed session's; the run's ``distil.resumed_at`` tag names the steps it resumed at. A
parameter is logged once: MLflow refuses to change one, so a value that differs on resume (as
sent: cut to 500 characters) is left out with a warning (config.json, written again, holds the
resumed session's config). A remembered run the store no longer has, or has deleted, means a new
run, with a warning.
"""

from __future__ import annotations

import os
import posixpath
import re
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Optional

from distil_core.errors import DistilError
from distil_core.tracking import library
from distil_core.tracking.run_ids import remember_id, remembered_id
from distil_core.tracking.values import cut, flat_config

NOT_IN_NAMES = re.compile(r"[^\w./\- :]")
"""What an MLflow metric or parameter name may not hold (``pass@1`` is logged as ``pass_at_1``)."""

BATCH = 100
"""Parameters per ``log_batch`` call (MLflow's limit)."""

VALUE_LIMIT = 500
"""Characters kept of a parameter's value, ``…`` included where cut (older MLflow servers take no
more; config.json, an artifact of the run, holds the whole config)."""

NAME_LIMIT = 250
"""Characters MLflow takes in a metric or parameter name."""


def metric_name(key: str) -> str:
    return NOT_IN_NAMES.sub("_", key.replace("@", "_at_"))


def refusal(name: str) -> Optional[str]:
    """Why MLflow refuses ``name`` (as a metric or parameter name), or None. MLflow refuses the
    whole batch a name is in, so each such name is left out instead."""
    if not name:
        return "an empty name"
    if len(name) > NAME_LIMIT:
        return f"longer than MLflow's {NAME_LIMIT} characters"
    if posixpath.normpath(name) != name or name.startswith(("/", "..")):
        return "MLflow refuses a name that reads as another path (a leading '/', '..', '//')"
    return None


class MlflowLogger:
    """An MLflow run, in a file store under the run directory unless tracking_uri says otherwise."""

    def __init__(self, run_dir: str, tracking_uri: Optional[str] = None, experiment: str = "distil",
                 run_name: Optional[str] = None):
        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or Path(run_dir, "mlruns").absolute().as_uri()
        if self.uri.startswith("file:") or "://" not in self.uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow = library.require("mlflow", "mlflow", "mlflow")
        self.experiment, self.name = experiment, run_name or library.run_name(run_dir)
        self.run_dir = run_dir
        self.client: Any = None
        self.run_id: Optional[str] = None
        self.resumed_at: Optional[int] = None
        self.logged_params: dict[str, str] = {}  # what the run already holds, on resume
        self.names: dict[str, dict[str, str]] = {"metric": {}, "param": {}}  # MLflow's name: the key logged as it
        self.left_out: set[tuple[str, str]] = set()

    def resume(self, step: int) -> None:
        """The run goes on from its checkpoint at ``step``: it logs on into the MLflow run it started."""
        if self.run_id is not None:
            raise RuntimeError("resume() comes before anything is logged")
        self.resumed_at = step

    def start(self) -> str:
        if self.run_id is None:
            self.client = self.mlflow.MlflowClient(tracking_uri=self.uri)
            run_id = self.earlier_run() if self.resumed_at is not None else None
            found = self.client.get_experiment_by_name(self.experiment)
            self.check_artifacts_stay(found)
            if run_id is None:
                experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
                run_id = self.client.create_run(experiment_id, run_name=self.name).info.run_id
                remember_id(self.run_dir, "mlflow", run_id)
            self.run_id = run_id
        return self.run_id

    def check_artifacts_stay(self, experiment: Any) -> None:
        """Refuse a local store whose experiment keeps its artifacts outside the store: MLflow
        writes its absolute ``artifact_location`` into ``mlruns/``, so a run directory copied
        (or moved) from elsewhere would write config.json and the rollout tables into the
        original's folder, or make that folder again where it used to be."""
        store = _local_path(self.uri)
        where = _local_path(getattr(experiment, "artifact_location", None) or "") if experiment is not None else None
        if store is None or where is None:
            return
        store, where = os.path.realpath(store), os.path.realpath(where)
        if where != store and not where.startswith(store + os.sep):
            raise DistilError(
                f"{store}: this MLflow store's experiment {self.experiment!r} keeps its artifacts in {where}, outside "
                "it (the run directory was copied or moved from there), and logging would write into that folder; "
                "move mlruns/ aside to log to a new store here, or give tracker_options.mlflow.tracking_uri.")

    def earlier_run(self) -> Optional[str]:
        """The run this run directory started, marked running again, or None (with a warning
        where the store no longer has it, or has deleted it: a new run starts). Any other error
        of the store (unreachable, refused) is raised: it would fail a new run as well."""
        run_id = remembered_id(self.run_dir, "mlflow")
        if run_id is None:
            return None
        try:
            run = self.client.get_run(run_id)
        except self.mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is None or run.info.lifecycle_stage != "active":
            gone = "is not in" if run is None else "was deleted from"
            warnings.warn(f"tracker 'mlflow': the run {run_id!r} that trackers.json names {gone} {self.where()}; "
                          "the resumed session logs into a new run.", stacklevel=2)
            return None
        self.logged_params = dict(run.data.params)
        earlier = run.data.tags.get("distil.resumed_at")
        self.client.set_tag(run_id, "distil.resumed_at",
                            f"{earlier},{self.resumed_at}" if earlier else str(self.resumed_at))
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def where(self) -> str:
        """The tracking URI without its user and password (a database or server URI may hold them)."""
        parts = urllib.parse.urlsplit(self.uri)
        if parts.username is None and parts.password is None:
            return self.uri
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        run_id = self.start()
        params = [Param(name, cut(v, VALUE_LIMIT - 1)) for k, v in flat_config(config).items()
                  if (name := self.logged_name("param", k)) is not None]
        params = [p for p in params if self.new_param(p)]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(run_id, params=params[i:i + BATCH])
        self.client.log_dict(run_id, config, "config.json")

    def new_param(self, param: Any) -> bool:
        """Whether ``param`` is still to be logged: not where the run holds it already (a resumed
        run), nor, with a warning, where it holds another value, which MLflow refuses to change."""
        held = self.logged_params.get(param.key)
        if held is not None and held != param.value:
            warnings.warn(f"tracker 'mlflow' leaves out the param {cut(param.key, 80)!r}: the resumed run holds "
                          f"{cut(held, 80)!r} and MLflow does not change a param; config.json holds the new "
                          "value.", stacklevel=3)
        return held is None

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        run_id = self.start()
        self.client.log_batch(run_id, metrics=[Metric(name, v, now, step) for k, v in metrics.items()
                                               if (name := self.logged_name("metric", k)) is not None])

    def logged_name(self, kind: str, key: str) -> Optional[str]:
        """The MLflow name of the ``kind`` (metric or param) ``key``, or None where MLflow cannot
        hold it: a name it refuses, or one another key is already logged as (``pass@1`` and
        ``pass_at_1`` both read ``pass_at_1``; the first keeps it, rather than two series mixing
        in one). A key left out is named in one warning; the JSONL files hold it."""
        name = metric_name(key)
        why = refusal(name)
        if why is None and self.names[kind].setdefault(name, key) != key:
            why = f"it would be logged as {name!r}, which {self.names[kind][name]!r} already is"
        if why is None:
            return name
        if (kind, key) not in self.left_out:
            self.left_out.add((kind, key))
            warnings.warn(f"tracker 'mlflow' leaves out the {kind} {cut(key, 80)!r}: {why}.", stacklevel=2)
        return None

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


def _local_path(uri: str) -> Optional[str]:
    """The directory a ``file:`` URI or a plain path names; None for a server's URI."""
    if uri.startswith("file:"):
        return urllib.parse.unquote(urllib.parse.urlsplit(uri).path)
    return uri if uri and "://" not in uri else None
