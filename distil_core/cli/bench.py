"""``distil bench``: every method on the same suites, seeds and rollout budget; tables and plots.

A bench spec (YAML; the embedded one is :data:`DEFAULT_SPEC`) names

- ``suites``: per suite, a run config (``config``, optional, relative to the spec file) and
  dotted overrides (``set``) — the task, verifier, feedback sources and sizes;
- ``methods``: per label, the ``method`` and its own overrides (``jsd``: ``loss.beta: 0.5``);
- ``seeds``; ``common``: overrides every run shares — the rollout budget (steps × problems
  per step × samples per problem), the evaluation and how often it runs;
- ``quick``: what ``--quick`` changes (fewer seeds, steps and eval problems) for a smoke test.

Runs go to ``OUTPUT_DIR/<suite>/<method>/seed<k>/`` (ordinary run directories). A run whose
``summary.json`` exists under the same resolved config is reused, so an interrupted bench
continues where it stopped; a directory with another config is refused rather than mixed in.
Results: ``bench.json`` (every run's before/after and curve), ``bench.md`` (mean ± std over
seeds per suite and method) and ``bench-<suite>.png`` (held-out metric vs step).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from typing import Any, Callable, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distil_core.io import atomic_write_bytes, atomic_write_json
from distil_core.config import Method, RunConfig, format_validation_error, load_config
from distil_core.errors import ConfigError, DistilError

DEFAULT_SPEC = os.path.join(os.path.dirname(__file__), "bench.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteSpec(_Strict):
    config: Optional[str] = Field(default=None, description="A run config file, relative to the spec file.")
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides, e.g. rollout.max_new_tokens: 8")
    description: str = ""


class MethodSpec(_Strict):
    method: Method
    set: dict[str, Any] = Field(default_factory=dict)


class QuickSpec(_Strict):
    seeds: Optional[list[int]] = None
    set: dict[str, Any] = Field(default_factory=dict)


class BenchSpec(_Strict):
    suites: dict[str, SuiteSpec]
    methods: dict[str, MethodSpec]
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    common: dict[str, Any] = Field(default_factory=dict)
    quick: QuickSpec = Field(default_factory=QuickSpec)
    plot_metric: str = "pass@1"


def load_spec(path: Optional[str] = None) -> tuple[BenchSpec, str]:
    """The spec at ``path`` (default: the embedded one) and the directory its paths are relative to."""
    path = path or DEFAULT_SPEC
    if not os.path.exists(path):
        raise ConfigError(f"Bench spec {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the bench spec ({' '.join(str(exc).split())}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with suites, methods, seeds, common.")
    try:
        spec = BenchSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path)) from None
    if not spec.suites or not spec.methods:
        raise ConfigError(f"{path}: name at least one suite and one method.")
    return spec, os.path.dirname(os.path.abspath(path))


def _overrides(values: dict[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


class Bench:
    """Plans and runs a bench; :meth:`run` returns the rows written to ``bench.json``."""

    def __init__(
        self,
        spec: BenchSpec,
        base_dir: str,
        output_dir: str,
        *,
        quick: bool = False,
        suites: Optional[list[str]] = None,
        methods: Optional[list[str]] = None,
        seeds: Optional[list[int]] = None,
        overrides: Optional[list[str]] = None,
        echo: Callable[[str], None] = print,
    ):
        self.spec, self.base_dir, self.output_dir = spec, base_dir, output_dir
        self.quick, self.echo = quick, echo
        self.suites = self._pick("suite", suites, list(spec.suites))
        self.methods = self._pick("method", methods, list(spec.methods))
        self.seeds = seeds or (spec.quick.seeds if quick and spec.quick.seeds else spec.seeds)
        self.user_overrides = list(overrides or [])
        self.revision: Optional[str] = None
        self.configs = {(s, m, k): self.config_for(s, m, k) for s in self.suites for m in self.methods for k in self.seeds}

    @staticmethod
    def _pick(kind: str, wanted: Optional[list[str]], known: list[str]) -> list[str]:
        if not wanted:
            return known
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ConfigError(f"distil bench: unknown {kind} {', '.join(map(repr, unknown))}; the spec has {', '.join(known)}.")
        return list(wanted)

    def config_for(self, suite: str, method: str, seed: int) -> RunConfig:
        s, m = self.spec.suites[suite], self.spec.methods[method]
        path = os.path.join(self.base_dir, s.config) if s.config else None
        items = (
            _overrides(self.spec.common) + _overrides(s.set) + [f"method={m.method}"] + _overrides(m.set)
            + [f"seed={seed}"] + (_overrides(self.spec.quick.set) if self.quick else []) + self.user_overrides
            + ["train.progress=false"]
        )
        try:
            return load_config(path, items)
        except ConfigError as exc:
            raise ConfigError(f"distil bench, suite {suite!r}, method {method!r}: {exc}") from None

    def run_dir(self, suite: str, method: str, seed: int) -> str:
        return os.path.join(self.output_dir, suite, method, f"seed{seed}")

    def budget(self, suite: str) -> dict[str, int]:
        """The rollout budget every method of ``suite`` gets (the same for each: checked)."""
        seen = {}
        for (s, m, k), cfg in self.configs.items():
            if s != suite:
                continue
            b = {"steps": cfg.train.steps, "problems_per_step": cfg.rollout.problems_per_step,
                 "samples_per_problem": cfg.rollout.samples_per_problem, "max_new_tokens": cfg.rollout.max_new_tokens,
                 "eval_problems": cfg.eval.problems, "eval_samples": cfg.eval.samples}
            b["rollouts"] = b["steps"] * b["problems_per_step"] * b["samples_per_problem"]
            seen[m] = b
        budgets = {json.dumps(b, sort_keys=True) for b in seen.values()}
        if len(budgets) > 1:
            raise ConfigError(
                f"distil bench: the methods of suite {suite!r} would not get the same rollout budget "
                f"({', '.join(f'{m}: {b}' for m, b in seen.items())}); move budget keys from a method's `set` to `common`."
            )
        return next(iter(seen.values()))

    def run(self) -> list[dict[str, Any]]:
        from distil_core.training.trainer import Trainer

        for suite in self.suites:
            self.budget(suite)
        plan = list(self.configs.items())
        self.prepare()
        started = time.time()
        rows = []
        for i, ((suite, method, seed), config) in enumerate(plan, 1):
            run_dir = self.run_dir(suite, method, seed)
            summary = self._reusable(run_dir, config)
            label = f"[{i}/{len(plan)}] {suite} · {method} · seed {seed}"
            if summary is None:
                if os.path.isdir(run_dir):
                    shutil.rmtree(run_dir)  # an interrupted run: start it again
                self.echo(f"{label}: training ({config.train.steps} steps)…")
                t0 = time.time()
                summary = Trainer(config, run_dir=run_dir, echo=lambda _m: None).fit()
                done = f"{time.time() - t0:.0f} s"
            else:
                done = "reused"
            rows.append(self._row(suite, method, seed, run_dir, summary))
            metric = self.spec.plot_metric
            b, a = summary["before"].get(metric), summary["after"].get(metric)
            change = f"{metric} {100 * b:.1f} → {100 * a:.1f}" if b is not None and a is not None else ""
            left = len(plan) - i
            eta = (time.time() - started) / i * left if left else 0.0
            self.echo(f"{label}: {change} ({done}; {left} left, ~{eta / 60:.0f} min)")
        return rows

    def prepare(self) -> None:
        """Build each suite's tiny base model (if the runs use one) before the runs, so it is
        built once and no run's wall time includes it."""
        from distil_core.plugin_host import get_host
        from distil_core.training.runtime import build_component, ensure_tiny_base

        done = set()
        for (suite, _method, _seed), config in self.configs.items():
            if config.model.name != "tiny" or suite in done:
                continue
            done.add(suite)
            host = get_host()
            task = build_component(host, "task", config.task.name, config.task.options)
            self.echo(f"{suite}: preparing the tiny base model (built once, then cached)…")
            ensure_tiny_base(config, task, progress=False, host=host)

    @staticmethod
    def _reusable(run_dir: str, config: RunConfig) -> Optional[dict[str, Any]]:
        summary_path, config_path = os.path.join(run_dir, "summary.json"), os.path.join(run_dir, "config.yaml")
        if not os.path.exists(summary_path):
            return None
        try:
            with open(config_path, encoding="utf-8") as fh:
                saved = RunConfig.model_validate(yaml.safe_load(fh)).model_dump(mode="json")
        except (OSError, yaml.YAMLError, ValidationError):
            saved = None  # unreadable, or written by an incompatible version: not the same run
        if saved != config.model_dump(mode="json"):
            raise ConfigError(
                f"{run_dir} holds a finished run with a different config; give distil bench another "
                "--output-dir, or delete that directory to run it again."
            )
        with open(summary_path, encoding="utf-8") as fh:
            return json.load(fh)

    @staticmethod
    def _row(suite: str, method: str, seed: int, run_dir: str, summary: dict[str, Any]) -> dict[str, Any]:
        curve = []
        eval_path = os.path.join(run_dir, "eval.jsonl")
        if os.path.exists(eval_path):
            with open(eval_path, encoding="utf-8") as fh:
                for line in fh:
                    rec = json.loads(line)
                    curve.append({"step": rec["step"], **{k: v for k, v in rec.items() if "@" in k}})
        lengths = []
        metrics_path = os.path.join(run_dir, "metrics.jsonl")
        if os.path.exists(metrics_path):
            with open(metrics_path, encoding="utf-8") as fh:
                lengths = [[rec["step"], rec["response_tokens"]] for rec in map(json.loads, fh) if "response_tokens" in rec]
        return {"suite": suite, "method": method, "seed": seed, "run_dir": run_dir, "wall_s": summary["wall_s"],
                "before": summary["before"], "after": summary["after"], "curve": curve,
                "response_tokens": lengths, "reference_tokens": summary.get("reference_tokens")}


# -- aggregation and reports -------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """suite → method (and ``base``, the starting model) → metric → (mean, std, n)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for suite in dict.fromkeys(r["suite"] for r in rows):
        mine = [r for r in rows if r["suite"] == suite]
        table: dict[str, dict[str, Any]] = {}
        # The starting model is the same for every method of a seed; its eval uses the same seed.
        base_by_seed = {r["seed"]: r["before"] for r in mine}
        keys = list(next(iter(base_by_seed.values())))
        table["base"] = {k: (*mean_std([b[k] for b in base_by_seed.values() if k in b]), len(base_by_seed)) for k in keys}
        for method in dict.fromkeys(r["method"] for r in mine):
            runs = [r for r in mine if r["method"] == method]
            entry = {k: (*mean_std([r["after"][k] for r in runs if k in r["after"]]), len(runs)) for k in keys}
            entry["wall_s"] = (*mean_std([r["wall_s"] for r in runs]), len(runs))
            table[method] = entry
        out[suite] = table
    return out


def mean_curve(runs: list[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
    """(step, mean over seeds of ``metric``) at every step all runs evaluated."""
    steps = sorted(set.intersection(*({p["step"] for p in r["curve"] if metric in p} for r in runs))) if runs else []
    return [(step, statistics.fmean(p[metric] for r in runs for p in r["curve"] if p["step"] == step and metric in p))
            for step in steps]


def rollouts_to_reach(rows: list[dict[str, Any]], suite: str, target_method: str, metric: str,
                      rollouts_per_step: int) -> dict[str, Optional[int]]:
    """Per method: rollouts consumed when its mean ``metric`` curve first reaches ``target_method``'s
    final mean (None: never within the budget). The sample-efficiency view of the bench."""
    mine = [r for r in rows if r["suite"] == suite]
    target_runs = [r for r in mine if r["method"] == target_method]
    if not target_runs:
        return {}
    target = statistics.fmean(r["after"][metric] for r in target_runs)
    out: dict[str, Optional[int]] = {}
    for method in dict.fromkeys(r["method"] for r in mine):
        curve = mean_curve([r for r in mine if r["method"] == method], metric)
        reached = [step for step, value in curve if step > 0 and value >= target - 1e-12]
        out[method] = reached[0] * rollouts_per_step if reached else None
    return out


def final_lengths(rows: list[dict[str, Any]], suite: str, method: str, tail: float = 0.1) -> Optional[float]:
    """Mean response tokens over the last ``tail`` share of the steps, averaged over seeds."""
    values = []
    for r in rows:
        if r["suite"] == suite and r["method"] == method and r.get("response_tokens"):
            series = r["response_tokens"]
            last = series[-max(1, int(len(series) * tail)):]
            values.append(statistics.fmean(v for _, v in last))
    return statistics.fmean(values) if values else None


def table_metrics(keys: Any) -> list[str]:
    """The columns: avg@n, pass@k (by k), maj@n — what the eval measured (observed pass@n aside)."""
    def k(name: str) -> int:
        return int(name.split("@")[1]) if name.split("@")[1].isdigit() else 0

    avg = [m for m in keys if m.startswith("avg@")]
    passes = sorted((m for m in keys if m.startswith("pass@")), key=k)
    maj = [m for m in keys if m.startswith("maj@")]
    greedy = [m for m in keys if m.startswith("greedy@")]
    return avg + passes + maj + greedy


def _cell(value: tuple[float, float, int], pct: bool = True) -> str:
    mean, std, n = value
    if math.isnan(mean):
        return "–"
    scale = 100 if pct else 1
    return f"{scale * mean:.1f} ± {scale * std:.1f}" if n > 1 else f"{scale * mean:.1f}"


def render_markdown(bench: Bench, rows: list[dict[str, Any]], plots: dict[str, str], command: str) -> str:
    import torch

    agg = aggregate(rows)
    lines = [
        "# Head-to-head benchmark",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')} "
        f"({platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}"
        + (f", source {bench.revision}" if bench.revision else "") + ").",
        "",
        f"Every method trains the same starting model on the same suites with the same rollout budget; "
        f"seeds {', '.join(map(str, bench.seeds))} (a seed fixes the problem order and the sampling, so "
        "every method starts from the same first batch). Numbers are held-out percentages after training, "
        "mean ± sample standard deviation over seeds; `base` is the starting model, evaluated the same way. "
        "pass@k is the unbiased estimator, avg@n the mean correctness of n samples, maj@n the "
        "accuracy of the majority-voted answer; greedy@1 decodes each problem once greedily.",
        "",
        "| method | trains with | settings of its own |",
        "|---|---|---|",
        *(f"| {label} | `{m.method}` | " + (", ".join(f"`{k}: {json.dumps(v)}`" for k, v in m.set.items()) or "–") + " |"
          for label, m in bench.spec.methods.items() if label in bench.methods),
        "",
    ]
    for suite, table in agg.items():
        b = bench.budget(suite)
        desc = bench.spec.suites[suite].description
        lines += [f"## {suite}", ""]
        if desc:
            lines += [desc, ""]
        lines += [
            f"Budget per run: {b['steps']} steps × {b['problems_per_step']} problems × {b['samples_per_problem']} "
            f"samples = {b['rollouts']} rollouts (≤ {b['max_new_tokens']} new tokens each); held-out eval "
            f"{b['eval_problems']} problems × {b['eval_samples']} samples.",
            "",
        ]
        metrics = table_metrics(table["base"])
        header = ["method", *metrics, f"Δ {bench.spec.plot_metric} vs base", "wall s / run"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
        base = table["base"]
        for method, entry in table.items():
            cells = [_cell(entry[m]) for m in metrics]
            if method == "base":
                delta, wall = "", ""
            else:
                key = bench.spec.plot_metric
                delta = f"{100 * (entry[key][0] - base[key][0]):+.1f}" if key in entry else "–"
                wall = _cell(entry["wall_s"], pct=False)
            label = f"**{method}**" if method != "base" else "base"
            lines.append("| " + " | ".join([label, *cells, delta, wall]) + " |")
        lines.append("")
        lines += _efficiency_lines(bench, rows, suite, table)
        if suite in plots:
            lines += [f"![{bench.spec.plot_metric} vs rollouts on {suite}]({os.path.basename(plots[suite])})", ""]
        if f"{suite}:length" in plots:
            lines += [f"![response length vs step on {suite}]({os.path.basename(plots[suite + ':length'])})", ""]
    shown = [m for m in table_metrics(rows[0]["before"]) if m.startswith("pass@")]
    shown = shown[:1] + shown[-1:] if len(shown) > 1 else shown
    lines += ["## Every run", "", "| suite | method | seed | " + " | ".join(f"{m} before → after" for m in shown)
              + " | wall s |", "|---|---|---:|" + "---:|" * (len(shown) + 1)]
    for r in rows:
        cells = [f"{100 * r['before'].get(m, math.nan):.1f} → {100 * r['after'].get(m, math.nan):.1f}" for m in shown]
        lines.append(f"| {r['suite']} | {r['method']} | {r['seed']} | " + " | ".join(cells) + f" | {r['wall_s']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def _efficiency_lines(bench: Bench, rows: list[dict[str, Any]], suite: str, table: dict[str, Any]) -> list[str]:
    """Sample efficiency against GRPO and response length against the reference, per method."""
    b = bench.budget(suite)
    per_step = b["problems_per_step"] * b["samples_per_problem"]
    metric = bench.spec.plot_metric
    reach = rollouts_to_reach(rows, suite, "grpo", metric, per_step)
    refs = [r["reference_tokens"] for r in rows if r["suite"] == suite and r.get("reference_tokens")]
    ref = statistics.fmean(refs) if refs else None
    methods = [m for m in table if m != "base"]
    if not reach and ref is None:
        return []
    head = "| method | rollouts to reach grpo's final " + metric + " | vs grpo's budget | response tokens (last 10 % of steps) | vs reference |"
    lines = [head, "|---|---:|---:|---:|---:|"]
    for method in methods:
        got = reach.get(method) if reach else None
        cells = [f"{got}" if got is not None else ("–" if not reach else "not reached"),
                 f"{got / b['rollouts']:.2f}×" if got is not None else "–"]
        length = final_lengths(rows, suite, method)
        cells += [f"{length:.1f}" if length is not None else "–",
                  f"{length / ref:.2f}×" if length is not None and ref else "–"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if ref is not None:
        lines += ["", f"Reference responses average {ref:.1f} tokens (with the end token)."]
    return lines + [""]


def _matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DistilError("distil bench draws its plots with matplotlib: pip install 'distil-toolkit[bench]'.") from None
    return plt


def plot_curves(rows: list[dict[str, Any]], metric: str, out_dir: str,
                per_step: Optional[dict[str, int]] = None) -> dict[str, str]:
    """Per suite: held-out ``metric`` vs rollouts consumed (``per_step`` rollouts a step; steps
    when not given), mean over seeds with a ±std band; and response length vs step."""
    per_step = per_step or {}
    plt = _matplotlib()
    from matplotlib.ticker import MaxNLocator

    paths = {}
    for suite in dict.fromkeys(r["suite"] for r in rows):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        for method in dict.fromkeys(r["method"] for r in rows if r["suite"] == suite):
            runs = [r for r in rows if r["suite"] == suite and r["method"] == method]
            steps = sorted({p["step"] for r in runs for p in r["curve"] if metric in p})
            if not steps:
                continue
            means, stds = [], []
            for step in steps:
                vals = [100 * p[metric] for r in runs for p in r["curve"] if p["step"] == step and metric in p]
                m, s = mean_std(vals)
                means.append(m)
                stds.append(s)
            xs = [step * per_step.get(suite, 1) for step in steps]
            line, = ax.plot(xs, means, marker="o", markersize=3, label=method)
            ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("rollouts consumed" if per_step else "training step")
        ax.set_ylabel(f"held-out {metric} (%)")
        ax.set_title(f"{suite}: {metric} vs rollouts (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths[suite] = _save_figure(plt, fig, os.path.join(out_dir, f"bench-{suite}.png"))
        length_plot = _plot_lengths(plt, rows, suite, out_dir)
        if length_plot:
            paths[f"{suite}:length"] = length_plot
    return paths


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
    return _save_figure(plt, fig, os.path.join(out_dir, f"bench-{suite}-length.png"))


def _save_figure(plt: Any, fig: Any, path: str) -> str:
    """Write ``fig`` to ``path`` whole or not at all (a temporary file, then a rename)."""
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(bench: Bench, rows: list[dict[str, Any]], report_dir: str, command: str) -> dict[str, str]:
    """``bench.json``, ``bench.md`` and the plots in ``report_dir`` (each written atomically)."""
    os.makedirs(report_dir, exist_ok=True)
    per_step = {}
    for suite in dict.fromkeys(r["suite"] for r in rows):
        b = bench.budget(suite)
        per_step[suite] = b["problems_per_step"] * b["samples_per_problem"]
    plots = plot_curves(rows, bench.spec.plot_metric, report_dir, per_step)
    md = render_markdown(bench, rows, plots, command)
    atomic_write_json(os.path.join(report_dir, "bench.json"), {"command": command, "runs": rows,
                                                                "aggregate": aggregate(rows)})
    atomic_write_bytes(os.path.join(report_dir, "bench.md"), md.encode("utf-8"))
    return {"markdown": os.path.join(report_dir, "bench.md"), **{f"plot:{k}": v for k, v in plots.items()}}


def terminal_table(bench: Bench, rows: list[dict[str, Any]]) -> str:
    from distil_core.cli.main import _table

    out = []
    for suite, table in aggregate(rows).items():
        metrics = table_metrics(table["base"])
        body = [("method", *metrics)] + [(m, *(_cell(e[k]) for k in metrics)) for m, e in table.items()]
        out.append(f"{suite}\n{_table(body)}")
    return "\n\n".join(out)


def source_revision() -> Optional[str]:
    """The git revision of the toolkit's source (``-dirty`` with uncommitted changes), if it is a
    checkout; None for an installed wheel."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=here,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _flat(groups: Optional[list[Any]]) -> Optional[list[Any]]:
    """``--methods a,b c`` arrives as [[a, b], [c]]; a plain list passes through."""
    if not groups:
        return None
    return [item for group in groups for item in (group if isinstance(group, list) else [group])]


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``optim.lr=1e-4,3e-4,1e-3`` → ("optim.lr", [0.0001, 0.0003, 0.001]); values parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--sweep {text!r}: expected KEY=V1,V2,..., for example --sweep optim.lr=1e-4,3e-4,1e-3")
    key, raw = text.split("=", 1)
    values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
    if not key.strip() or len(values) < 2:
        raise ConfigError(f"--sweep {text!r}: name a key and at least two values")
    return key.strip(), values


def run_sweep(spec: BenchSpec, base_dir: str, output_dir: str, key: str, values: list[Any], *,
              quick: bool = False, suites: Optional[list[str]] = None, methods: Optional[list[str]] = None,
              seeds: Optional[list[int]] = None, overrides: Optional[list[str]] = None,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Every method at every value of ``key`` on the validation split; per method, the value whose
    mean validation ``plot_metric`` (over suites and seeds) is highest.

    The validation problems are the last ``eval.problems`` of each task's train split, taken out of
    training (``eval.split: validation``): the choice never looks at the test problems.
    """
    results: dict[str, dict[str, list[float]]] = {}
    for value in values:
        bench = Bench(spec, base_dir, os.path.join(output_dir, f"{key}={value}"), quick=quick, suites=suites,
                      methods=methods, seeds=seeds, echo=echo,
                      overrides=list(overrides or []) + ["eval.split=validation", f"{key}={json.dumps(value)}"])
        for row in bench.run():
            results.setdefault(row["method"], {}).setdefault(json.dumps(value), []).append(row["after"][spec.plot_metric])
    chosen = {}
    for method, by_value in results.items():
        means = {v: statistics.fmean(scores) for v, scores in by_value.items()}
        best = max(means, key=lambda v: (means[v], -values.index(json.loads(v))))
        chosen[method] = {"value": json.loads(best), "validation": means}
    return {"key": key, "values": values, "metric": spec.plot_metric, "chosen": chosen}


def render_sweep(result: dict[str, Any], command: str) -> str:
    values = [json.dumps(v) for v in result["values"]]
    lines = [f"# Sweep of `{result['key']}` on the validation split", "",
             f"Written by `{command}` on {time.strftime('%Y-%m-%d')}. Mean validation {result['metric']} (%) "
             "over the suites and seeds; validation problems are held out of the train split, never the test set.",
             "", "| method | " + " | ".join(values) + " | chosen |", "|---|" + "---:|" * (len(values) + 1)]
    for method, entry in result["chosen"].items():
        cells = [f"{100 * entry['validation'][v]:.1f}" if v in entry["validation"] else "–" for v in values]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | **{json.dumps(entry['value'])}** |")
    return "\n".join(lines) + "\n"


def main_bench(args: Any) -> int:
    spec, base_dir = load_spec(args.spec)
    if getattr(args, "sweep", None):
        key, values = parse_sweep(args.sweep)
        output_dir = args.output_dir or os.path.join("runs", "sweep")
        result = run_sweep(spec, base_dir, output_dir, key, values, quick=args.quick, suites=_flat(args.suites),
                           methods=_flat(args.methods), seeds=_flat(args.seeds), overrides=args.overrides,
                           echo=lambda m: print(m, file=sys.stderr, flush=True))
        command = "distil " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["bench"]))
        report_dir = args.report_dir or output_dir
        os.makedirs(report_dir, exist_ok=True)
        atomic_write_json(os.path.join(report_dir, "sweep.json"), {"command": command, **result})
        md = render_sweep(result, command)
        atomic_write_bytes(os.path.join(report_dir, "sweep.md"), md.encode("utf-8"))
        print(md)
        return 0
    output_dir = args.output_dir or os.path.join("runs", "bench-quick" if args.quick else "bench")
    bench = Bench(
        spec, base_dir, output_dir, quick=args.quick, suites=_flat(args.suites), methods=_flat(args.methods), seeds=_flat(args.seeds),
        overrides=args.overrides, echo=lambda m: print(m, file=sys.stderr, flush=True),
    )
    n = len(bench.configs)
    print(f"distil bench: {len(bench.suites)} suites × {len(bench.methods)} methods × {len(bench.seeds)} seeds "
          f"= {n} runs → {output_dir}", file=sys.stderr)
    if args.dry_run:
        for (suite, method, seed), cfg in bench.configs.items():
            print(f"{suite}\t{method}\tseed {seed}\t{cfg.task.name}\t{cfg.train.steps} steps\t{bench.run_dir(suite, method, seed)}")
        return 0
    _matplotlib()  # before hours of training, not after
    bench.revision = source_revision()  # what the runs were trained with, read before they start
    rows = bench.run()
    command = "distil " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["bench"]))
    written = write_report(bench, rows, args.report_dir or output_dir, command)
    print(terminal_table(bench, rows))
    print(f"\nReport: {written['markdown']}")
    return 0
