"""Steps/s of ``distil train`` on 1 process against 2 processes (torchrun, gloo) on one global batch.

    python benchmarks/scaling.py [--steps 12] [--problems 16] [--samples 8] [--json out.json]

Each variant is a real ``distil train`` run of the default digits setup with ``--steps``
steps; the step time is rank 0's ``time_step`` in metrics.jsonl (the slowest rank's, under
torchrun), without the first step (warm-up) and without the evaluations. The variants share
the machine's cores: 1 process with all threads, 1 process with one thread, and 2 processes
with ``cores / 2`` threads each. The runs also check that 1 and 2 processes end on the same
parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

SETTINGS = [
    "eval.problems=8", "eval.samples=2", "eval.ks=[1, 2]", "train.save_every=0", "train.log_rollouts=false",
]


def run(out_dir: str, procs: int, threads: int, steps: int, problems: int, samples: int) -> dict[str, Any]:
    sets = SETTINGS + [f"train.steps={steps}", f"rollout.problems_per_step={problems}",
                       f"rollout.samples_per_problem={samples}"]
    args = [a for item in sets for a in ("--set", item)]
    train = ["-m", "distil_core", "train", "--quiet", "--output-dir", out_dir, *args]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *train]
    else:
        cmd = [sys.executable, *train]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    timed = rows[1:] or rows  # without the warm-up step
    times = [r["time_step"] for r in timed]
    phases = {k[5:]: statistics.mean(r[k] for r in timed) for k in timed[-1] if k.startswith("time_") and k != "time_step"}
    return {"procs": procs, "threads": threads, "step_s": statistics.median(times), "phases": phases,
            "wall_s": time.perf_counter() - started}


def max_param_diff(a: str, b: str) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(os.path.join(a, "final", "model.safetensors")), load_file(os.path.join(b, "final", "model.safetensors"))
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--problems", type=int, default=16, help="problems per step (the global batch)")
    parser.add_argument("--samples", type=int, default=8, help="samples per problem")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    variants = [(1, cores), (1, 1), (2, max(1, cores // 2))]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        # the tiny base is built (and cached) before anything is timed
        run(os.path.join(tmp, "warm"), 1, cores, 1, args.problems, args.samples)
        for procs, threads in variants:
            out = os.path.join(tmp, f"p{procs}t{threads}")
            results.append(run(out, procs, threads, args.steps, args.problems, args.samples) | {"dir": out})
            print(f"  {procs} process(es) × {threads} thread(s): {results[-1]['step_s']:.3f} s/step", file=sys.stderr)
        diff = max_param_diff(results[0]["dir"], results[2]["dir"])
    base = results[0]["step_s"]
    print(f"distil train, digits, {args.problems} problems × {args.samples} samples per step, "
          f"median of {args.steps - 1} steps; {cores} CPU cores\n")
    print(f"{'processes':>9}  {'threads each':>12}  {'s/step':>7}  {'steps/s':>7}  {'vs 1 process':>12}")
    for r in results:
        print(f"{r['procs']:>9}  {r['threads']:>12}  {r['step_s']:>7.3f}  {1 / r['step_s']:>7.2f}  {base / r['step_s']:>11.2f}×")
    print("\nphase means (s):")
    names = sorted({k for r in results for k in r["phases"]})
    print(f"{'processes × threads':<20}" + "".join(f"{n:>10}" for n in names))
    for r in results:
        print(f"{str(r['procs']) + ' × ' + str(r['threads']):<20}" + "".join(f"{r['phases'].get(n, 0):>10.3f}" for n in names))
    print(f"\nmax |Δ parameter|, 1 process vs 2 processes after {args.steps} steps: {diff:.2e}")
    if args.json:
        for r in results:
            r.pop("dir")
        with open(args.json, "w") as fh:
            json.dump({"cores": cores, "steps": args.steps, "problems": args.problems, "samples": args.samples,
                       "results": results, "max_param_diff": diff}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
