"""The review queue: a run's failed rollouts grouped by problem, filtered and sorted.

Both front ends (``distil review`` in the terminal and the browser desk) build their queue
here, so a reviewer sees the same problems in the same order whichever one they use. A run
of a few dozen steps fails hundreds of times, mostly on a few problems answered the same
wrong way over and over; grouping by problem and putting the worst first lets a reviewer
spend their time where one correction teaches the most.

Reads ``rollouts.jsonl`` only through :func:`distil_core.run_files.log_lines`, so rotated
gzip segments are read too.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from distil_core import ConfigError
from distil_core.run_files import log_exists, log_lines

from .records import MAX_STEP, RESPONSE_HASH
from .text import is_text, json_line

ROLLOUTS = "rollouts.jsonl"
REQUIRED = ("problem_id", "response_hash", "response_text", "verdict")
_HASH = re.compile(RESPONSE_HASH)
SORTS = {
    "failing": "most failing samples",
    "pass_rate": "lowest pass rate",
    "recent": "most recent step",
    "unreviewed": "most responses not yet reviewed",
}
VERDICTS = {
    "failed": "every failed response",
    "wrong_answer": "an answer, but a wrong one",
    "no_answer": "no answer found",
    "cut_off": "cut off at max_new_tokens",
}


@dataclass
class ReviewItem:
    """A failed response (its first occurrence in the run) and how often the run produced it."""

    record: dict[str, Any]
    seen: int = 1
    steps: list[int] = field(default_factory=list)
    group: Optional["ProblemGroup"] = None

    @property
    def key(self) -> tuple[str, str]:
        return self.record["problem_id"], self.record["response_hash"]

    @property
    def sources(self) -> set[str]:
        return {str(f.get("source")) for f in self.record.get("feedback") or []}


@dataclass
class ProblemGroup:
    """One problem of the run: every sample's count, and its distinct failed responses."""

    problem_id: str
    prompt: str = ""
    reference: Any = None
    samples: int = 0
    passed: int = 0
    failing: int = 0
    last_step: int = 0
    items: list[ReviewItem] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.samples if self.samples else 0.0

    @property
    def sources(self) -> list[str]:
        """The feedback sources that spoke on its failed responses."""
        return sorted(set().union(*(i.sources for i in self.items)))

    def unreviewed(self, reviewed: set[tuple[str, str]]) -> int:
        return sum(1 for i in self.items if i.key not in reviewed)

    def summary(self) -> str:
        return (f"{self.failing} of {self.samples} samples failed (pass rate {self.pass_rate:.0%}), "
                f"{len(self.items)} distinct failed response{'' if len(self.items) == 1 else 's'}, "
                f"last step {self.last_step}")


@dataclass
class QueueFilter:
    """Which failed rollouts enter the queue. ``steps`` is an inclusive (first, last) range."""

    verdict: str = "failed"
    source: Optional[str] = None
    steps: tuple[Optional[int], Optional[int]] = (None, None)
    problem_id: Optional[str] = None
    only_unreviewed: bool = False

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ConfigError(f"verdict filter {self.verdict!r} is not one of {', '.join(VERDICTS)}.")

    def in_steps(self, record: dict[str, Any]) -> bool:
        step = record.get("step")
        first, last = self.steps
        if not isinstance(step, int):
            return first is None and last is None
        return (first is None or step >= first) and (last is None or step <= last)

    def admits(self, record: dict[str, Any]) -> bool:
        """Whether a failed record of a problem in range passes the verdict and source filters."""
        verdict = record.get("verdict") or {}
        if self.verdict == "no_answer" and verdict.get("answer") is not None:
            return False
        if self.verdict == "wrong_answer" and verdict.get("answer") is None:
            return False
        if self.verdict == "cut_off" and record.get("finished", True):
            return False
        if self.source and self.source not in {str(f.get("source")) for f in record.get("feedback") or []}:
            return False
        return True


def parse_steps(text: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """``"7"`` → (7, 7); ``"5-10"``, ``"5-"``, ``"-10"`` → ranges; None or ``""`` → everything."""
    if not text or not text.strip():
        return None, None
    first, sep, last = text.strip().partition("-")
    try:
        low = int(first) if first.strip() else None
        high = (int(last) if last.strip() else None) if sep else low
    except ValueError:
        raise ConfigError(f"--steps {text!r}: give a step (7) or a range (5-10, 5-, -10).") from None
    if low is not None and high is not None and low > high:  # would select nothing, and say only that
        raise ConfigError(f"--steps {text!r}: the range runs backwards; give the first step first ({high}-{low}).")
    return low, high


def read_records(run_dir: str) -> tuple[list[dict[str, Any]], int]:
    """Every readable record of the run's rollouts, in sampling order, and the unreadable lines."""
    records, skipped = read_rollouts(run_dir)
    return records, len(skipped)


def read_rollouts(run_dir: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every readable record of the run's rollouts, in sampling order, and a ``file:line: what is
    wrong`` for each line left out (see :func:`distil_human.text.skipped_note`).

    A lone surrogate in a record's text (a truncated emoji escaped as ``"\\ud83d"``) is read as
    U+FFFD, so that the record can be shown and a correction of it stored; in ``problem_id``,
    which must match the task's own id, it makes the line unreadable instead."""
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{run_dir!r} is not a directory; give the run directory that `distil train` wrote.")
    if not log_exists(run_dir, ROLLOUTS):
        raise ConfigError(
            f"{run_dir} has no {ROLLOUTS}: the run was made with train.log_rollouts: false or by an older "
            "distil. Train again with rollout logging on (the default) to review its rollouts."
        )
    records: list[dict[str, Any]] = []
    skipped: list[str] = []
    for path, number, line in log_lines(run_dir, ROLLOUTS):  # rotated segments first, then the live file
        if not line.strip():
            continue
        try:  # a line that is not a record: half a line (a run killed mid-write), a hand edit, another tool's
            records.append(json_line(line, record_problem))
        except ValueError as exc:
            skipped.append(f"{path}:{number}: {exc}")
    return records, skipped


def record_problem(record: Any) -> Optional[str]:
    """What keeps a rollout record from the queue, or None: it must be a JSON object with the
    fields and types the trainer writes, so that nothing downstream (the queue, the terminal, the
    desk, a store entry) trips over a hand-edited or foreign line."""
    if not isinstance(record, dict):
        return f"not a rollout record (a JSON {type(record).__name__}, not an object)"
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        return f"not a rollout record (no {', '.join(repr(k) for k in missing)})"
    verdict, feedback, step = record["verdict"], record.get("feedback"), record.get("step")
    if not (isinstance(record["problem_id"], str) and record["problem_id"]):
        return "field 'problem_id' is not a non-empty string"
    if not is_text(record["problem_id"]):
        return "field 'problem_id' holds a lone UTF-16 surrogate (half of an escaped surrogate pair)"
    if not (isinstance(record["response_hash"], str) and _HASH.match(record["response_hash"])):
        return "field 'response_hash' is not 8 to 64 lowercase hex digits"
    if not isinstance(record["response_text"], str):
        return "field 'response_text' is not a string"
    if not (isinstance(verdict, dict) and isinstance(verdict.get("details") or {}, dict)):
        return "field 'verdict' is not an object (with an object of 'details')"
    if not isinstance(verdict.get("passed", False), bool):  # "false" is a true string: a failure read as a pass
        return "field 'verdict.passed' is not true or false"
    if not (feedback is None or (isinstance(feedback, list) and all(isinstance(f, dict) for f in feedback))):
        return "field 'feedback' is not a list of objects"
    if not (step is None or (isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= MAX_STEP)):
        return f"field 'step' is not a whole number from 0 to {MAX_STEP}"
    if not isinstance(record.get("finished", True), bool):
        return "field 'finished' is not true or false"
    return None


def verdict_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The ``score``, ``passed`` and ``answer`` of a record's verdict, as a store entry keeps them.
    A score that is not a finite number (a verifier's NaN) is kept as null, which JSON can hold."""
    verdict = record.get("verdict") or {}
    summary = {k: verdict.get(k) for k in ("score", "passed", "answer")}
    score = summary["score"]
    if isinstance(score, float) and not math.isfinite(score):
        summary["score"] = None
    return summary


def failed_items(records: list[dict[str, Any]], filters: QueueFilter) -> Iterator[ReviewItem]:
    """Distinct failed responses in sampling order, counting repeats."""
    items: dict[tuple[str, str], ReviewItem] = {}
    for record in records:
        if (record.get("verdict") or {}).get("passed"):
            continue
        if filters.problem_id and record["problem_id"] != filters.problem_id:
            continue
        if not (filters.in_steps(record) and filters.admits(record)):
            continue
        key = record["problem_id"], record["response_hash"]
        step = record.get("step")
        if key in items:
            items[key].seen += 1
        else:
            items[key] = ReviewItem(record)
        if isinstance(step, int):
            items[key].steps.append(step)
    return iter(items.values())


def group_by_problem(records: list[dict[str, Any]], filters: QueueFilter) -> dict[str, ProblemGroup]:
    """Every problem with at least one failed response the filters admit, in first-seen order."""
    groups: dict[str, ProblemGroup] = {}
    for item in failed_items(records, filters):
        pid = item.record["problem_id"]
        group = groups.setdefault(pid, ProblemGroup(pid, str(item.record.get("prompt", "")),
                                                    item.record.get("reference")))
        item.group = group
        group.items.append(item)
    for record in records:  # pass rates count every sample of the problem in the step range
        group = groups.get(record["problem_id"])
        if group is None or not filters.in_steps(record):
            continue
        group.samples += 1
        if (record.get("verdict") or {}).get("passed"):
            group.passed += 1
        else:
            group.failing += 1
        if isinstance(record.get("step"), int):
            group.last_step = max(group.last_step, record["step"])
    return groups


def build_queue(records: list[dict[str, Any]], reviewed: set[tuple[str, str]], sort: str = "failing",
                filters: Optional[QueueFilter] = None) -> list[ProblemGroup]:
    """The problems to review, best first by ``sort`` (ties: more failing samples, then problem id)."""
    filters = filters or QueueFilter()
    if sort not in SORTS:
        raise ConfigError(f"sort {sort!r} is not one of {', '.join(SORTS)}.")
    groups = list(group_by_problem(records, filters).values())
    if filters.only_unreviewed:
        for group in groups:
            group.items = [i for i in group.items if i.key not in reviewed]
        groups = [g for g in groups if g.items]
    keys = {
        "failing": lambda g: (-g.failing, g.problem_id),
        "pass_rate": lambda g: (g.pass_rate, -g.failing, g.problem_id),
        "recent": lambda g: (-g.last_step, -g.failing, g.problem_id),
        "unreviewed": lambda g: (-g.unreviewed(reviewed), -g.failing, g.problem_id),
    }
    return sorted(groups, key=keys[sort])


def queue_items(queue: list[ProblemGroup]) -> list[ReviewItem]:
    """The queue as one list of responses, problem after problem (what the terminal steps through)."""
    return [item for group in queue for item in group.items]


def sources_in(records: list[dict[str, Any]]) -> list[str]:
    """The feedback sources that spoke on some failed rollout of the run (for the source filter)."""
    return sorted({str(f.get("source")) for r in records if not (r.get("verdict") or {}).get("passed")
                   for f in r.get("feedback") or []})
