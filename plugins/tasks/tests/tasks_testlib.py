"""Helpers shared by the task-suite tests."""

from __future__ import annotations

import json
import os
from typing import Any

from distil_core.testing import rollout  # noqa: F401 (the tests import it from here)

from distil_tasks import DATA_DIR


def fixture(name: str) -> str:
    return os.path.join(DATA_DIR, f"{name}.jsonl")


def write_jsonl(path, records: list[Any]) -> str:
    """Each record on its own line; a str is written as is (for broken lines)."""
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return str(path)


def fixture_records(name: str) -> list[dict[str, Any]]:
    with open(fixture(name), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
