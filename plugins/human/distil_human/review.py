"""``distil review RUN_DIR``: a run's failed rollouts, one at a time, in the terminal.

The run's ``rollouts.jsonl`` (written by the trainer unless ``train.log_rollouts: false``)
holds every rollout with its verdict and feedback. The command steps through the queue of
:mod:`distil_human.review_queue` (grouped by problem, worst first); a failed response that
occurs several times is shown once. For each, the reviewer types a key:

    c  record a correction (what is wrong)       s  record a better solution
    n  skip (Enter does the same)                b  go back one
    q  quit                                      ?  help

A correction or solution is several lines, ended by a line holding only ``.``; it is
committed to the store the moment that line is entered. Ctrl-C or Ctrl-D (end of input) at
any prompt quits at once: what was saved stays saved, the entry being typed is discarded.
A solution is graded by the run's verifier first (:mod:`distil_human.verify`); a failing one
is stored only when the reviewer answers yes to keeping it, marked unverified.

What a person types is never dropped by an error. A save that fails for any reason (the store
locked, the disk full, the file damaged) prints the text back and the session goes on. Bytes
that are not valid UTF-8 (a terminal in another encoding, a stray paste) are kept as U+FFFD
with a note, since a line refused outright would be a line lost.
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any, Callable, Optional

from pydantic import ValidationError

from distil_core import DistilError, as_text

from .records import Correction, problems_of
from .review_queue import QueueFilter, ReviewItem, failed_items, read_records, verdict_summary
from .store import CorrectionStore
from .text import shown_escaped
from .verify import SolutionChecker

PROMPT = "[c]orrection [s]olution [n]ext [b]ack [q]uit [?] > "
TEXT_PROMPT = "| "
STORE_ANYWAY = "Store it anyway, marked unverified? [y/N] "
HELP = """\
  c  record a correction: what is wrong with this response
  s  record a better solution (a demonstration for the expert)
  n  skip to the next one (Enter does the same)
  b  go back to the previous one
  q  quit (Ctrl-C and Ctrl-D quit too)
A correction or solution may span lines; end it with a line holding only '.'.
It is saved as soon as that line is entered."""
ACTIONS = {
    "c": "correction", "correction": "correction",
    "s": "solution", "solution": "solution",
    "": "next", "n": "next", "next": "next", "skip": "next",
    "b": "back", "back": "back", "p": "back",
    "q": "quit", "quit": "quit", "exit": "quit",
    "?": "help", "h": "help", "help": "help",
}


def load_failed_rollouts(run_dir: str, problem_id: Optional[str] = None) -> tuple[list[ReviewItem], int]:
    """The run's failed responses in the order they were sampled, and the unreadable lines."""
    records, unreadable = read_records(run_dir)
    return list(failed_items(records, QueueFilter(problem_id=problem_id))), unreadable


class ReviewSession:
    """The interactive loop. ``read`` and ``write`` default to ``input`` and ``print``; every line
    written goes through :func:`~distil_human.text.shown_escaped` (it shows text from outside)."""

    def __init__(
        self,
        items: list[ReviewItem],
        store: CorrectionStore,
        *,
        author: str,
        run_dir: str,
        read: Callable[[str], str] = input,
        write: Callable[[str], None] = print,
        checker: Optional[SolutionChecker] = None,
    ):
        self.items, self.store, self.author = items, store, author
        self.run_dir = as_text(os.path.abspath(run_dir))  # stored with each entry: text, even from odd bytes
        self.checker = checker
        self.read = read
        self.write: Callable[[str], None] = lambda line: write(shown_escaped(line))
        self.saved = 0

    def _ask(self, prompt: str) -> str:
        """One line from ``read``, as text SQLite can store: a stream decoding with
        ``surrogateescape`` (what ``distil review`` sets on its standard input) turns each byte
        that is not UTF-8 into a lone surrogate, which :func:`distil_core.as_text` makes
        U+FFFD, keeping every valid character."""
        while True:
            try:
                raw = self.read(prompt)
            except UnicodeDecodeError as exc:  # a strict stream could not decode the line at all
                self.write(f"That line was not valid UTF-8 ({exc.reason} at byte {exc.start}) and could not be "
                           "read; type it again.")
                continue
            line = as_text(raw)
            if line != raw:
                self.write("(That line held bytes that are not valid UTF-8; each is kept as U+FFFD.)")
            return line

    def run(self) -> int:
        """Review until the last item or a quit; returns how many entries were saved."""
        try:
            self._loop()
        except (KeyboardInterrupt, EOFError):
            self.write("\nStopped. Anything being typed was discarded; everything entered before is saved.")
        self.write(f"Saved {self.saved} {'entry' if self.saved == 1 else 'entries'} this session in {self.store.path}.")
        return self.saved

    def _loop(self) -> None:
        index, show = 0, True
        while index < len(self.items):
            if show:
                self.write(self.render(index))
            show = True
            choice = self._ask(PROMPT).strip().lower()
            action = ACTIONS.get(choice)
            if action in ("correction", "solution"):
                text = self._read_text(action)
                if text is None:
                    self.write("Nothing entered, nothing saved.")
                    show = False
                    continue
                verified = self._check(self.items[index], text) if action == "solution" else None
                if verified == "refused" or not self._save(self.items[index], action, text, verified):
                    show = False
                    continue
                index += 1
            elif action == "next":
                index += 1
            elif action == "back":
                if index == 0:
                    self.write("This is the first one.")
                    show = False
                else:
                    index -= 1
            elif action == "quit":
                return
            else:
                self.write(HELP if action == "help" else f"Unknown choice {choice!r}; type ? for help.")
                show = False
        self.write("That was the last failed rollout.")

    def _read_text(self, kind: str) -> Optional[str]:
        self.write(f"Type the {kind}; end it with a line holding only '.':")
        lines: list[str] = []
        while True:
            line = self._ask(TEXT_PROMPT)
            if line.strip() == ".":
                break
            lines.append(line.rstrip())
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        return "\n".join(lines) or None

    def _check(self, item: ReviewItem, text: str) -> "Optional[bool] | str":
        """The solution's ``verified`` value, or "refused" when it failed and was not kept anyway."""
        if self.checker is None:
            return None
        result = self.checker.check(item.key[0], text)
        if not result.refused:
            self.write(f"Checked: {result.reason}.")
            return result.verified
        self.write(f"Refused: {result.reason}.")
        if self._ask(STORE_ANYWAY).strip().lower() in ("y", "yes"):
            return False
        self.write(f"Not saved. Your solution was:\n{_indent(text)}")
        return "refused"

    def _save(self, item: ReviewItem, kind: str, text: str, verified: Optional[bool] = None) -> bool:
        rec = item.record
        try:
            entry = Correction.entered(dict(
                problem_id=rec["problem_id"], response_hash=rec["response_hash"], kind=kind, text=text,
                author=self.author, run_dir=self.run_dir, step=rec.get("step"), response_text=rec["response_text"],
                verdict=verdict_summary(rec), verified=verified,
            ))
            self.store.add(entry)
        except Exception as exc:  # busy, disk full, damaged, a bad rollout record: give the text back
            reason = (f"{problems_of(exc)}." if isinstance(exc, ValidationError) else str(exc)
                      if isinstance(exc, DistilError) else f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            self.write(f"NOT saved: {reason}\nYour {kind} was:\n{_indent(text)}\n"
                       "Copy it now; choose c or s to enter it again, or q to quit.")
            return False
        self.saved += 1
        self.write(f"Saved {kind} {entry.id[:8]}.")
        return True

    def render(self, index: int) -> str:
        item = self.items[index]
        rec = item.record
        verdict = rec.get("verdict") or {}
        seen = f", seen {item.seen} times" if item.seen > 1 else ""
        out = [f"\n=== {index + 1}/{len(self.items)}: problem {rec['problem_id']} "
               f"(step {rec.get('step', '?')}, sample {rec.get('group_index', '?')}{seen}) ==="]
        if item.group is not None:
            out.append(f"Problem {item.group.problem_id}: {item.group.summary()}")
        out += ["Problem:", _indent(str(rec.get("prompt", "")))]
        if rec.get("reference") is not None:
            out.append(f"Reference: {_short(rec['reference'], 300)}")
        unfinished = "" if rec.get("finished", True) else " (cut off at max_new_tokens)"
        out += [f"Response {rec['response_hash']}{unfinished}:", _indent(rec["response_text"])]
        score = verdict.get("score")
        score_text = f", score {score:.2f}" if isinstance(score, (int, float)) else ""
        out.append(f"Verdict: {'passed' if verdict.get('passed') else 'failed'}{score_text}, "
                   f"answer {verdict.get('answer')!r}")
        out += [f"    {k}: {_short(v, 200)}" for k, v in (verdict.get("details") or {}).items()]
        feedback = rec.get("feedback") or []
        if feedback:
            out.append("Feedback:")
            out += [_indent(f"[{f.get('source')}/{f.get('kind')}] {f.get('text', '')}") for f in feedback]
        out += self._on_record(rec["problem_id"], rec["response_hash"])
        return "\n".join(out)

    def _on_record(self, problem_id: str, response_hash: str) -> list[str]:
        try:
            entries = self.store.all(problem_id)
        except DistilError as exc:  # still show the rollout: the reviewer may have text to copy
            return [f"On record: (cannot read the store: {exc})"]
        mine = [e for e in entries if e.response_hash in (response_hash, None)]
        others = len(entries) - len(mine)
        out = [f"On record: {'none' if not mine else ''}".rstrip()]
        for e in mine:
            about = "" if e.response_hash else ", about the whole problem"
            out.append(_indent(f"{e.kind} by {e.author or '?'}, {e.created_at:%Y-%m-%d %H:%M}{about}:"))
            out.append(_indent(e.text, 8))
        if others:
            out.append(f"    ({others} more on other responses to this problem)")
        return out


def _indent(text: str, width: int = 4) -> str:
    """``text`` indented, its control characters escaped first (a bare CR would break its line)."""
    return textwrap.indent(shown_escaped(text), " " * width, lambda _: True) if text else " " * width + "(empty)"


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."
