"""The finished runs of a bench: whether a run directory holds the run a config asks for, and
what the reports read of it.

A bench continues where it stopped by reusing every finished run whose config trained as the
one asked for (:func:`~distil_core.config.result_changes`: how a run was logged, saved or
tracked may differ), and refuses one that trained otherwise rather than mix it into a table.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from distil_core.cli.runlogs import finite_number, read_jsonl, read_summary
from distil_core.config import ABSENT, RunConfig, result_changes, saved_config
from distil_core.errors import ConfigError, DistilError
from distil_core.io import weights_fingerprint

__all__ = ["config_value", "finished_run", "run_row"]


def config_value(value: Any) -> str:
    """A config value as a message quotes it: JSON, cut; a key not set says so."""
    return repr(value) if value is ABSENT else json.dumps(value)[:120]


def finished_run(run_dir: str, config: RunConfig, metric: str) -> tuple[Optional[dict[str, Any]], list[str]]:
    """The summary of the finished run in ``run_dir`` that ``config`` asks for (None: none
    there yet), and the keys it was logged, saved or tracked with otherwise (as ``key=value``:
    a reused run gets none of what they would have written). A finished run that trained
    otherwise, or cannot be read, is a ConfigError."""
    summary_path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(summary_path):
        return None, []
    try:
        found = saved_config(run_dir)
    except ConfigError:
        found = None  # unreadable, or written by an incompatible version: not the same run
    if found is None:
        raise ConfigError(f"{run_dir} holds a finished run with no config.yaml this version can read; give "
                          "distil bench another --output-dir, or delete that directory to run it again.")
    changes = result_changes(found, config)  # logging, saving and trackers may differ: the same run
    if changes:
        listed = "; ".join(f"{key}: {config_value(old)} → {config_value(new)}" for key, old, new in changes[:8])
        more = f" (and {len(changes) - 8} more)" if len(changes) > 8 else ""
        raise ConfigError(f"{run_dir} holds a finished run with a different config ({listed}{more}); give distil "
                          "bench another --output-dir, or delete that directory to run it again.")
    summary = read_summary(summary_path, run_dir)
    for key, wanted in (("method", config.method), ("seed", config.seed)):
        if key in summary and summary[key] != wanted:  # a summary copied in from another run
            raise ConfigError(f"{summary_path}: the summary of a run with {key} {summary[key]!r}, in the folder of "
                              f"one with {wanted!r}; delete {run_dir} to run it again.")
    missing = [part for part in ("before", "after") if metric not in summary[part]]
    if missing:
        raise ConfigError(f"{summary_path}: not a finished run's summary ({' and '.join(missing)} lack the plotted "
                          f"{metric}); delete {run_dir} to run it again.")
    unlike = [f"{key}={config_value(wanted)}" for key, _old, wanted in result_changes(found, config, watching=True)]
    return summary, unlike

def run_row(suite: str, method: str, seed: int, run_dir: str, summary: dict[str, Any]) -> dict[str, Any]:
    eval_path, metrics_path = os.path.join(run_dir, "eval.jsonl"), os.path.join(run_dir, "metrics.jsonl")
    # only the values a report can average: a hand-edited log's string, null or NaN is left out,
    # as `distil plot` leaves out what is not a number (summary.json's metrics are checked whole)
    evals = read_jsonl(eval_path, finished=True) if os.path.exists(eval_path) else []
    if evals and isinstance(summary.get("steps"), int) and evals[-1]["step"] != summary["steps"]:
        raise DistilError(f"{eval_path}: the log ends at step {evals[-1]['step']:g}, before the final evaluation "
                          f"(step {summary['steps']}) that summary.json holds; delete {run_dir} to run it again.")
    curve = [{"step": rec["step"], **{k: v for k, v in rec.items() if "@" in k and finite_number(v)}} for rec in evals]
    metrics = read_jsonl(metrics_path, finished=True) if os.path.exists(metrics_path) else []
    lengths = [[rec["step"], rec["response_tokens"]] for rec in metrics if finite_number(rec.get("response_tokens"))]
    reference = summary.get("reference_tokens")
    model = summary.get("model")
    sha = summary["model_sha256"] if "model_sha256" in summary else (
        weights_fingerprint(model) if isinstance(model, str) else None)  # a summary without the field
    return {"suite": suite, "method": method, "seed": seed, "run_dir": run_dir, "wall_s": summary["wall_s"],
            "before": summary["before"], "after": summary["after"], "curve": curve, "response_tokens": lengths,
            "reference_tokens": reference if finite_number(reference) else None, "source": summary.get("source"),
            "model": os.path.basename(model.rstrip("/")) if isinstance(model, str) else None, "model_sha256": sha}
