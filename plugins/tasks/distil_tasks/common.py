"""What the three suites share: reading JSONL records, naming a bad one, and the split rule.

Every loader reads a JSONL file (one JSON object per line, blank lines skipped) and turns each
record into a :class:`~distil_core.types.Problem`. A record that does not fit its format stops
the load with a :class:`RecordError` naming ``file:line``, the field and what it should be.

Split rule for a loaded file: with ``test_path``, ``path`` is the train split and
``test_path`` the test split. Without it, records are ordered by the SHA-256 of their problem
id and the first ``round(n * test_fraction)`` of them (at least one when there are two or
more records and ``test_fraction > 0``) form the test split; the rest are the train split. The
rule depends only on the ids, not on the order of the lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Any, Callable, Iterator, Optional, Sequence

from distil_core import Problem


class RecordError(ValueError):
    """A record of a task file does not fit its format: ``file:line: field 'x': what is wrong``."""

    def __init__(self, path: str, line: int, field: Optional[str], message: str):
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}"
        super().__init__(f"{where}: field {field!r}: {message}" if field else f"{where}: {message}")


def read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line of ``path``; a bad line raises RecordError."""
    if not os.path.isfile(path):
        raise ValueError(f"task file {path!r} does not exist; give the path of a JSONL file")
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(path, number, None, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise RecordError(path, number, None, f"a record must be a JSON object, not {type(record).__name__}")
            yield number, record


class Record:
    """One record with its place in the file, and typed field access that names the field."""

    def __init__(self, path: str, line: int, data: dict[str, Any]):
        self.path, self.line, self.data = path, line, data

    def error(self, field: Optional[str], message: str) -> RecordError:
        return RecordError(self.path, self.line, field, message)

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def text(self, name: str, *, required: bool = True, default: Optional[str] = None) -> Optional[str]:
        """A string field; required ones must be present and not blank."""
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.error(name, "missing (a non-empty string is required)")
            return default
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, not {type(value).__name__}")
        if required and not value.strip():
            raise self.error(name, "is empty")
        return value

    def ident(self, *names: str) -> str:
        """The record's id from the first of ``names`` present (a string or an integer), else file:line."""
        for name in names:
            value = self.data.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
                raise self.error(name, "an id must be a non-empty string or an integer")
            return str(value)
        return f"{os.path.basename(self.path)}:{self.line}"

    def listing(self, name: str, *, required: bool = True) -> Optional[list[Any]]:
        """A list field, or a JSON string holding one (as some dataset dumps store it)."""
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.error(name, "missing (a list is required)")
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise self.error(name, "is a string but not a JSON list") from None
        if not isinstance(value, list):
            raise self.error(name, f"must be a list, not {type(value).__name__}")
        if required and not value:
            raise self.error(name, "is empty")
        return value


Converter = Callable[[Record], Problem]


def load_records(path: str, convert: Converter) -> list[Problem]:
    """Every record of ``path`` converted; ids must be unique within the file."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for line, data in read_jsonl(path):
        record = Record(path, line, data)
        problem = convert(record)
        if problem.id in seen:
            raise record.error(None, f"duplicate problem id {problem.id!r} (first at line {seen[problem.id]})")
        seen[problem.id] = line
        problem.metadata.setdefault("source", f"{path}:{line}")
        problems.append(problem)
    if not problems:
        raise ValueError(f"task file {path!r} holds no records")
    return problems


def split_by_id(problems: Sequence[Problem], test_fraction: float) -> dict[str, list[Problem]]:
    """The documented split rule: order by SHA-256 of the id, the first share is the test split."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1) (got {test_fraction})")
    ordered = sorted(problems, key=lambda p: hashlib.sha256(p.id.encode("utf-8")).hexdigest())
    n_test = round(len(ordered) * test_fraction)
    if test_fraction > 0 and len(ordered) >= 2:
        n_test = min(max(n_test, 1), len(ordered) - 1)
    test_ids = {p.id for p in ordered[:n_test]}
    return {
        "train": [p for p in problems if p.id not in test_ids],
        "test": [p for p in problems if p.id in test_ids],
    }


class SuiteTask:
    """A task that is procedural by default or loads ``path`` in one of its ``formats``.

    Subclasses set ``name``, ``formats`` (format name → record converter) and implement
    ``generate(split_sizes, rng) -> {"train": [...], "test": [...]}`` for the procedural problems.
    """

    name = "suite"
    formats: dict[str, Converter] = {}

    def __init__(
        self,
        path: Optional[str],
        format: Optional[str],
        test_path: Optional[str],
        test_fraction: float,
        train_size: int,
        test_size: int,
        seed: int,
    ):
        if train_size < 1 or test_size < 1:
            raise ValueError(f"{self.name}: train_size and test_size must be at least 1")
        self.seed = seed
        if path is None:
            if format is not None or test_path is not None:
                raise ValueError(f"{self.name}: format and test_path only apply with path (a JSONL file to load)")
            self.source = "procedural"
            self._splits = self.generate(train_size, test_size, random.Random(seed))
            return
        if format not in self.formats:
            raise ValueError(
                f"{self.name}: format must be one of {sorted(self.formats)} to load {path!r} (got {format!r})"
            )
        convert = self.formats[format]
        self.source = f"{format}:{path}"
        if test_path is not None:
            self._splits = {"train": load_records(path, convert), "test": load_records(test_path, convert)}
        else:
            self._splits = split_by_id(load_records(path, convert), test_fraction)

    def generate(self, train_size: int, test_size: int, rng: random.Random) -> dict[str, list[Problem]]:
        raise NotImplementedError

    def problems(self, split: str) -> list[Problem]:
        if split not in self._splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; use 'train' or 'test'")
        return list(self._splits[split])


def draw_unique(make: Callable[[random.Random], Problem], count: int, rng: random.Random, what: str) -> list[Problem]:
    """``count`` problems with distinct ids from ``make``; fails clearly when the space is too small."""
    out: dict[str, Problem] = {}
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 50 * count + 1000:
            raise ValueError(f"{what}: could only make {len(out)} distinct problems; ask for fewer")
        problem = make(rng)
        out.setdefault(problem.id, problem)
    return list(out.values())


def split_procedural(
    make: Callable[[random.Random], Problem], train_size: int, test_size: int, rng: random.Random, what: str
) -> dict[str, list[Problem]]:
    """Distinct problems; the first ``test_size`` drawn are held out, none of them is in train."""
    drawn = draw_unique(make, train_size + test_size, rng, what)
    return {"test": drawn[:test_size], "train": drawn[test_size:]}
