"""What the expert was shown for each failed response, from the run's ``provenance.jsonl``.

The trainer writes one line per expert query: the (source, kind) of every feedback item that
built the context and, since the context text itself is logged, the messages the expert read.
A reviewer deciding whether a correction is needed wants exactly that text beside the
response: the automatic feedback may already say what a correction would say.
"""

from __future__ import annotations

from typing import Any, Optional

from distil_core.run_files import log_exists, log_lines

from .text import json_line

PROVENANCE = "provenance.jsonl"


def read_provenance(run_dir: str, skipped: Optional[list[str]] = None) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(problem_id, response_hash) → the provenance records of that response, in step order.

    A run without the file (no expert queries were logged) gives an empty mapping; unreadable
    lines (a run killed mid-write, a record of the wrong shape) are left out, each noted in
    ``skipped`` as ``file:line: what is wrong``: provenance only adds to what a reviewer sees.
    Lone surrogates in its text read as U+FFFD (see :mod:`distil_human.text`).
    """
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if not log_exists(run_dir, PROVENANCE):
        return found
    for path, number, line in log_lines(run_dir, PROVENANCE):
        if not line.strip():
            continue
        try:
            record = json_line(line, record_problem)
        except ValueError as exc:
            if skipped is not None:
                skipped.append(f"{path}:{number}: {exc}")
            continue
        found.setdefault((str(record["problem_id"]), str(record["response_hash"])), []).append(record)
    return found


def record_problem(record: Any) -> Optional[str]:
    """What keeps a provenance line from the desk, or None: the desk lists its ``feedback`` and
    its ``context`` messages, so those must be lists of objects."""
    if not isinstance(record, dict):
        return f"not a provenance record (a JSON {type(record).__name__}, not an object)"
    missing = [k for k in ("problem_id", "response_hash") if k not in record]
    if missing:
        return f"not a provenance record (no {', '.join(repr(k) for k in missing)})"
    for key in ("feedback", "context"):
        value = record.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            return f"field {key!r} is not a list of objects"
    return None
