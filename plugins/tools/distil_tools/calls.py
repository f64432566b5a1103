"""Finding tool calls in a response.

Two formats, in any mix, taken in the order they appear:

Tag::

    <tool name="calculator">12 * (3 + 4)</tool>

The body, verbatim apart from surrounding blank lines and common indentation, is the tool's
input (a string). ``name`` may be quoted with ``"`` or ``'``; other attributes are ignored
(and only the attribute called ``name`` names the tool, not ``data-name`` or a value holding ``name=``);
``<tool name="x"/>`` is a call with empty input.

JSON, in a fenced block whose info string is ``tool``::

    ```tool
    {"name": "python", "input": "print(2**10)"}
    ```

The block holds one JSON object with exactly the keys ``name`` (a string) and ``input`` (a
string or an object). Whichever call opens first owns what lies inside it: tags inside a
``tool`` block belong to its JSON, and a ``tool`` block inside a closed tag to the tag's input.
``<tool-use>``, ``<tool:call>`` and the like are other markup, not calls.

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

from distil_core import as_text

# `<tool` then a space, `/` or `>`: `<tool-use …>`, `<tool:call>` and `<tool.result>` are other markup.
_TAG_OPEN = re.compile(r"<tool(?=[\s/>])(?P<attrs>[^<>]*?)(?P<selfclose>/?)>")
_TAG_CLOSE = "</tool>"
# One attribute: a key, then maybe `=` and a value in "…", '…' or bare. Read one after another,
# so `data-name="python"` and `title="name=python"` are attributes of their own, never `name`.
_ATTR = re.compile(r"""\s*(?P<key>[^\s"'=<>/]+)(?:\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s"'=<>/]+)))?""")
_FENCE_OPEN = re.compile(r"^[ \t]*```[ \t]*tool[ \t]*\r?$", re.MULTILINE)
_FENCE_CLOSE = re.compile(r"^[ \t]*```[ \t]*\r?$", re.MULTILINE)
_VALID_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
RAW_EXCERPT = 200  # characters of a malformed call kept to show it
SHOWN_NAME = 40  # characters of an invalid name or an unexpected key quoted in an error
SHOWN_KEYS = 5  # unexpected keys listed in an error


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
    """Every tool call in ``text``, well-formed or not, in order of appearance.

    Whichever call opens first owns what lies inside it: a tag inside a ```tool block is part of
    its JSON, and a ```tool block inside a closed tag is part of the tag's input — run once, as
    the tag's, not a second time on its own.
    """
    fenced = _fenced_calls(text)
    tags, closed = _tag_calls(text, [(c.start, c.end) for c in fenced])
    fenced = [c for c in fenced if not any(s < c.start < e for s, e in closed)]
    return sorted(fenced + tags, key=lambda c: c.start)


def _tag_calls(text: str, blocks: list[tuple[int, int]]) -> tuple[list[ToolCall], list[tuple[int, int]]]:
    """The tags outside ``blocks`` (the spans of the ```tool blocks), and the spans of those
    that are closed."""
    calls: list[ToolCall] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    while True:
        match = _TAG_OPEN.search(text, pos)
        if match is None:
            return calls, spans
        inside = next((e for s, e in blocks if s <= match.start() < e), None)
        if inside is not None:
            pos = inside
            continue
        start, attrs = match.start(), match.group("attrs")
        name = _name_attribute(attrs)
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
            error, name = _invalid_name(name), None  # the error quotes it, cut: it can be any length
        elif not closed:
            error = f'the <tool name="{name}"> tag is not closed with </tool>'
        calls.append(ToolCall(name, None if error else _clean_body(body), "tag", start, end, error, raw[:RAW_EXCERPT]))
        if closed:
            spans.append((start, end))
        # An unclosed tag swallows the rest, so no call can follow it.
        pos = end if closed else len(text)


def _name_attribute(attrs: str) -> Optional[str]:
    """The value of the tag's ``name`` attribute (the first, if it is given twice), or None.

    The attributes are read in turn, each with its quoted value, so text that merely contains
    ``name=`` — another attribute's name (``data-name``) or value (``title="name=python"``) —
    cannot choose the tool. Reading stops at text that is no attribute (a stray quote).
    """
    pos = 0
    while pos < len(attrs) and attrs[pos:].strip():
        match = _ATTR.match(attrs, pos)
        if match is None:
            return None
        if match.group("key") == "name":
            return next((v for v in (match.group("dq"), match.group("sq"), match.group("bare")) if v is not None), None)
        pos = match.end()
    return None


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
    except RecursionError:  # valid JSON nested past the interpreter's depth
        return None, None, f"the ```tool block nests its JSON too deeply to read; {example}"
    except ValueError:  # an integer of more digits than Python converts
        return None, None, f"the ```tool block holds a number of more digits than can be read; {example}"
    if not isinstance(obj, dict):
        return None, None, f"the ```tool block holds a JSON {type(obj).__name__}, not an object; {example}"
    name = obj.get("name")
    extra = sorted(set(obj) - {"name", "input"})
    if extra:
        listed = ", ".join(json.dumps(_cut(k), ensure_ascii=False) for k in extra[:SHOWN_KEYS])
        if len(extra) > SHOWN_KEYS:
            listed += f" and {len(extra) - SHOWN_KEYS} more"
        return _str_or_none(name), None, f'unexpected key {listed} in the tool call; it has exactly "name" and "input"'
    if not isinstance(name, str) or not name:
        return None, None, f'the tool call has no "name" string; {example}'
    if not _VALID_NAME.match(name):
        return None, None, _invalid_name(name)
    if "input" not in obj:
        return name, None, f'the call to {name!r} has no "input"; {example}'
    value = obj["input"]
    if not isinstance(value, (str, dict)):
        return name, None, f'the "input" of the call to {name!r} is a JSON {type(value).__name__}; give a string or an object'
    return name, _whole(value), None


def _whole(value: Union[str, dict]) -> Union[str, dict]:
    """``value`` with each lone surrogate made U+FFFD. JSON spells half a character as
    ``"\\ud83d"``; passed on as it is, no tool could encode its input (the python tool's sandbox
    refused the job, the calculator failed with UnicodeEncodeError) and the feedback named the
    encoding instead of the input."""
    if isinstance(value, str):
        return as_text(value)
    text = json.dumps(value, ensure_ascii=False)
    whole = as_text(text)
    return value if whole is text else json.loads(whole)


def _invalid_name(name: str) -> str:
    return f"the tool name {_cut(name)!r} is not valid (letters, digits, '_', '.', '-'; at most 64)"


def _cut(text: str) -> str:
    """``text`` cut to :data:`SHOWN_NAME` characters: a response can hold a name or key of any
    length, and the error quoting it is feedback with a length budget."""
    return text if len(text) <= SHOWN_NAME else text[: SHOWN_NAME - 1] + "…"


def _str_or_none(value: object) -> Optional[str]:
    return value if isinstance(value, str) and _VALID_NAME.match(value) else None


def _clean_body(body: str) -> str:
    lines = body.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return textwrap.dedent("\n".join(lines)).rstrip()
