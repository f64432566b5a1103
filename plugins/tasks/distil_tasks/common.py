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
import re
from typing import Any, Callable, Optional, Sequence

from distil_core import Problem

from .fields import Preset
from .loading import load_records, load_splits, split_by_id
from .records import Record, RecordError

__all__ = ["Record", "RecordError", "Preset", "SuiteTask", "load_records", "split_by_id", "draw_unique", "split_procedural",
           "whole", "flag", "choices", "last_answer_tag"]


# -- options, checked when a component is built ----------------------------------------------------
# A config's value reaches the constructor as YAML wrote it: ``"2"``, ``"false"``, ``null``. Unchecked,
# it fails at the first comparison (mid-run for a verifier) without naming the option, or, for
# ``"false"``, silently counts as true.


def _got(value: Any) -> str:
    hint = ": write it without quotes" if isinstance(value, str) else ""
    return f"(got {value!r}, a {type(value).__name__}{hint})"


def whole(owner: str, name: str, value: Any, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """An integer option in ``[low, high]`` (either end open when None); ``true`` (an int to
    Python) is refused."""
    if (isinstance(value, bool) or not isinstance(value, int)
            or (low is not None and value < low) or (high is not None and value > high)):
        bounds = (f" between {low} and {high}" if low is not None and high is not None
                  else f" at least {low}" if low is not None else "")
        raise ValueError(f"{owner}: option {name} must be a whole number{bounds} {_got(value)}")
    return value


def flag(owner: str, name: str, value: Any) -> bool:
    """A boolean option; the string ``"false"`` is refused, not taken as true."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: option {name} must be true or false {_got(value)}")
    return value


def choices(owner: str, name: str, value: Any, allowed: Sequence[str]) -> list[str]:
    """A non-empty list of names from ``allowed``, or all of them when the option is left out
    (None). A bare string would be iterated letter by letter and an empty list read as "all",
    so both are refused."""
    if value is None:
        return list(allowed)
    if isinstance(value, str):
        example = value if value in allowed else allowed[0]
        raise ValueError(f"{owner}: option {name} must be a list of names from {list(allowed)}, not a string "
                         f"{_got(value).replace(': write it without quotes', '')}; write [{example}]")
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{owner}: option {name} must be a non-empty list of names from {list(allowed)} {_got(value)}; "
                         f"leave it out for all of them")
    unknown = [item for item in value if not isinstance(item, str) or item not in allowed]
    if unknown:
        raise ValueError(f"{owner}: option {name} must be names from {list(allowed)} (unknown: {unknown})")
    return list(value)


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
        whole(self.name, "train_size", train_size, 1)
        whole(self.name, "test_size", test_size, 1)
        self.seed = whole(self.name, "seed", seed)
        if format is not None and not isinstance(format, str):
            raise ValueError(f"{self.name}: option format must be one of {sorted(self.formats)} {_got(format)}")
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


# -- answers -------------------------------------------------------------------------------------

_TAG_MARK = re.compile(r"<(/?)answer>", re.I)


def last_answer_tag(text: str) -> Optional[str]:
    """The text inside the last ``<answer>...</answer>`` pair (any case, stripped), or None.

    Pairs as ``re.findall(r"<answer>(.*?)</answer>")`` would (an open tag, then the first close
    after it) but in one pass over the tags: that regex retried from every ``<answer>`` with no
    close after it, quadratic on a response of many open tags (8,000 took 6.6 s).
    """
    last, start = None, None
    for mark in _TAG_MARK.finditer(text):
        if mark.group(1):
            if start is not None:
                last, start = text[start : mark.start()], None
        elif start is None:
            start = mark.end()
    return None if last is None else last.strip()
