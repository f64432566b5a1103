"""What a tool is and what it returns.

A tool has a ``name``, a one-line ``description`` and ``run(input) -> ToolResult``. ``input``
is the text between the tags of a ``<tool>`` call, or the ``"input"`` value of a JSON call
(a string or an object). A tool reports its own failures in the result (``ok=False`` and a
message the model can read) instead of raising; the feedback source turns an exception into
such a result anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

ToolInput = Union[str, dict]


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


def one_line(value: Any, limit: int) -> str:
    """A short single-line rendering of a tool input (newlines shown as ``\\n``)."""
    if isinstance(value, dict):
        import json

        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    else:
        text = str(value).strip()
    text = text.replace("\r\n", "\n").replace("\n", "\\n").replace("\t", " ")
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text
