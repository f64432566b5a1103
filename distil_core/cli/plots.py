"""The plots of ``distil bench`` (held-out metric vs rollouts consumed, response length vs
step), and what every plotting command shares: matplotlib, and writing a figure.

matplotlib is an optional dependency (``distil-toolkit[bench]``); :func:`require_matplotlib`
is called before any work starts (``distil bench`` calls it before the runs), so a missing
install is reported before hours of training, not after. Every figure is written atomically
(:mod:`distil_core.io`) by :func:`save_figure`; ``distil plot`` (:mod:`distil_core.cli.curves`)
draws with the same two.
"""

from __future__ import annotations

import os
import statistics
from typing import Any, Optional

from distil_core.cli.report import mean_std
from distil_core.errors import ConfigError, DistilError
from distil_core.io import atomic_file

__all__ = ["FIGURE_FORMATS", "figure_format", "require_matplotlib", "save_figure", "plot_curves"]


def require_matplotlib(command: str = "distil bench") -> Any:
    """``matplotlib.pyplot`` on the non-interactive backend, or a DistilError saying what to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DistilError(f"{command} draws its plots with matplotlib, which is not installed: "
                          "pip install 'distil-toolkit[bench]'.") from None
    return plt


def plot_curves(rows: list[dict[str, Any]], metric: str, out_dir: str,
                per_step: Optional[dict[str, int]] = None) -> dict[str, str]:
    """Per suite: held-out ``metric`` vs rollouts consumed (``per_step`` rollouts a step; steps
    when not given), mean over seeds with a ±std band; and response length vs step."""
    per_step = per_step or {}
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    paths = {}
    for suite in dict.fromkeys(r["suite"] for r in rows):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        for method in dict.fromkeys(r["method"] for r in rows if r["suite"] == suite):
            runs = [r for r in rows if r["suite"] == suite and r["method"] == method]
            _plot_method(ax, runs, method, metric, per_step.get(suite, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("rollouts consumed" if per_step else "training step")
        ax.set_ylabel(f"held-out {metric} (%)")
        ax.set_title(f"{suite}: {metric} vs rollouts (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths[suite] = save_figure(plt, fig, os.path.join(out_dir, f"bench-{suite}.png"))
        length_plot = _plot_lengths(plt, rows, suite, out_dir)
        if length_plot:
            paths[f"{suite}:length"] = length_plot
    return paths


def _plot_method(ax: Any, runs: list[dict[str, Any]], method: str, metric: str, per_step: int) -> None:
    """One method's mean curve over its seeds, with a ±std band."""
    steps = sorted({p["step"] for r in runs for p in r["curve"] if metric in p})
    if not steps:
        return
    means, stds = [], []
    for step in steps:
        vals = [100 * p[metric] for r in runs for p in r["curve"] if p["step"] == step and metric in p]
        m, s = mean_std(vals)
        means.append(m)
        stds.append(s)
    xs = [step * per_step for step in steps]
    line, = ax.plot(xs, means, marker="o", markersize=3, label=method)
    ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                    color=line.get_color(), alpha=0.15, linewidth=0)


def _plot_lengths(plt: Any, rows: list[dict[str, Any]], suite: str, out_dir: str) -> Optional[str]:
    mine = [r for r in rows if r["suite"] == suite and r.get("response_tokens")]
    if not mine:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for method in dict.fromkeys(r["method"] for r in mine):
        runs = [r for r in mine if r["method"] == method]
        steps = sorted({s for r in runs for s, _ in r["response_tokens"]})
        means = [statistics.fmean(v for r in runs for s, v in r["response_tokens"] if s == step) for step in steps]
        ax.plot(steps, means, label=method, linewidth=1.2)
    refs = [r["reference_tokens"] for r in mine if r.get("reference_tokens")]
    if refs:
        ref = statistics.fmean(refs)
        ax.axhline(ref, color="black", linestyle="--", linewidth=1, label="reference")
        ax.axhspan(0.8 * ref, 1.2 * ref, color="gray", alpha=0.12, linewidth=0)
    ax.set_xlabel("training step")
    ax.set_ylabel("mean response tokens")
    ax.set_title(f"{suite}: response length (band: reference ± 20 %)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(plt, fig, os.path.join(out_dir, f"bench-{suite}-length.png"))


FIGURE_FORMATS = ("png", "pdf", "svg")
"""What a plot may be written as, named by the file's suffix (none: PNG)."""


def figure_format(path: str, flag: str = "--output") -> str:
    """The format ``path``'s suffix names; any suffix but those of :data:`FIGURE_FORMATS` is a
    ConfigError naming ``flag``, given before anything is drawn (a ``.pdf`` file of PNG bytes, or
    a ``.json`` one, is no use to anyone)."""
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    if not suffix or suffix in FIGURE_FORMATS:
        return suffix or "png"
    raise ConfigError(f"{flag} {path!r}: a plot is written as " + ", ".join(f".{f}" for f in FIGURE_FORMATS)
                      + " (the file's suffix chooses); name the file with one of them.")


def save_figure(plt: Any, fig: Any, path: str, *, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> str:
    """Write ``fig`` to ``path`` in the format its suffix names (:func:`figure_format`), whole or
    not at all, and free it; the panels are laid out tightly within ``rect`` (figure fractions:
    room left outside it for a figure legend)."""
    try:
        kind = figure_format(path)
        fig.tight_layout(rect=rect)
        with atomic_file(path) as fh:
            fig.savefig(fh, format=kind)
    finally:
        plt.close(fig)
    return path
