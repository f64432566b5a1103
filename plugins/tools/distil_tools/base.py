"""What a tool is and what it returns.

A tool has a ``name``, a one-line ``description`` and ``run(input) -> ToolResult``. ``input``
is the text between the tags of a ``<tool>`` call, or the ``"input"`` value of a JSON call
(a string or an object). A tool reports its own failures in the result (``ok=False`` and a
message the model can read) instead of raising; the feedback source turns an exception into
such a result anyway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Union, runtime_checkable

ToolInput = Union[str, dict]
DATA_REPR_CHARS = 2000  # of the repr of a tool's data that JSON cannot hold


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call.

    ``text`` is what the expert reads after ``→``; ``ok`` is False when the call failed (bad
    input, an error in the program run, a refusal); ``data`` is structured detail (JSON-able)
    kept in the feedback item's data.
    """

    text: str
    ok: bool = True
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def error(cls, text: str, **data: Any) -> "ToolResult":
        return cls(text=text, ok=False, data=data)


@runtime_checkable
class Tool(Protocol):
    """A callable tool. ``run`` may receive a string or a dict (JSON calls)."""

    name: str
    description: str

    def run(self, input: ToolInput) -> ToolResult: ...


def excerpt(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, keeping its head and its tail.

    Outputs are cut in the middle because both ends matter: the first lines of a program's
    output and the last lines of a traceback.
    """
    if len(text) <= limit:
        return text
    marker = " […] "
    if limit <= len(marker) + 2:
        return text[:limit]
    keep = limit - len(marker)
    head = keep - keep // 3
    tail = keep - head
    return text[:head] + marker + text[len(text) - tail:]


# What str.splitlines takes for a line break besides "\n": each is shown escaped (``\\r``,
# ``\\u2028``), as the characters they are, so the input stays on one line.
_LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode("ascii")
                for c in "\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(value: Any, limit: int) -> str:
    """A short single-line rendering of a tool input (newlines shown as ``\\n``).

    The feedback text is ``Tool NAME(INPUT) → OUTPUT``; a line break left in INPUT (a lone
    ``\\r`` too, or U+2028, which chat renderings and ``splitlines`` treat as one) would split
    the call across lines and let the input pass for a line of its own.
    """
    if isinstance(value, dict):
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    else:
        text = str(value).strip()
    text = text.replace("\r\n", "\n").replace("\n", "\\n").replace("\t", " ").translate(_LINE_BREAKS)
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


def printable(value: Any, convert: Callable[[Any], Any] = str) -> str:
    """``convert(value)``, or a placeholder when that fails or gives no string.

    Used on what third-party tools hand over (their exceptions, their data): a broken
    ``__str__`` or ``__repr__`` there must become a message, not a crash of the feedback step.
    """
    try:
        text = convert(value)
    except Exception:  # whatever the object's own method raises
        text = None
    return text if isinstance(text, str) else f"<{type(value).__name__} object that cannot be printed>"


def jsonable(value: dict[str, Any]) -> dict[str, Any]:
    """A tool's data as JSON-able values (run logs write it as JSON).

    Values JSON does not know become strings; data JSON cannot hold at all (a circular
    reference, a tuple key, nesting too deep) is kept as ``{"repr": ...}``, cut to
    :data:`DATA_REPR_CHARS`, so one odd tool cannot stop the feedback step.
    """
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return json.loads(json.dumps(value, default=printable))
    except (TypeError, ValueError, RecursionError):
        return {"repr": excerpt(printable(value, repr), DATA_REPR_CHARS)}
