"""What the three suites share: the fixed formats as presets of the one loading path, and the
procedural split.

A suite loads ``path`` in one of its ``formats``, each a :class:`~distil_tasks.fields.Preset`
(the keys the format keeps its parts under, and what refines the problem they give), through
:func:`~distil_tasks.loading.load_splits` — the same path the ``dataset`` task uses, so a
format's file may be JSONL, Parquet, CSV/JSON or a ``datasets`` directory. A record that does not
fit its format stops the load with a :class:`RecordError` naming ``file:line`` (or
``file row N``), the field and what it should be. The split rule is
:mod:`distil_tasks.loading`'s: ``test_path``, else a held-out share chosen by the ids.
"""

from __future__ import annotations

import random
from typing import Callable, Optional

from distil_core import Problem

from .fields import Preset
from .loading import load_records, load_splits, split_by_id
from .records import Record, RecordError

__all__ = ["Record", "RecordError", "Preset", "SuiteTask", "load_records", "split_by_id", "draw_unique", "split_procedural"]


class SuiteTask:
    """A task that is procedural by default or loads ``path`` in one of its ``formats``.

    Subclasses set ``name``, ``formats`` (format name → :class:`Preset`) and implement
    ``generate(split_sizes, rng) -> {"train": [...], "test": [...]}`` for the procedural problems.
    """

    name = "suite"
    formats: dict[str, Preset] = {}

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
                raise ValueError(f"{self.name}: format and test_path only apply with path (a file to load)")
            self.source = "procedural"
            self._splits = self.generate(train_size, test_size, random.Random(seed))
            return
        if format not in self.formats:
            raise ValueError(
                f"{self.name}: format must be one of {sorted(self.formats)} to load {path!r} (got {format!r})"
            )
        self.source = f"{format}:{path}"
        self._splits = load_splits(path, self.formats[format].convert, test_path=test_path, test_fraction=test_fraction)

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
