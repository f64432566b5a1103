"""An entry of the corrections store: the :class:`Correction` record, its checks, and its stored row.

An entry is about a problem (``problem_id``) and, usually, one response to it
(``response_hash`` = ``Rollout.response_hash``); an entry without a response hash is about the
problem as a whole. ``kind`` is ``correction`` (what is wrong with the response) or
``solution`` (a better answer, usable as a demonstration). The same record is one line of the
JSONL exchange format.

What a reviewer, a file or a stored row may hold is decided here, once, for every way an entry
comes in: text SQLite can store, a verdict JSON can write back as it was, and, for an entry
being entered, no control characters in the text the expert reads. A failure says which field
is wrong and, for a stored row, what it holds, so that whoever fixes it knows where to look.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .schema import COLUMNS

KINDS = ("correction", "solution")
MAX_STEP = 2**63 - 1  # SQLite's INTEGER is a signed 64-bit number
MAX_VERDICT_DEPTH = 32  # a verdict is score, passed, answer: deeper nesting is a broken record
RESPONSE_HASH = r"^[0-9a-f]{8,64}$"
_TEXT_FIELDS = ("id", "problem_id", "response_hash", "text", "author", "run_dir", "response_text")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")
"""C0 and C1 controls and DEL, but the tab and what ``str.splitlines`` takes for a line break."""
ENTERED = {"entered": True}
"""The validation context of an entry being entered (:meth:`Correction.entered`: the desk, the
terminal review, an import). Its text, which the expert will read, is also checked for control
characters: a NUL or an escape sequence pasted from a terminal is an accident, and some
providers refuse a NUL outright. Entries read back from the store are not checked again, so
that one stored before the check still reads."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Correction(BaseModel):
    """One human entry about a response (or a problem). Also one line of the JSONL format."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1)
    problem_id: str = Field(min_length=1)
    response_hash: Optional[str] = Field(
        default=None, pattern=RESPONSE_HASH, description="None: about the problem as a whole."
    )
    kind: Literal["correction", "solution"]
    text: str
    author: str = ""
    created_at: datetime = Field(default_factory=_now)
    run_dir: Optional[str] = None
    step: Optional[int] = Field(default=None, ge=0, le=MAX_STEP)
    response_text: Optional[str] = None
    verdict: Optional[dict[str, Any]] = Field(default=None, description="score, passed, answer of the response.")
    verified: Optional[bool] = Field(
        default=None, description="For a solution: True when the task's verifier passed it, False when it was "
        "stored although it failed (or could not be checked), None when it was never checked.")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        control = _CONTROL.search(value) if info.context == ENTERED else None
        if control:
            raise ValueError(f"holds the control character {ascii(control.group())[1:-1]} at position "
                             f"{control.start()}; this is text the expert reads: remove it (tabs and line "
                             "breaks are kept)")
        return value

    @classmethod
    def entered(cls, data: dict[str, Any]) -> "Correction":
        """A new entry, from a reviewer or a file: validated with the :data:`ENTERED` checks. One
        without an ``id`` gets :meth:`content_id`, so the same entry saved twice (a double click
        on Save, a file of entries without ids imported twice) is stored once."""
        entry = cls.model_validate(data, context=ENTERED)
        if "id" not in data:
            entry.id = entry.content_id()
        return entry

    CONTENT_FIELDS: ClassVar[tuple[str, ...]] = ("problem_id", "response_hash", "kind", "text", "author")
    """What makes two entries the same advice, whenever and from whichever run they were saved."""

    def content_id(self) -> str:
        """An id made from the entry's :data:`CONTENT_FIELDS`, 32 hex digits like a random one."""
        key = json.dumps([getattr(self, name) for name in self.CONTENT_FIELDS], ensure_ascii=False)
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    @field_validator(*_TEXT_FIELDS)
    @classmethod
    def _is_text(cls, value: Optional[str]) -> Optional[str]:
        """A lone UTF-16 surrogate (JSON ``"\\ud800"``, or an undecodable byte smuggled in by
        ``surrogateescape``) is not text: SQLite could not store it, so it is refused here."""
        if value is not None:
            _check_text(value, "")
        return value

    @field_validator("created_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        try:
            return value.astimezone(timezone.utc)
        except OverflowError:  # 9999-12-31T23:00-05:00 is in year 10000 in UTC
            raise ValueError(f"{value.isoformat()} is outside the years 1 to 9999 once converted to UTC") from None

    @field_validator("verdict")
    @classmethod
    def _plain_verdict(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        """Checked without recursion, so that a hostile nesting depth is an error, not a crash.

        NaN and infinity are refused: JSON has no such numbers, so an export would write them
        as something else and the entry would not come back as it was stored."""
        if value is None:
            return value
        stack: list[tuple[Any, str, int]] = [(value, "", 1)]
        while stack:
            item, where, depth = stack.pop()
            if isinstance(item, str):
                _check_text(item, where)
            elif isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"holds {item!r} at {where or 'the top'}, which is not a finite number (JSON "
                                 "has no NaN or infinity); write a number or null")
            elif isinstance(item, (dict, list)):
                if depth > MAX_VERDICT_DEPTH:
                    raise ValueError(f"nested more than {MAX_VERDICT_DEPTH} levels deep (at {where or 'the top'}); "
                                     "a verdict holds score, passed and answer")
                pairs = item.items() if isinstance(item, dict) else enumerate(item)
                for key, sub in pairs:
                    if isinstance(key, str):
                        _check_text(key, where)
                    stack.append((sub, f"{where}.{key}" if where else str(key), depth + 1))
        return value

    def to_json(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        out["created_at"] = self._stamp()
        return out

    def _stamp(self) -> str:
        return self.created_at.isoformat(timespec="microseconds")

    def to_row(self) -> tuple[Any, ...]:
        """The entry as the store holds it: a row in the order of :data:`~distil_human.schema.COLUMNS`."""
        verdict = json.dumps(self.verdict) if self.verdict is not None else None
        return (self.id, self.problem_id, self.response_hash, self.kind, self.text, self.author,
                self._stamp(), self.run_dir, self.step, self.response_text, verdict, self.verified)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "Correction":
        """The entry a stored row holds; :class:`UnreadableRow` naming the field at fault for a row
        changed outside distil-human (a BLOB for a text, a ``kind`` it does not know, a verdict
        that is not JSON), so that whoever fixes it by hand knows where to look."""
        data = dict(zip(COLUMNS, row))
        for name, value in data.items():
            if isinstance(value, bytes):
                raise UnreadableRow(f"field {name!r}: holds binary data (a BLOB of {len(value)} bytes), not text")
        if data["verdict"] is not None:
            try:  # a NaN stored by an older distil-human reads back as null, which is what its export wrote
                data["verdict"] = json.loads(data["verdict"], parse_constant=lambda _: None)
            except (ValueError, RecursionError) as exc:
                what = f"{exc.msg} at character {exc.pos + 1}" if isinstance(exc, json.JSONDecodeError) else \
                    type(exc).__name__
                raise UnreadableRow(f"field 'verdict': not valid JSON ({what}; it holds "
                                    f"{short_repr(data['verdict'])})") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise UnreadableRow(problems_of(exc, stored=True)) from None


class UnreadableRow(ValueError):
    """A stored row that is not an entry; the message names the field and what is wrong with it."""


def problems_of(exc: ValidationError, stored: bool = False) -> str:
    """``field: what is wrong; ...`` for an entry that failed validation, without pydantic's
    boilerplate (error types, links). ``stored``: for a row read back from the store, which
    someone must find and fix by hand: ``field 'name': what is wrong (it holds <value>)``. A
    reviewer's own entry is given back whole, so its values are not repeated."""
    parts = []
    for error in exc.errors():
        where = ".".join(map(str, error["loc"]))
        if not stored:
            parts.append(f"{where or 'entry'}: {error['msg']}")
            continue
        held = "" if error["type"] == "missing" else f" (it holds {short_repr(error.get('input'))})"
        parts.append(f"{f'field {where!r}' if where else 'the entry'}: {error['msg']}{held}")
    return "; ".join(parts)


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to 60 characters: enough to find a bad value, never a whole text."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_text(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        at = f" in {where}" if where else ""
        raise ValueError(
            f"holds {value[exc.start]!r}{at} at position {exc.start}, a lone UTF-16 surrogate, which is not a "
            "character; write the character itself or its complete \\uXXXX\\uXXXX pair"
        ) from None


class EntryError(ValueError):
    """Entry ``index`` of a batch cannot be stored; ``field`` is the one at fault, if known."""

    def __init__(self, index: int, message: str, field: str = "(record)"):
        super().__init__(message)
        self.index, self.field = index, field


class DuplicateIdError(EntryError):
    """An entry's id is already in the store with different content."""

    def __init__(self, index: int, correction_id: str):
        super().__init__(index, f"id {correction_id!r} is already in the store with different content", "id")


def row_content(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A stored row's :data:`Correction.CONTENT_FIELDS`."""
    return tuple(row[COLUMNS.index(name)] for name in Correction.CONTENT_FIELDS)
