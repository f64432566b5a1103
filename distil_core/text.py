"""Text every encoder takes: what makes a Python string hold something that is not text, undone.

A Python string can hold a lone UTF-16 surrogate: a JSON escape of half a surrogate pair
(``"\\ud83d"``, an emoji cut in two by a client or a log), or a byte that is not UTF-8 smuggled
in from a path, an argument or standard input by Python's ``surrogateescape``. No UTF-8 encoder
takes one, so the first write of such a string fails: to a tracker, to SQLite, to a page or a
JSON reply, to a source file a sandbox runs. :func:`as_text` is the one repair, applied where
such text enters; a reader that must refuse it instead (a dataset record) searches for
:data:`SURROGATE`.
"""

from __future__ import annotations

import re

SURROGATE = re.compile("[\ud800-\udfff]")
"""A surrogate code point: in a Python string, never half of a real character."""


def as_text(value: str) -> str:
    """``value`` with each lone surrogate made U+FFFD (the same object when it holds none).

    Bytes that ``surrogateescape`` smuggled in are re-read as UTF-8 first, so an escaped
    sequence that does spell a character comes back as that character; a pair of surrogates
    written as two code points is joined into the character it spells. A string that holds
    both kinds is repaired by the second way alone: its escaped bytes become U+FFFD too.
    """
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def shown_safely(message: str) -> str:
    """``message`` with its control and format characters written as escapes, for a terminal: a
    message can quote a remote server's or a plugin's words, and an escape sequence in them must
    not retitle, clear or recolour the user's terminal, nor a bidirectional override reorder what
    it shows. Line breaks and tabs stay."""
    import unicodedata

    return "".join(ascii(c)[1:-1] if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf") else c
                   for c in message)


__all__ = ["SURROGATE", "as_text", "shown_safely"]
