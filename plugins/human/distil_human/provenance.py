"""What the expert was shown for each failed response, from the run's ``provenance.jsonl``.

The trainer writes one line per expert query: the (source, kind) of every feedback item that
built the context and, since the context text itself is logged, the messages the expert read.
A reviewer deciding whether a correction is needed wants exactly that text beside the
response: the automatic feedback may already say what a correction would say.
"""

from __future__ import annotations

import json
from typing import Any

from distil_core.run_files import log_exists, log_lines

PROVENANCE = "provenance.jsonl"


def read_provenance(run_dir: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(problem_id, response_hash) → the provenance records of that response, in step order.

    A run without the file (no expert queries were logged) gives an empty mapping; unreadable
    lines (a run killed mid-write) are skipped: provenance only adds to what a reviewer sees.
    """
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if not log_exists(run_dir, PROVENANCE):
        return found
    for _file, _number, line in log_lines(run_dir, PROVENANCE):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "problem_id" in record and "response_hash" in record:
            found.setdefault((str(record["problem_id"]), str(record["response_hash"])), []).append(record)
    return found
