"""A run directory as the reports read it: its per-step metrics, its evaluations, its method.

``distil plot`` and ``distil bench`` read run directories through here, so a path that is not a
run, or a damaged log line, is reported the same way everywhere: the path (``file:line`` for a
line) and what to do. Reading needs no torch and never writes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from distil_core.errors import ConfigError, DistilError
from distil_core.run_files import fits_a_float, step_records

__all__ = ["RUN_DIR_HOLDS", "RunLogs", "load_run", "read_jsonl", "read_summary", "run_method", "finite_number"]

RUN_DIR_HOLDS = ("metrics.jsonl (a row per training step), eval.jsonl (held-out evaluations), "
                 "config.yaml and summary.json")
"""What `distil train` writes into a run directory, as the errors here name it."""


@dataclass
class RunLogs:
    """One run's logs: ``metrics`` (a row per step) and ``evals`` (a row per evaluation), each
    row with its ``step``; ``method`` from summary.json or config.yaml (None when neither says)."""

    path: str
    method: Optional[str]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))


def load_run(path: str) -> RunLogs:
    """The logs of run directory ``path``; a ConfigError naming ``path`` when it is not one."""
    if not os.path.isdir(path):
        raise ConfigError(f"{path!r} is not a run directory (no such directory). A run directory, "
                          f"written by `distil train`, holds {RUN_DIR_HOLDS}.")
    metrics_path = os.path.join(path, "metrics.jsonl")
    if not os.path.lexists(metrics_path):
        raise ConfigError(f"{path!r} is not a run directory: it has no metrics.jsonl. A run directory, "
                          f"written by `distil train`, holds {RUN_DIR_HOLDS}.")
    eval_path = os.path.join(path, "eval.jsonl")
    # a log that is there but no file (a directory) is read, and named as what cannot be read
    evals = read_jsonl(eval_path) if os.path.lexists(eval_path) else []
    return RunLogs(path, run_method(path), read_jsonl(metrics_path), evals)


def read_jsonl(path: str, *, finished: bool = False) -> list[dict[str, Any]]:
    """The rows of a step log, each a JSON object with a numeric ``step``; a damaged line is a
    DistilError naming ``file:line`` (:func:`~distil_core.run_files.step_records`: an unfinished
    last line is let pass unless the run is ``finished``)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError as exc:  # a directory, a file no one may read: there are no lines to name
        raise DistilError(f"{path}: the log cannot be read ({exc.strerror or exc}); it should be the file "
                          "`distil train` wrote: restore it (or rerun the run) and try again.") from None
    numbered = ((path, number, line) for number, line in enumerate(lines, 1))
    return list(step_records(numbered, finished=finished,
                             damaged="the log is damaged: delete that line (or rerun the run) and try again."))


def read_summary(path: str, run_dir: str) -> dict[str, Any]:
    """A finished run's summary.json, checked for what the report reads (``before`` and ``after``,
    whose metric@k values are shares in [0, 1], ``wall_s``, and ``source``, ``model`` and
    ``model_sha256`` where present); a damaged one is a one-line error, since the run cannot be
    reused as it is."""
    problem = None
    try:
        with open(path, encoding="utf-8") as fh:
            summary = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        summary, problem = None, " ".join(str(exc).split())[:200]
    except RecursionError:  # json.load recurses once per [ or {: a few thousand take the interpreter down
        summary, problem = None, "JSON nested too deeply"
    if problem is None:
        if not isinstance(summary, dict):
            problem = f"a JSON {type(summary).__name__}, not an object"
        else:
            missing = [k for k in ("before", "after") if not isinstance(summary.get(k), dict)]
            if not finite_number(summary.get("wall_s")):
                missing.append("wall_s")
            if missing:
                problem = f"no valid {', '.join(missing)}"
            else:  # every metric is averaged and printed as a percentage: a string or NaN cannot be
                bad = next((f"{k}.{m} is {json.dumps(v)[:40]}" for k in ("before", "after")
                            for m, v in summary[k].items() if not finite_number(v)), None)
                if bad:
                    problem = f"{bad}, not a finite number"
                else:
                    problem = summary_shares_and_names(summary)
    if problem is not None:
        raise ConfigError(f"{path}: not a finished run's summary ({problem}); delete {run_dir} to run it again.")
    return summary


def summary_shares_and_names(summary: dict[str, Any]) -> Optional[str]:
    """What is wrong with a summary whose metrics are numbers, if anything: a metric@k outside
    [0, 1] (a share of problems: 62.5 would be reported as 6250 %), or a ``source``, ``model`` or
    ``model_sha256`` that is not a string."""
    share = next((f"{k}.{m} is {v:g}" for k in ("before", "after")
                  for m, v in summary[k].items() if "@" in m and not 0 <= v <= 1), None)
    if share:
        return f"{share}, not a share between 0 and 1"
    named = next((f"{k} is {json.dumps(summary[k])[:40]}" for k in ("source", "model", "model_sha256")
                  if summary.get(k) is not None and not isinstance(summary[k], str)), None)
    return f"{named}, not a string" if named else None


def run_method(path: str) -> Optional[str]:
    """The run's method, from summary.json (a finished run) or config.yaml (any run); a file that
    cannot be read or parsed (nested past the recursion limit included) only tells no method."""
    for name, parse in (("summary.json", json.loads), ("config.yaml", yaml.safe_load)):
        try:
            with open(os.path.join(path, name), encoding="utf-8") as fh:
                data = parse(fh.read())
        except (OSError, ValueError, RecursionError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and isinstance(data.get("method"), str):
            return data["method"]
    return None


def finite_number(value: Any) -> bool:
    """A number a report can average and print: an int or float (not a bool), neither NaN nor
    infinite, nor an integer past a float's range (JSON allows all of these)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not fits_a_float(value):
        return False
    return math.isfinite(value)
