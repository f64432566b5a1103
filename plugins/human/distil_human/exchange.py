"""JSONL import and export: one :class:`~distil_human.records.Correction` object per line.

Export writes the file atomically (:mod:`distil_core.io`), so a reader never sees half a
file. Import validates every line first and stores all of them in one transaction, or none:
a bad line is reported as ``FILE:LINE`` with the field at fault.

Lines are separated by ``\\n`` and nothing else. Export escapes every other character that
some reader treats as a line break (``\\r``, ``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, U+0085,
U+2028, U+2029), so that ``str.splitlines``, editors and ``wc -l`` all agree on where a record
ends; import splits on ``\\n`` only, so a file written by a tool that left those characters raw
still reads back as the records it holds. An export is therefore always a complete backup.
"""

from __future__ import annotations

import json
import re
import reprlib
import sys
from typing import Optional

from pydantic import ValidationError

from distil_core import ConfigError, DistilError
from distil_core.io import atomic_write_text

from .records import Correction, EntryError
from .store import CorrectionStore

MAX_REPORTED = 5
# json.dumps(ensure_ascii=False) escapes the C0 controls but leaves these raw
_RAW_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_RAW_BREAK = re.compile("[\x85\u2028\u2029]")
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]]')  # strings skipped whole, brackets counted
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 56, 56


def _dump_line(entry: Correction) -> str:
    """One record of the JSONL format, with no line-break character but its final ``\\n``."""
    text = json.dumps(entry.to_json(), ensure_ascii=False)
    return _RAW_BREAK.sub(lambda m: _RAW_BREAKS[m.group()], text) + "\n"


def dump_entries(entries: list[Correction]) -> str:
    """The JSONL text of ``entries``: what an export file holds (the desk's export button too)."""
    return "".join(_dump_line(e) for e in entries)


def export_jsonl(store: CorrectionStore, path: str, problem_id: Optional[str] = None) -> int:
    """Write every entry (of one problem), oldest first, to ``path`` (``-``: standard output);
    returns how many."""
    entries = store.all(problem_id)
    if path == "-":
        sys.stdout.write(dump_entries(entries))
        sys.stdout.flush()
        return len(entries)
    try:
        atomic_write_text(path, dump_entries(entries))
    except OSError as exc:
        raise DistilError(f"Cannot write {path} ({exc}); it was left as it was. Free some space or choose "
                          "another FILE, and export again.") from None
    return len(entries)


def read_jsonl(path: str) -> list[tuple[int, Correction]]:
    """(line number, entry) for every non-blank line; ConfigError listing the bad lines."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            lines = fh.read().split("\n")
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
        except RecursionError:
            problems.append(f"{where}: {_too_deep(line)}")
            continue
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            problems.append(f"{where}: not readable JSON ({exc})")
            continue
        if not isinstance(data, dict):
            problems.append(f"{where}: expected a JSON object, got {type(data).__name__}")
            continue
        try:
            entries.append((number, Correction.entered(data)))
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
    return store_entries(store, path, read_jsonl(path))


def store_entries(store: CorrectionStore, path: str, entries: list[tuple[int, Correction]]) -> tuple[int, int]:
    """Add what :func:`read_jsonl` returned in one transaction; a refused entry names its line."""
    try:
        return store.add_many([e for _, e in entries])
    except EntryError as exc:
        fix = ("Remove the id from that line to import it as a new entry." if exc.field == "id"
               else "Fix that line and import again.")
        raise ConfigError(
            f"{path}:{entries[exc.index][0]}: field {exc.field!r}: {exc}, so nothing was imported. {fix}"
        ) from None


def _too_deep(line: str) -> str:
    """Which top-level field of ``line`` nests too deeply for the JSON reader, found by counting
    brackets outside strings (the reader itself gave up with a RecursionError)."""
    depth, key, last_string = 0, None, None
    for match in _TOKEN.finditer(line):
        token = match.group()
        if token[0] == '"':
            last_string = token
        elif token in "{[":
            if depth == 1:
                key = last_string
            depth += 1
            if depth > 100:
                break
        else:
            depth -= 1
    field = f"field {_decode(key)!r}" if key else "the record"
    return f"{field}: nested too deeply to read (hundreds of levels); a verdict holds score, passed and answer"


def _decode(token: str) -> str:
    try:
        return json.loads(token)
    except ValueError:
        return token


def _short(value: object) -> str:
    return _SHORT.repr(value)
