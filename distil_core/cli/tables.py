"""Plain-text tables for the terminal: what ``distil train``, ``eval``, ``plugins`` and ``bench`` print."""

from __future__ import annotations

from typing import Sequence

__all__ = ["render_table"]


def render_table(rows: Sequence[Sequence[str]], left: tuple[int, ...] = (0,)) -> str:
    """``rows[0]`` is the header, underlined. Columns in ``left`` are text (left-aligned); the
    others are numbers (right-aligned), so their digits line up."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
