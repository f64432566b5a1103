"""Finding tool calls in a response.

Two formats, in any mix, taken in the order they appear:

Tag::

    <tool name="calculator">12 * (3 + 4)</tool>

The body, verbatim apart from surrounding blank lines and common indentation, is the tool's
input (a string). ``name`` may be quoted with ``"`` or ``'``; other attributes are ignored;
``<tool name="x"/>`` is a call with empty input.

JSON, in a fenced block whose info string is ``tool``::

    ```tool
    {"name": "python", "input": "print(2**10)"}
    ```

The block holds one JSON object with exactly the keys ``name`` (a string) and ``input`` (a
string or an object). Tags inside a ``tool`` block belong to its JSON and are not calls.

Anything that starts like a call but is not a valid one — a tag without ``name`` or without
``</tool>``, a block with invalid JSON, missing or extra keys, an unclosed fence — becomes a
:class:`ToolCall` with ``error`` set, so the model can be told what was wrong.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass
from typing import Optional, Union

_TAG_OPEN = re.compile(r"<tool\b(?P<attrs>[^<>]*?)(?P<selfclose>/?)>")
_TAG_CLOSE = "</tool>"
_NAME_ATTR = re.compile(r"""\bname\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s"'/>]+))""")
_FENCE_OPEN = re.compile(r"^[ \t]*```[ \t]*tool[ \t]*\r?$", re.MULTILINE)
_FENCE_CLOSE = re.compile(r"^[ \t]*```[ \t]*\r?$", re.MULTILINE)
_VALID_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
RAW_EXCERPT = 200  # characters of a malformed call kept to show it


@dataclass(frozen=True)
class ToolCall:
    """One call found in a response; ``error`` is set when it is malformed."""

    name: Optional[str]
    input: Union[str, dict, None]
    format: str  # "tag" or "json"
    start: int  # character offsets in the response
    end: int
    error: Optional[str] = None
    raw: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_calls(text: str) -> list[ToolCall]:
    """Every tool call in ``text``, well-formed or not, in order of appearance."""
    calls = _fenced_calls(text)
    blocks = [(c.start, c.end) for c in calls]
    calls.extend(c for c in _tag_calls(text) if not any(s <= c.start < e for s, e in blocks))
    return sorted(calls, key=lambda c: c.start)


def _tag_calls(text: str) -> list[ToolCall]:
    calls: list[ToolCall] = []
    pos = 0
    while True:
        match = _TAG_OPEN.search(text, pos)
        if match is None:
            return calls
        start, attrs = match.start(), match.group("attrs")
        name_match = _NAME_ATTR.search(attrs)
        name = None
        if name_match:
            name = next(g for g in (name_match.group("dq"), name_match.group("sq"), name_match.group("bare")) if g is not None)
        if match.group("selfclose"):
            end, body, closed = match.end(), "", True
        else:
            close = text.find(_TAG_CLOSE, match.end())
            closed = close >= 0
            end = close + len(_TAG_CLOSE) if closed else len(text)
            body = text[match.end():close] if closed else text[match.end():]
        raw = text[start:end]
        error = None
        if name is None:
            error = 'the <tool> tag has no name attribute; write <tool name="calculator">…</tool>'
        elif not _VALID_NAME.match(name):
            error = f"the tool name {name!r} is not valid (letters, digits, '_', '.', '-')"
        elif not closed:
            error = f'the <tool name="{name}"> tag is not closed with </tool>'
        calls.append(ToolCall(name, None if error else _clean_body(body), "tag", start, end, error, raw[:RAW_EXCERPT]))
        # An unclosed tag swallows the rest, so no call can follow it.
        pos = end if closed else len(text)


def _fenced_calls(text: str) -> list[ToolCall]:
    calls: list[ToolCall] = []
    pos = 0
    while True:
        opening = _FENCE_OPEN.search(text, pos)
        if opening is None:
            return calls
        body_start = opening.end() + 1
        closing = _FENCE_CLOSE.search(text, body_start) if body_start <= len(text) else None
        if closing is None:
            raw = text[opening.start():]
            calls.append(ToolCall(None, None, "json", opening.start(), len(text),
                                  "the ```tool block is not closed with ```", raw[:RAW_EXCERPT]))
            return calls
        body = text[body_start:closing.start()]
        raw = text[opening.start():closing.end()]
        name, value, error = _decode_json_call(body)
        calls.append(ToolCall(name, value, "json", opening.start(), closing.end(), error, raw[:RAW_EXCERPT]))
        pos = closing.end()


def _decode_json_call(body: str) -> tuple[Optional[str], Union[str, dict, None], Optional[str]]:
    example = 'write {"name": "calculator", "input": "2 + 2"}'
    if not body.strip():
        return None, None, f"the ```tool block is empty; {example}"
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return None, None, f"the ```tool block is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    if not isinstance(obj, dict):
        return None, None, f"the ```tool block holds a JSON {type(obj).__name__}, not an object; {example}"
    name = obj.get("name")
    extra = sorted(set(obj) - {"name", "input"})
    if extra:
        listed = ", ".join(json.dumps(k) for k in extra)
        return _str_or_none(name), None, f'unexpected key {listed} in the tool call; it has exactly "name" and "input"'
    if not isinstance(name, str) or not name:
        return None, None, f'the tool call has no "name" string; {example}'
    if not _VALID_NAME.match(name):
        return name, None, f"the tool name {name!r} is not valid (letters, digits, '_', '.', '-')"
    if "input" not in obj:
        return name, None, f'the call to {name!r} has no "input"; {example}'
    value = obj["input"]
    if not isinstance(value, (str, dict)):
        return name, None, f'the "input" of the call to {name!r} is a JSON {type(value).__name__}; give a string or an object'
    return name, value, None


def _str_or_none(value: object) -> Optional[str]:
    return value if isinstance(value, str) and _VALID_NAME.match(value) else None


def _clean_body(body: str) -> str:
    lines = body.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return textwrap.dedent("\n".join(lines)).rstrip()
