"""Text from outside (a run's logs, the command line, a browser's form) made safe to show and store.

A Python string can hold what is not text: a lone UTF-16 surrogate, from a JSON log's escaped
half of a surrogate pair (``"\\ud83d"``, a truncated emoji) or from a byte that is not UTF-8
in a path, an argument or an environment variable (Python's ``surrogateescape``). Neither
UTF-8 (every page and JSON reply the desk sends) nor SQLite can hold it, so the first use of
such a string fails. The readers here turn it into U+FFFD once, where it enters
(:func:`distil_core.text.as_text`), so that nothing downstream has to care.

What either front end shows comes from outside too: a model's response, a program's output in
code-exec feedback, an imported correction. :func:`shown_escaped` shows their control characters
and direction marks as escapes. On a terminal, ESC begins the sequences that move the cursor,
hide text, set the window title or write the clipboard, and CR overwrites a line. On a page as
on a terminal, a direction override (U+202E) reverses what follows it: a response ending
"passed \\u202edeliaf" reads "passed failed" to a reviewer who is never shown the override.

A reviewer's name is also made plain: one line, no control or direction-override characters
(U+202E would reverse the text shown after the name), compatibility forms folded by NFKC
(fullwidth "Ａｄａ" is "Ada"), so that one person is one name in the store.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable, Optional

from distil_core import as_text
from distil_core.run_files import json_line as read_json_line

MAX_AUTHOR = 200  # characters of a reviewer's name

_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # how a JSON line spells a surrogate
_SPACES = re.compile(r"\s+")


def clean(value: Any) -> Any:
    """A value read from JSON with :func:`as_text` applied to every string in it, keys too.

    Containers are changed in place, without recursion (a record may nest deeply)."""
    if isinstance(value, str):
        return as_text(value)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            pairs = [(as_text(k) if isinstance(k, str) else k, v) for k, v in item.items()]
            item.clear()
            for key, sub in pairs:
                item[key] = as_text(sub) if isinstance(sub, str) else sub
                if isinstance(sub, (dict, list)):
                    stack.append(sub)
        elif isinstance(item, list):
            for index, sub in enumerate(item):
                if isinstance(sub, str):
                    item[index] = as_text(sub)
                elif isinstance(sub, (dict, list)):
                    stack.append(sub)
    return value


def json_line(line: str, check: Optional[Callable[[Any], Optional[str]]] = None) -> Any:
    """The value of one line of a JSON log, its strings made text (:func:`clean`).

    A line that is not JSON (``distil_core.run_files.json_line``), or whose value ``check`` (given
    the value as read, lone surrogates and all) says something is wrong with, is a ValueError
    saying what; the caller places it at ``file:line``."""
    value = read_json_line(line.rstrip("\n"))  # a half line's own break is no "control character" in it
    problem = check(value) if check is not None else None
    if problem:
        raise ValueError(problem)
    return clean(value) if _ESCAPED_SURROGATE.search(line) else value


_UNSAFE_TO_SHOW = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]|\r(?!\n)")
"""C0 and C1 controls but newline, tab and a CR ending a line; DEL; the direction marks and overrides."""


def shown_escaped(text: str) -> str:
    """``text`` as a reviewer should see it, on a terminal or a page: each control character (newlines,
    tabs and CRLF kept) and each direction mark or override shown as its Python escape (``\\x1b``,
    ``\\r``, ``\\u202e``), so that it neither acts on the terminal nor reorders what is read."""
    return _UNSAFE_TO_SHOW.sub(lambda found: ascii(found.group())[1:-1], text)


def author_name(value: str) -> str:
    """A reviewer's name as stored and shown: NFKC, one line, without control, format (direction
    overrides, zero-width) or lone-surrogate characters, spaces collapsed."""
    text = unicodedata.normalize("NFKC", as_text(value))
    text = "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf"))
    return _SPACES.sub(" ", text).strip()


def skipped_note(skipped: list[str], limit: int = 5) -> str:
    """``note: skipped N unreadable line(s): FILE:LINE: what; ...`` for the lines a reader left out."""
    more = f"; and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"note: skipped {len(skipped)} unreadable line(s): {'; '.join(skipped[:limit])}{more}"


def is_text(value: str) -> bool:
    """Whether ``value`` holds no lone surrogate (UTF-8, and so SQLite, can hold it)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
