"""``distil bench``: every method on the same suites, seeds and rollout budget; tables and plots.

A bench spec (YAML; the embedded one is :data:`DEFAULT_SPEC`) names

- ``suites``: per suite, a run config (``config``, optional, relative to the spec file) and
  dotted overrides (``set``) — the task, verifier, feedback sources and sizes — and, optionally,
  ``base``: the range each named metric of the starting model must fall in for the suite to be
  what it says (a sparse suite: ``pass@1: [0.0, 0.1]``); the report and the terminal flag a
  suite whose starting model falls outside it;
- ``methods``: per label, the ``method``, its own overrides (``jsd``: ``loss.beta: 0.5``) and,
  optionally, its ``samples_per_problem`` (each suite's rollouts per step spent on more problems
  with fewer samples each): its loss, rate, expert and how it trains, never what every method
  of a suite shares (``bench_spec.SHARED_KEYS``: the task, verifier, starting model, sampling
  and evaluation);
  labels of suites and methods are plain names (:data:`LABEL`): paths, table cells, legends;
- ``seeds``; ``common``: overrides every run shares — the rollout budget (steps × rollouts per
  step, which a method may split into its own problems × samples per problem), the evaluation
  and how often it runs;
- ``quick``: what ``--quick`` changes (fewer seeds, steps and eval problems) for a smoke test.

Runs go to ``OUTPUT_DIR/<suite>/<method>/seed<k>/`` (ordinary run directories). A run whose
``summary.json`` exists under the same resolved config is reused, so an interrupted bench
continues where it stopped; a directory with another config is refused rather than mixed in.
Results: ``bench.json`` (every run's before/after and curve), ``bench.md`` (mean ± std over
seeds per suite and method; :mod:`distil_core.cli.report`) and ``bench-<suite>.png`` (held-out
metric vs step; :mod:`distil_core.cli.plots`).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from typing import Any, Callable, Optional

from distil_core.cli.bench_spec import (DEFAULT_SPEC, LABEL, SHARED_KEYS, SPLIT_KEYS, BenchSpec, MethodSpec, QuickSpec,
                                        SuiteSpec, dotted, load_spec, spec_overrides)
from distil_core.cli.finished_runs import config_value, finished_run, run_row
from distil_core.cli.plots import plot_curves, require_matplotlib
from distil_core.cli.report import (aggregate, calibration_warnings, final_lengths, render_markdown,
                                    table_metrics, terminal_table)
from distil_core.config import RunConfig, differences, load_config
from distil_core.errors import ConfigError, DistilError
from distil_core.io import atomic_write_json, atomic_write_text
from distil_core.version import source_revision
from distil_core.training.metrics import gives_answers, reported_metrics

__all__ = ["DEFAULT_SPEC", "LABEL", "BenchSpec", "SuiteSpec", "MethodSpec", "QuickSpec", "load_spec", "Bench", "write_report",
           "report_dir", "flat_args", "command_line", "progress", "main_bench",
           # the results, for callers that import them from here (distil_core.cli.report has them)
           "aggregate", "final_lengths", "table_metrics"]


BENCH_OWNED = ("method", "seed")
"""Config keys the bench sets for each run from its labels; no override may change them."""


def _gives_answers(verifier: str) -> bool:
    """Whether the verifier named ``verifier`` gives answers to vote on (maj@n); one not known
    here is left for the run to name."""
    from distil_core.plugin_host import get_host

    try:
        return gives_answers(get_host().get("verifier", verifier).factory)
    except DistilError:
        return True


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
        self.seeds = self._pick("seed", seeds, list(spec.quick.seeds if quick and spec.quick.seeds else spec.seeds))
        self.user_overrides = list(overrides or [])
        # the keys a --set gives every run, over any method's own setting of them
        self.overridden = {override.split("=", 1)[0].strip() for override in self.user_overrides}
        self.refuse_owned_keys()
        self.revision: Optional[str] = None
        self.configs = {(s, m, k): self.config_for(s, m, k) for s in self.suites for m in self.methods for k in self.seeds}

    @staticmethod
    def _pick(kind: str, wanted: Optional[list[Any]], known: list[Any]) -> list[Any]:
        """``wanted`` (None: all ``known``), each once; a suite or method the spec lacks is refused
        (any seed may be asked for)."""
        chosen = known if wanted is None else list(wanted)
        twice = sorted({str(w) for w in chosen if chosen.count(w) > 1})
        if twice or not chosen:
            what = f"names {kind} {', '.join(twice)} more than once" if twice else f"names no {kind}"
            raise ConfigError(f"distil bench: the {'spec' if wanted is None else 'command line'} {what}; "
                              f"name each {kind} once.")
        unknown = [w for w in chosen if kind != "seed" and w not in known]
        if unknown:
            raise ConfigError(f"distil bench: unknown {kind} {', '.join(map(repr, unknown))}; the spec has {', '.join(known)}.")
        return chosen

    def refuse_owned_keys(self) -> None:
        """No override may set what the bench gives each run from its labels (:data:`BENCH_OWNED`):
        the rows would be labelled with one method or seed and train another."""
        given = {"the spec's common": self.spec.common, "the spec's quick set": self.spec.quick.set,
                 "--set": dict(item.split("=", 1) for item in self.user_overrides if "=" in item),
                 **{f"suite {name!r}'s set": self.spec.suites[name].set for name in self.suites},
                 **{f"method {name!r}'s set": self.spec.methods[name].set for name in self.methods}}
        for where, values in given.items():
            owned = next((key.strip() for key in values if key.strip() in BENCH_OWNED), None)
            if owned is not None:
                raise ConfigError(
                    f"distil bench: {where} sets {owned!r}, which the bench gives each run itself (its method's "
                    f"`method`, the seed in its label); the rows would be labelled with one and train another. "
                    "Name methods in the spec, and seeds with --seeds.")

    def config_for(self, suite: str, method: str, seed: int) -> RunConfig:
        s, m = self.spec.suites[suite], self.spec.methods[method]
        path = os.path.join(self.base_dir, s.config) if s.config else None
        items = (
            spec_overrides(self.spec.common) + spec_overrides(s.set) + [f"method={m.method}"] + spec_overrides(m.set)
            + [f"seed={seed}"] + (spec_overrides(self.spec.quick.set) if self.quick else []) + self.user_overrides
            + ["train.progress=false"]
        )
        try:
            config = load_config(path, items)
            samples = m.samples_per_problem
            if samples is None or self.overridden & set(SPLIT_KEYS):
                return config
            per_step = config.rollout.problems_per_step * config.rollout.samples_per_problem
            if per_step % samples:
                raise ConfigError(f"samples_per_problem {samples} does not divide the suite's {per_step} rollouts per "
                                  "step; give the method a divisor of it")
            return load_config(path, items + [f"rollout.problems_per_step={per_step // samples}",
                                              f"rollout.samples_per_problem={samples}"])
        except ConfigError as exc:
            raise ConfigError(f"distil bench, suite {suite!r}, method {method!r}: {exc}") from None

    def run_dir(self, suite: str, method: str, seed: int) -> str:
        return os.path.join(self.output_dir, suite, method, f"seed{seed}")

    def budget(self, suite: str) -> dict[str, Any]:
        """The rollout budget every method of ``suite`` gets (the same for each: checked).

        A method may spend a step's rollouts on its own split of problems × samples per problem,
        as it sets its own rate: GRPO's advantage needs a group of samples of one problem, a
        distillation loss gets its signal from the expert on every rollout. The rollouts a step
        consumes, the steps, the tokens per rollout and the evaluation are shared. ``splits``:
        each method's (problems, samples)."""
        seen, splits = {}, {}
        for (s, m, k), cfg in self.configs.items():
            if s != suite:
                continue
            split = (cfg.rollout.problems_per_step, cfg.rollout.samples_per_problem)
            b = {"steps": cfg.train.steps, "per_step": split[0] * split[1],  # rollouts a step consumes
                 "max_new_tokens": cfg.rollout.max_new_tokens, "eval_problems": cfg.eval.problems,
                 "eval_samples": cfg.eval.samples}
            b["rollouts"] = b["steps"] * b["per_step"]
            seen[m], splits[m] = b, split
        budgets = {json.dumps(b, sort_keys=True) for b in seen.values()}
        if len(budgets) > 1:
            shown = ", ".join(f"{m}: {b['steps']} steps × {splits[m][0]} × {splits[m][1]} rollouts, "
                              f"≤ {b['max_new_tokens']} tokens; eval {b['eval_problems']} × {b['eval_samples']}"
                              for m, b in seen.items())
            raise ConfigError(
                f"distil bench: the methods of suite {suite!r} would not get the same rollout budget ({shown}); a "
                "method may split a step's rollouts into its own problems × samples, but the rollouts per step, the "
                "steps, the tokens per rollout and the evaluation are shared: move those keys from a method's `set` "
                "to `common`.")
        return {**next(iter(seen.values())), "splits": splits}

    def measured_alike(self, suite: str) -> None:
        """Refuse a suite whose methods would learn or be graded on different terms: each may set
        its own loss, rate, expert and how it trains (LoRA, precision), never the task, the
        verifier, the starting model, the sampling or the evaluation (:data:`SHARED_KEYS`), or
        the rows compared are not a comparison."""
        seen: dict[str, dict[str, Any]] = {}
        for (s, method, _seed), cfg in self.configs.items():
            if s == suite:
                dumped = cfg.model_dump(mode="json")
                seen[method] = {key: dotted(dumped, key) for key in SHARED_KEYS}
        (head, expected), *others = seen.items()
        for method, values in others:
            for key in SHARED_KEYS:
                found = differences(expected[key], values[key], key, null_is_absent=True)
                if found:
                    where, one, other = found[0]
                    raise ConfigError(
                        f"distil bench: the methods of suite {suite!r} would not be measured alike: {where} is "
                        f"{config_value(one)} for {head} but {config_value(other)} for {method}; move it from a method's `set` "
                        "to `common` (or to the suite).")

    def check(self) -> None:
        """Refuse what can be known wrong before anything trains: a suite whose methods would get
        different budgets or be measured on different terms, or runs whose evaluation would not
        report the metric the curves plot or a metric the suite's ``base`` ranges name."""
        for suite in self.suites:
            self.budget(suite)
            self.measured_alike(suite)
        metric = self.spec.plot_metric
        for (suite, method, _seed), cfg in self.configs.items():
            reported = reported_metrics(cfg.eval.ks, cfg.eval.samples, greedy=cfg.eval.greedy,
                                        votes=_gives_answers(cfg.verifier.name))
            if metric not in reported:
                raise ConfigError(
                    f"distil bench: the spec's plot_metric {metric!r} is not among what suite {suite!r}, method "
                    f"{method!r} evaluates ({', '.join(sorted(reported))}); set plot_metric to one of those, or "
                    "add its k to eval.ks (at most eval.samples).")
            unmeasured = sorted(set(self.spec.suites[suite].base) - reported)
            if unmeasured:  # else the calibration could only be reported as unchecked, after every run
                raise ConfigError(
                    f"distil bench: suite {suite!r} gives a base range for {', '.join(unmeasured)}, which its runs do "
                    f"not evaluate ({', '.join(sorted(reported))}); name one of those, or add its k to eval.ks.")

    def run(self) -> list[dict[str, Any]]:
        from distil_core.training.trainer import Trainer

        self.check()
        plan = list(self.configs.items())
        self.prepare()
        started = time.time()
        rows = []
        for i, ((suite, method, seed), config) in enumerate(plan, 1):
            run_dir = self.run_dir(suite, method, seed)
            summary, unlike = finished_run(run_dir, config, self.spec.plot_metric)
            label = f"[{i}/{len(plan)}] {suite} · {method} · seed {seed}"
            if summary is None:
                self.echo(f"{label}: training ({config.train.steps} steps)…")
                t0 = time.time()
                # an interrupted run starts again: its files go, under the run's lock, so a run that
                # another process (a second bench on this output directory) is training now is
                # refused, naming that process, instead of deleted under it
                summary = Trainer(config, run_dir=run_dir, overwrite=True, echo=lambda _m: None).fit()
                done = f"{time.time() - t0:.0f} s"
            else:
                done = "reused" + (f", trained without {', '.join(unlike)}" if unlike else "")
            rows.append(run_row(suite, method, seed, run_dir, summary))
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


def write_report(bench: Bench, rows: list[dict[str, Any]], report_dir: str, command: str) -> dict[str, str]:
    """``bench.json``, then the plots, then ``bench.md`` in ``report_dir``, each written atomically.

    The results go first: a plot that cannot be written (a full disk, a directory in its place)
    leaves ``bench.json`` and a ``bench.md`` without plots, and is then one error naming the plot
    (or ``report_dir``, where the system does not say which file: a full disk)."""
    json_path, md_path = os.path.join(report_dir, "bench.json"), os.path.join(report_dir, "bench.md")
    _report_file(json_path, atomic_write_json, {"command": command, "runs": rows, "aggregate": aggregate(rows)})
    per_step = {suite: bench.budget(suite)["per_step"] for suite in dict.fromkeys(r["suite"] for r in rows)}
    try:
        plots, failed = plot_curves(rows, bench.spec.plot_metric, report_dir, per_step), None
    except OSError as exc:
        plots, failed = {}, exc
    _report_file(md_path, atomic_write_text, render_markdown(bench, rows, plots, command))
    if failed is not None:
        raise DistilError(f"{failed.filename2 or report_dir}: a plot of the bench cannot be written "
                          f"({failed.strerror or failed}); {json_path} and {md_path} (without plots) were. Free the "
                          "space or the path and run the same command again: finished runs are reused.")
    return {"markdown": md_path, **{f"plot:{k}": v for k, v in plots.items()}}


def _report_file(path: str, write: Callable[[str, Any], None], content: Any) -> None:
    try:
        write(path, content)
    except OSError as exc:
        raise DistilError(f"{path}: the bench report cannot be written ({exc.strerror or exc}); the runs are "
                          "kept: free the space or the path and run the same command again.") from None


def report_dir(args: Any, output_dir: str) -> str:
    """``--report-dir`` (default: ``output_dir``), created if need be: a ConfigError naming the
    option when it cannot hold the report, found before any run trains rather than after."""
    path, option = (args.report_dir, "--report-dir") if args.report_dir else (output_dir, "--output-dir")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot be made a directory ({exc.strerror or exc}); "
                          "give a directory the report can be written to.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: the directory is not writable; give one the report can be written to.")
    return path


def flat_args(groups: Optional[list[Any]]) -> Optional[list[Any]]:
    """``--methods a,b c`` arrives as [[a, b], [c]]; a plain list passes through."""
    if not groups:
        return None
    return [item for group in groups for item in (group if isinstance(group, list) else [group])]


def command_line(args: Any) -> str:
    """The command as typed, for the report to say what wrote it."""
    return "distil " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["bench"]))


def progress(message: str) -> None:
    """Where a bench says how far it is: stderr, so that stdout holds only its tables."""
    print(message, file=sys.stderr, flush=True)


def main_bench(args: Any) -> int:
    """``distil bench`` without ``--sweep`` (:mod:`distil_core.cli.sweep`): the bench, or with
    ``--dry-run`` only its plan."""
    spec, base_dir = load_spec(args.spec)
    command, echo = command_line(args), progress
    output_dir = args.output_dir or os.path.join("runs", "bench-quick" if args.quick else "bench")
    bench = Bench(
        spec, base_dir, output_dir, quick=args.quick, suites=flat_args(args.suites),
        methods=flat_args(args.methods), seeds=flat_args(args.seeds), overrides=args.overrides, echo=echo,
    )
    n = len(bench.configs)
    print(f"distil bench: {len(bench.suites)} suites × {len(bench.methods)} methods × {len(bench.seeds)} seeds "
          f"= {n} runs → {output_dir}", file=sys.stderr)
    bench.check()  # before hours of training, not after
    if args.dry_run:
        for (suite, method, seed), cfg in bench.configs.items():
            print(f"{suite}\t{method}\tseed {seed}\t{cfg.task.name}\t{cfg.train.steps} steps\t{bench.run_dir(suite, method, seed)}")
        return 0
    require_matplotlib()
    reports = report_dir(args, output_dir)
    bench.revision = source_revision()  # what writes the report; each run records its own (summary.json)
    rows = bench.run()
    written = write_report(bench, rows, reports, command)
    print(terminal_table(bench, rows))
    for warning in calibration_warnings(bench, rows):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"\nReport: {written['markdown']}")
    return 0
