"""Where two config dumps differ, key by key.

Two checks compare configs: ``--resume`` (what a resumed run may not change) and ``distil
bench`` (what the methods of one suite must share). Both want the same answer, named down to
the leaf (``task.options.length``, not two whole ``task`` sections), so it is computed here once.
"""

from __future__ import annotations

from typing import Any


def leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key → value for every mapping leaf under ``prefix``; a list or an empty mapping is
    one leaf (compared whole)."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every leaf that differs, sorted by key; a key
    that only one side has is given as None on the other."""
    old, new = leaves(a, prefix), leaves(b, prefix)
    missing = object()
    changed = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            changed.append((key, None if before is missing else before, None if after is missing else after))
    return changed


__all__ = ["leaves", "differences"]
