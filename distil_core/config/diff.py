"""Where two config dumps differ, key by key.

Two checks compare configs: ``--resume`` (what a resumed run may not change) and ``distil
bench`` (what the methods of one suite must share). Both want the same answer, named down to
the leaf (``task.options.length``, not two whole ``task`` sections), so it is computed here once.
Where one side holds a section and the other a value, or nothing, the section is reported whole
at its key; a key one side lacks is reported as :data:`ABSENT`.
"""

from __future__ import annotations

from typing import Any


class _Absent:
    """The value of a key one side does not hold (shown as such, never as null)."""

    def __repr__(self) -> str:
        return "(not set)"


ABSENT = _Absent()


def differences(a: Any, b: Any, prefix: str = "", *, null_is_absent: bool = False) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every place where ``a`` and ``b`` differ,
    sorted by key. ``null_is_absent``: a key set to null on one side and missing on the other
    is no difference (a component's option left to its default, written out or not)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(a.keys() | b.keys(), key=str):
            out += differences(a.get(key, ABSENT), b.get(key, ABSENT), f"{prefix}.{key}" if prefix else str(key),
                               null_is_absent=null_is_absent)
        return out
    if null_is_absent:
        a, b = (ABSENT if value is None else value for value in (a, b))
    return [] if a == b else [(prefix, a, b)]


__all__ = ["ABSENT", "differences"]
