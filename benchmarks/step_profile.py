"""Where a `distil train` step spends its time, from the run's own metrics.jsonl.

    python benchmarks/step_profile.py RUN_DIR [RUN_DIR ...] [--skip 2]
    python benchmarks/step_profile.py --code OUT_DIR [--steps 8] [--threads 1] [--skip 2]

The trainer times each phase of every step (generation, verification, feedback, expert scoring,
update = loss + backward + optimizer) and logs it as ``time_<phase>``. This prints the mean
per phase over the run's steps (the first ``--skip`` steps left out as warm-up) and its share
of the step.

``--code OUT_DIR`` first trains the embedded bench's ``code`` suite (``distil``, seed 0, ``--steps``
steps, a small evaluation) four times, once per grading path of ``code_exec``, and profiles
each: every rollout in a sandbox job of its own (``batch: false``, what ``verify`` does) into
OUT_DIR/one-job-per-rollout; a step's rollouts several to a sandbox job (``sessions: false``)
into OUT_DIR/batch-jobs; the default, those batches sent to grading sessions that stay up
across steps, into OUT_DIR/sessions; and sessions with ``rollout.overlap_grading: true`` (each
step graded while the next one samples, one step off-policy) into OUT_DIR/sessions-overlap,
whose ``verify`` is only the wait for the verdicts once the next step's batch is sampled. The trainer runs with ``--threads`` torch threads (1 by
default, as docs/performance.md's table was measured). Grading's share depends on it: more
threads make the other phases faster on the tiny model while grading stays as it is (on 2
cores, 22.7–24.8 % of the step with 1 thread, 31–32 % with 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PHASES = ("generate", "verify", "feedback", "expert", "update")


def profile(run_dir: str, skip: int) -> dict[str, float]:
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    except OSError as exc:
        raise SystemExit(f"step_profile: cannot read {path}: {exc.strerror}; give a run directory of `distil train`")
    rows = rows[skip:] or rows
    if not rows:
        raise SystemExit(f"step_profile: {path} has no steps")
    return {phase: sum(r.get(f"time_{phase}", 0.0) for r in rows) / len(rows) for phase in PHASES} | {"steps": len(rows)}


def render(run_dir: str, means: dict[str, float]) -> str:
    total = sum(means[p] for p in PHASES)
    lines = [f"{run_dir} ({int(means['steps'])} steps)", f"{'phase':<10} {'ms / step':>10} {'share':>7}"]
    for phase in PHASES:
        lines.append(f"{phase:<10} {means[phase] * 1000:>10.1f} {means[phase] / total:>6.1%}")
    lines.append(f"{'step':<10} {total * 1000:>10.1f} {1:>6.0%}")
    return "\n".join(lines)


def train_code(out_dir: str, steps: int) -> list[str]:
    """Train the code suite once per grading path; their run directories."""
    import shutil

    from distil_core.cli.bench import Bench, load_spec
    from distil_core.training.trainer import Trainer

    spec, base = load_spec()
    runs = []
    paths = (("one-job-per-rollout", ["verifier.options.batch=false"]),
             ("batch-jobs", ["verifier.options.sessions=false"]),
             ("sessions", []),
             ("sessions-overlap", ["rollout.overlap_grading=true"]))
    for name, grading in paths:
        run_dir = os.path.join(out_dir, name)
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides = [f"train.steps={steps}", "train.eval_every=0", "eval.problems=8", "eval.samples=2", "eval.ks=[1,2]",
                     *grading]  # grading options are run options of code_exec: every path starts from one tiny base
        bench = Bench(spec, base, out_dir, suites=["code"], methods=["distil"], seeds=[0], overrides=overrides)
        Trainer(bench.configs[("code", "distil", 0)], run_dir=run_dir, echo=lambda _m: None).fit()
        runs.append(run_dir)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run directories (each holds metrics.jsonl)")
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps to leave out")
    parser.add_argument("--code", metavar="OUT_DIR", help="train the code suite per grading path first, into OUT_DIR")
    parser.add_argument("--steps", type=int, default=8, help="training steps of each --code run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the --code runs")
    args = parser.parse_args()
    if args.code:
        import torch

        torch.set_num_threads(args.threads)
        print(f"code suite, {args.steps} steps per grading path, {args.threads} torch thread(s)", flush=True)
    runs = list(args.runs) + (train_code(args.code, args.steps) if args.code else [])
    if not runs:
        parser.error("give run directories, or --code OUT_DIR")
    print("\n\n".join(render(run, profile(run, args.skip)) for run in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
