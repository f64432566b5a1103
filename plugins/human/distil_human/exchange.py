"""JSONL import and export: one :class:`~distil_human.store.Correction` object per line.

Export writes the file atomically (:mod:`distil_core.io`), so a reader never sees half a
file. Import validates every line first and stores all of them in one transaction, or none:
a bad line is reported as ``FILE:LINE`` with the field at fault.
"""

from __future__ import annotations

import json
from typing import Optional

from pydantic import ValidationError

from distil_core import ConfigError
from distil_core.io import atomic_write_text

from .store import Correction, CorrectionStore, DuplicateIdError

MAX_REPORTED = 5


def export_jsonl(store: CorrectionStore, path: str, problem_id: Optional[str] = None) -> int:
    """Write every entry (of one problem), oldest first, to ``path``; returns how many."""
    entries = store.all(problem_id)
    text = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in entries)
    atomic_write_text(path, text)
    return len(entries)


def read_jsonl(path: str) -> list[tuple[int, Correction]]:
    """(line number, entry) for every non-blank line; ConfigError listing the bad lines."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file to import.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as a UTF-8 text file ({exc}).") from None
    entries: list[tuple[int, Correction]] = []
    problems: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(data, dict):
            problems.append(f"{where}: expected a JSON object, got {type(data).__name__}")
            continue
        try:
            entries.append((number, Correction.model_validate(data)))
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "(record)"
                shown = "" if err["type"] == "missing" else f" (got {_short(err.get('input'))})"
                problems.append(f"{where}: field {field!r}: {err['msg']}{shown}")
    if problems:
        more = f"; and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise ConfigError(
            f"{path} has invalid records, so nothing was imported: {'; '.join(problems[:MAX_REPORTED])}{more}. "
            "Fix these lines (the format is in docs/plugins/human.md) and import again."
        )
    return entries


def import_jsonl(store: CorrectionStore, path: str) -> tuple[int, int]:
    """Validate the whole file, then store it in one transaction: (added, already present)."""
    entries = read_jsonl(path)
    try:
        return store.add_many([e for _, e in entries])
    except DuplicateIdError as exc:
        raise ConfigError(
            f"{path}:{entries[exc.index][0]}: field 'id': {exc}, so nothing was imported. "
            "Remove the id from that line to import it as a new entry."
        ) from None


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
