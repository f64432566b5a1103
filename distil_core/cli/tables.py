"""Plain-text tables for the terminal: what ``distil train``, ``eval``, ``plugins`` and ``bench`` print."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["render_table", "render_before_after", "time_breakdown"]


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


def render_before_after(summary: dict[str, Any]) -> str:
    """The table ``distil train`` ends with: each metric of ``summary.json`` before and after training."""
    ev = summary["eval"]
    head = (f"Held-out {summary['task']}: {ev['problems']} problems × {ev['samples']} samples, "
            f"{summary['method']} for {summary['steps']} steps ({time_breakdown(summary)})")
    rows = [("metric (%)", "before", "after", "change")]
    for key in summary["before"]:
        b, a = summary["before"][key], summary["after"][key]
        rows.append((key, f"{100 * b:.1f}", f"{100 * a:.1f}", f"{100 * (a - b):+.1f}"))
    return head + "\n" + render_table(rows)


def time_breakdown(summary: dict[str, Any]) -> str:
    """'412 s: setup 200 s, training 150 s, evaluation 62 s' — setup is building or loading the
    models (a first run builds the tiny base); a resumed run's parts are its last session's."""
    parts = summary.get("time_s") or {}
    if not parts:
        return f"{summary['wall_s']:.0f} s"
    names = {"setup": "setup", "train": "training", "eval": "evaluation"}
    split = ", ".join(f"{names[k]} {parts[k]:.0f} s" for k in names if k in parts)
    session = sum(parts.values())
    if abs(session - summary["wall_s"]) > 1.0:  # earlier sessions: a resumed run
        return f"{summary['wall_s']:.0f} s in all; this session {split}"
    return f"{summary['wall_s']:.0f} s: {split}"
