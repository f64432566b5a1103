"""Feedback source ``human``: the store's entries about a rollout, for the expert to read.

A ``correction`` becomes a ``human_correction`` item with the reviewer's text as written. A
``solution`` becomes a ``demonstration`` item, "Correct solution: ..." — rendered by the
context builder like any feedback text (inside the feedback template, after the problem and
any successful sibling) and counted in ``demo_coverage``, since its kind is ``demonstration``.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from distil_core import ConfigError, Feedback, Problem, Rollout, Verdict

from .records import Correction
from .store import CorrectionStore

MATCHES = ("response", "problem")


class HumanFeedback:
    """Human corrections (human_correction) and solutions (demonstration) from the store.

    ``match: response`` (the default) uses the entries about exactly this response, plus the
    entries about the problem as a whole (no response hash); ``match: problem`` uses every
    entry of the problem, whichever response it was written about. At most ``max_items``
    items, those about this response first, then the newest. ``skip_unverified: true`` leaves
    out every solution the run's verifier did not pass when it was stored (stored anyway, or
    never checked).

    It sits out the tiny base's pretraining (``pretrains_base``): the store changes between
    runs, and a base pretrained on what it held once would start the next run from other
    weights than the ones whose responses were reviewed.
    """

    pretrains_base = False

    def __init__(self, db: Optional[str] = None, match: str = "response", max_items: int = 3,
                 skip_unverified: bool = False):
        if match not in MATCHES:
            raise ConfigError(f"feedback source 'human': match must be 'response' or 'problem' (got {match!r}).")
        if db is not None and not isinstance(db, (str, os.PathLike)):
            raise ConfigError(f"feedback source 'human': db must be the path of a store (got {db!r}).")
        if not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1:
            raise ConfigError(f"feedback source 'human': max_items must be a whole number >= 1 (got {max_items!r}).")
        if not isinstance(skip_unverified, bool):
            raise ConfigError(f"feedback source 'human': skip_unverified must be true or false (got {skip_unverified!r}).")
        self.match, self.max_items, self.skip_unverified = match, max_items, skip_unverified
        self.store = CorrectionStore(db, create=False)

    def feedback(
        self,
        problem: Problem,
        rollout: Rollout,
        verdict: Verdict,
        group: Sequence[tuple[Rollout, Verdict]] = (),
    ) -> list[Feedback]:
        own = rollout.response_hash
        entries = self.store.all(problem.id)
        if self.match == "response":
            entries = [e for e in entries if e.response_hash in (own, None)]
        if self.skip_unverified:  # a solution the verifier did not pass could teach a wrong answer
            entries = [e for e in entries if e.kind != "solution" or e.verified is True]
        # newest first, then a stable sort puts this response's entries, then the problem's, first
        entries.sort(key=lambda e: e.created_at, reverse=True)
        entries.sort(key=lambda e: 0 if e.response_hash == own else 1 if e.response_hash is None else 2)
        # the same advice stored twice (a store older than content ids) takes one place, not two
        distinct: dict[tuple[str, str], Correction] = {}
        for entry in entries:
            distinct.setdefault((entry.kind, entry.text), entry)
        return [_item(e, own) for e in list(distinct.values())[: self.max_items]]


def _item(entry: Correction, own_hash: str) -> Feedback:
    about = ("this response" if entry.response_hash == own_hash
             else "the problem" if entry.response_hash is None else "another response")
    data = {"id": entry.id, "author": entry.author, "created_at": entry.to_json()["created_at"], "about": about}
    if entry.kind == "solution":
        return Feedback(source="human", kind="demonstration", text=f"Correct solution: {entry.text}", data=data)
    return Feedback(source="human", kind="human_correction", text=entry.text, data=data)
