"""The desk's state and actions, free of HTTP: one run, one store, the queue and the saves.

Kept apart from the routes so that the rules (what a save needs, when a solution is refused)
are written once and read plainly; :mod:`distil_human.web.app` only turns requests into calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Optional

from pydantic import ValidationError

from distil_core import ConfigError, DistilError, as_text

from ..exchange import dump_entries
from ..provenance import read_provenance
from ..records import Correction, problems_of
from ..review_queue import (SORTS, VERDICTS, ProblemGroup, QueueFilter, build_queue, parse_steps, read_rollouts,
                            sources_in, verdict_summary)
from ..store import CorrectionStore
from ..text import MAX_AUTHOR, author_name, skipped_note
from ..verify import SolutionCheck, SolutionChecker

MAX_TEXT = 100_000  # characters: a reviewer's entry, not a file upload


@dataclass
class View:
    """The queue settings of one page: sort order and filters, as the query string carries them."""

    sort: str
    filters: QueueFilter

    @property
    def steps_text(self) -> str:
        first, last = self.filters.steps
        if first is None and last is None:
            return ""
        return str(first) if first == last else f"{'' if first is None else first}-{'' if last is None else last}"

    def query(self) -> dict[str, str]:
        out = {"sort": self.sort, "verdict": self.filters.verdict}
        if self.filters.source:
            out["source"] = self.filters.source
        if self.steps_text:
            out["steps"] = self.steps_text
        if self.filters.only_unreviewed:
            out["unreviewed"] = "1"
        return out


@dataclass
class Outcome:
    """What a save did: ``entry`` when stored; else ``error`` (and ``check`` for a refused solution)."""

    entry: Optional[Correction] = None
    error: str = ""
    check: Optional[SolutionCheck] = None


class Desk:
    """The run's rollouts and provenance (read once, at start) and the shared store.

    ``skipped_note`` says where each line of those logs that could not be read is, and why;
    ``run_dir`` and ``author`` are as pages show them and entries store them (text, see
    :mod:`distil_human.text`: a path or a name given with bytes that are not UTF-8 would
    otherwise fail every page and every save)."""

    def __init__(self, run_dir: str, store: CorrectionStore, *, author: str = "", sort: str = "failing",
                 filters: Optional[QueueFilter] = None):
        self.run_dir = as_text(os.path.abspath(run_dir))
        self.store, self.author = store, author_name(author)
        self.records, skipped = read_rollouts(run_dir)
        self.provenance = read_provenance(run_dir, skipped)
        # each entry starts with the file's path
        self.skipped_note = skipped_note([as_text(where) for where in skipped]) if skipped else ""
        self.sources = sources_in(self.records)
        self.checker = SolutionChecker(run_dir)
        self.default = View(sort, replace(filters or QueueFilter(), problem_id=None))
        self.sorts, self.verdicts = SORTS, VERDICTS

    def view(self, params: Any) -> View:
        """The settings from a query string (a mapping): the command line's until the filter form
        has been sent once (then ``sort`` is always present). ConfigError names a bad value."""
        if "sort" not in params:
            return self.default
        steps_text = (params.get("steps") or "").strip()
        filters = QueueFilter(verdict=params.get("verdict") or "failed", source=params.get("source") or None,
                              steps=parse_steps(steps_text), only_unreviewed=params.get("unreviewed") == "1")
        if params["sort"] not in SORTS:
            raise ConfigError(f"sort {params['sort']!r} is not one of {', '.join(SORTS)}.")
        return View(params["sort"], filters)

    def queue(self, view: View) -> list[ProblemGroup]:
        return build_queue(self.records, self.store.reviewed(), view.sort, view.filters)

    def problem(self, problem_id: str, view: View) -> tuple[Optional[ProblemGroup], Optional[str], Optional[str]]:
        """The problem's group (every failed response, whatever the filters) and its queue neighbours."""
        order = [g.problem_id for g in self.queue(view)]
        groups = build_queue(self.records, set(), "failing", QueueFilter(problem_id=problem_id))
        group = groups[0] if groups else None
        if problem_id not in order:
            return group, None, (order[0] if order else None)
        at = order.index(problem_id)
        return group, (order[at - 1] if at > 0 else None), (order[at + 1] if at + 1 < len(order) else None)

    def context_of(self, problem_id: str, response_hash: str) -> Optional[dict[str, Any]]:
        """The newest provenance record of this response (what the expert last read about it)."""
        records = self.provenance.get((problem_id, response_hash)) or []
        return records[-1] if records else None

    def save(self, group: ProblemGroup, form: dict[str, str]) -> Outcome:
        """Check and store one entry from a submitted form."""
        kind, text = form.get("kind", ""), as_text(form.get("text") or "").strip("\n")
        author = author_name(form.get("author") or "") or self.author
        if kind not in ("correction", "solution"):
            return Outcome(error=f"kind must be correction or solution (got {kind!r}).")
        if len(author) > MAX_AUTHOR:
            return Outcome(error=f"The reviewer's name is {len(author):,} characters long; at most {MAX_AUTHOR} "
                           "are kept.")
        if not text.strip():
            return Outcome(error=f"The {kind} is empty; nothing was saved.")
        if len(text) > MAX_TEXT:
            return Outcome(error=f"The {kind} is {len(text):,} characters long; at most {MAX_TEXT:,} are kept.")
        record: dict[str, Any] = {}
        wanted = form.get("response_hash") or None
        if wanted:
            found = [i for i in group.items if i.record["response_hash"] == wanted]
            if not found:
                return Outcome(error=f"Problem {group.problem_id} has no failed response {wanted!r} in this run.")
            record = found[0].record
        verified, check = None, None
        if kind == "solution":
            check = self.checker.check(group.problem_id, text)
            if check.refused and form.get("store_anyway") != "1":
                return Outcome(error=f"Refused: {check.reason}.", check=check)
            verified = check.verified
        try:
            entry = Correction.entered(dict(
                problem_id=group.problem_id, response_hash=wanted, kind=kind, text=text, author=author,
                run_dir=self.run_dir, step=record.get("step"), response_text=record.get("response_text"),
                verdict=verdict_summary(record) if record else None, verified=verified,
            ))
            self.store.add(entry)
        except ValidationError as exc:  # a value from the form or the run's record the store cannot hold
            return Outcome(error=f"NOT saved: {problems_of(exc)}.", check=check)
        except DistilError as exc:
            return Outcome(error=f"NOT saved: {exc}", check=check)
        return Outcome(entry=entry, check=check)

    def export(self) -> str:
        return dump_entries(self.store.all())
