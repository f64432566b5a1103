"""One record of a task's data with its place, and the error that names that place.

A record comes from a JSONL line (its place is ``file:line``) or a table row of a Parquet
file or a ``datasets`` dataset (``file row N``, counting from 0 as ``ds[N]`` and
``df.iloc[N]`` do). Every check of a field goes through :class:`Record`, so a bad record
always stops the load with its place, the field and what it should be.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from decimal import Decimal
from typing import Any, Optional

from distil_core import SURROGATE


class RecordError(ValueError):
    """A record does not fit its format: ``file:line: field 'x': what is wrong`` (or ``file row N: ...``)."""

    def __init__(self, path: str, line: int, field: Optional[str], message: str, unit: str = "line"):
        self.path, self.line, self.field, self.unit = path, line, field, unit
        where = place(path, line, unit)
        super().__init__(f"{where}: field {field!r}: {message}" if field else f"{where}: {message}")


def prompt_text(prompt: Any) -> str:
    """What makes two problems the same problem: the prompt (a text, or the chat messages as
    canonical JSON)."""
    if isinstance(prompt, str):
        return prompt
    messages = [m.model_dump() if hasattr(m, "model_dump") else m for m in prompt]
    return json.dumps(messages, sort_keys=True)


def prompt_id(prompt: Any) -> str:
    """The id of a record without one: ``p-`` and 12 hex digits of the SHA-256 of its prompt
    (:func:`prompt_text`). Neither the record's place, nor the file's name, nor an edit of its
    answer changes it, so none of them moves the record between the splits that are made from
    ids, or orphans what was stored about it."""
    return "p-" + hashlib.sha256(prompt_text(prompt).encode("utf-8", "surrogatepass")).hexdigest()[:12]


def place(path: str, line: int, unit: str = "line") -> str:
    """``file:line`` for a line of a text file, ``file row N`` for a table row."""
    return f"{path}:{line}" if unit == "line" else f"{path} row {line}"


class Record:
    """One record with its place, and typed field access that names the field."""

    def __init__(self, path: str, line: int, data: dict[str, Any], unit: str = "line"):
        self.path, self.line, self.data, self.unit = path, line, data, unit

    @property
    def where(self) -> str:
        return place(self.path, self.line, self.unit)

    def error(self, field: Optional[str], message: str) -> RecordError:
        return RecordError(self.path, self.line, field, message, self.unit)

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
        return self.unicode(name, value)

    def unicode(self, name: str, value: Any) -> Any:
        """``value`` unchanged when every string in it (nested in lists and dicts too) is valid
        Unicode; a lone surrogate (JSON's ``\\ud800`` unpaired), which no encoder can write, is
        refused here rather than crash the tokenizer mid-run."""
        if isinstance(value, str):
            found = SURROGATE.search(value)
            if found:
                raise self.error(name, f"holds an unpaired surrogate (\\u{ord(found.group()):04x}); "
                                       "the text is not valid Unicode")
        elif isinstance(value, dict):
            for key, item in value.items():
                self.unicode(name, key)
                self.unicode(name, item)
        elif isinstance(value, list):
            for item in value:
                self.unicode(name, item)
        return value

    def number(self, name: str, value: float) -> str:
        """A number as the text a prompt or reference shows; NaN and infinity (JSON's ``NaN``,
        ``Infinity``, ``1e999``; a float column's NaN) are no answer, so they are refused.

        A float is written as a plain decimal, the shortest one that reads back as the same
        float, and a whole one as an integer (``1e-05`` → ``0.00001``, ``1e+20`` →
        ``100000000000000000000``): a response writes its answer that way, and an exponent in
        the reference would fail it."""
        if isinstance(value, float) and not math.isfinite(value):
            what = "NaN" if math.isnan(value) else "infinite"
            raise self.error(name, f"is {what}; give a finite number or a string")
        if isinstance(value, float):
            if value.is_integer():
                return str(int(value))
            return format(Decimal(repr(value)), "f")
        return str(value)

    def ident(self, *names: str) -> Optional[str]:
        """The record's id from the first of ``names`` present (a string or an integer), else None
        (the caller gives it :func:`prompt_id`)."""
        for name in names:
            value = self.data.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
                raise self.error(name, "an id must be a non-empty string or an integer")
            return self.unicode(name, str(value))
        return None

    def listing(self, name: str, *, required: bool = True) -> Optional[list[Any]]:
        """A list field, or a JSON string holding one (as some dataset dumps store it)."""
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.error(name, "missing (a list is required)")
            return None
        if isinstance(value, str):
            value = self.json(name, value, "a JSON list")
        if not isinstance(value, list):
            raise self.error(name, f"must be a list, not {type(value).__name__}")
        if required and not value:
            raise self.error(name, "is empty")
        return self.unicode(name, value)

    def json(self, name: str, text: str, expected: str) -> Any:
        """The JSON a string field holds, its every failure a RecordError naming the field: not
        JSON, nested too deeply for the parser (Python's recursion limit), or an integer longer
        than ``int()`` reads (``sys.get_int_max_str_digits()``), which ``json`` raises as a bare
        RecursionError or ValueError."""
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise self.error(name, f"is a string but not {expected}") from None
        except RecursionError:
            raise self.error(name, "holds JSON nested too deeply to read; flatten it") from None
        except ValueError:
            raise self.error(name, f"holds an integer of more than {sys.get_int_max_str_digits()} digits, "
                                   "more than Python reads from JSON; write it as a string") from None
