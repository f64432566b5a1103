"""The whole training loop against TRL's own trainers: speed, memory and time to a target pass@1.

    pip install trl     # a benchmark dependency only; the toolkit never imports it
    python benchmarks/loop_vs_trl.py [--steps 40] [--problems 8] [--samples 8] [--eval-every 5]
        [--eval-problems 48] [--eval-samples 4] [--target P] [--repeats 3] [--threads 2] [--out DIR]
        [--json FILE]

One budget for every run: the cached tiny base model of the default run (built on first use),
the ``digits`` task, its reward (``exact_match``: the answer equals the reference), ``--problems``
× ``--samples`` rollouts per step, ``--steps`` steps, the default run's ``max_new_tokens`` (10),
learning rate (3e-4), AdamW betas, gradient clipping and sampling (temperature 1, top-p 1).
Six runs, one after another, each in a fresh process with ``OMP_NUM_THREADS=--threads``, and
all six ``--repeats`` times:

- ``distil train`` with ``method: grpo``, ``jsd`` and ``distil`` (the ``self`` expert with frozen
  weights, which sees the problem with the run's feedback and a successful sibling's answer),
  and ``jsd-same-input``: ``jsd`` whose expert sees only the student's own input, as GKD's does;
- TRL's ``GRPOTrainer`` (``num_generations`` = ``--samples``, β = 0 as in our GRPO, the same
  ``dapo`` loss and group-scaled advantages, the reward a function around the same verifier);
- TRL's ``GKDTrainer`` (fully on-policy: λ = 1, β = 0.5, one completion per prompt, as many
  rows per step as the others have rollouts). Its teacher is the closest equivalent of our
  frozen ``self`` expert: a frozen copy of the same base. GKD gives the teacher the student's
  own input, so the teacher cannot see feedback; started from the student's weights it has
  nothing to teach, and GKD is here a speed comparison only (closest pair: ``jsd``).

Reported per run: optimizer steps per second and completion tokens per second of training time
(evaluation excluded), peak memory (the process's peak resident size on a CPU, torch's
``max_memory_allocated`` on a GPU), the held-out pass@1 every ``--eval-every`` steps (the same
first ``--eval-problems`` test problems, ``--eval-samples`` samples each, the same sampling seed:
the toolkit's own evaluation, called from a TRL callback for TRL's runs), and the training time
until pass@1 first reaches the target. The default target is the lower of the two GRPO runs'
best pass@1, a level both reach; ``--target`` sets it.

Each run trains for a few seconds on the default budget, and one timing moves by 20 % or more
with whatever else the machine's cores are doing, for minutes at a time. So the runs are
paired: each like-for-like pair runs back to back (``grpo`` then ``GRPOTrainer``,
``jsd-same-input`` then ``GKDTrainer``), every other repeat in the reverse order, and a pair's
ratios are the median over repeats of the two back-to-back runs' ratio; each repeat's ratio is
printed too, so the spread stays visible. A run's own figures are those of its *median repeat*
by training time (one real run, not a mix of several; ``--repeats`` is odd). On a CPU the
pass@1 curves do not change between repeats (same seeds, same keyed sampling).
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

HERE = os.path.abspath(__file__)
DISTIL_METHODS = ("grpo", "jsd", "jsd-same-input", "distil")
TRL_KINDS = ("trl-grpo", "trl-gkd")
RUN_ORDER = ("grpo", "trl-grpo", "jsd-same-input", "trl-gkd", "jsd", "distil")
"""Each like-for-like pair back to back, so that the two runs of a ratio see the same machine."""
PAIRS = (("grpo", "trl-grpo"), ("jsd", "trl-gkd"), ("jsd-same-input", "trl-gkd"))
VARIANTS = {"jsd-same-input": ["method=jsd", "feedback=[]", "context.use_demonstrations=false", "loss.no_signal=keep"]}
"""Runs that are a method with other settings: ``jsd-same-input`` gives the expert exactly the
student's input (no feedback, no sibling's answer), as GKD gives its teacher — the like-for-like
speed pair for ``GKDTrainer`` (and, like it, nothing to teach from the same weights)."""


def budget(args: argparse.Namespace) -> dict[str, Any]:
    return dict(steps=args.steps, problems=args.problems, samples=args.samples, eval_every=args.eval_every,
                eval_problems=args.eval_problems, eval_samples=args.eval_samples, lr=3e-4, max_new_tokens=10, seed=0)


# -- running the five trainers --------------------------------------------------------------------


def run_child(argv: list[str], threads: int) -> tuple[int, float, str]:
    """(exit status, peak resident MB, stderr tail) of one child process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not the max over children
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-3000:]
    return proc.returncode, usage.ru_maxrss / 1024, tail


def distil_run(method: str, b: dict[str, Any], out: str, threads: int) -> dict[str, Any]:
    run_dir = os.path.join(out, method)
    sets = [*VARIANTS.get(method, [f"method={method}"]), f"seed={b['seed']}", f"train.steps={b['steps']}", f"train.eval_every={b['eval_every']}",
            "train.save_every=0", "train.log_rollouts=false", f"rollout.problems_per_step={b['problems']}",
            f"rollout.samples_per_problem={b['samples']}", f"rollout.max_new_tokens={b['max_new_tokens']}",
            f"optim.lr={b['lr']}", f"eval.problems={b['eval_problems']}", f"eval.samples={b['eval_samples']}",
            "eval.ks=[1]", "model.device=cpu" if not _cuda() else "model.device=cuda"]
    argv = ["train", "--quiet", "--overwrite", "--output-dir", run_dir]
    for s in sets:
        argv += ["--set", s]
    peak = os.path.join(out, f"{method}.peak.json")
    code, rss, tail = run_child([sys.executable, HERE, "--distil-worker", peak, *argv], threads)
    if code != 0:
        raise SystemExit(f"loop_vs_trl: distil train --set method={method} failed (exit {code}):\n{tail}")
    rows = _jsonl(os.path.join(run_dir, "metrics.jsonl"))
    evals = _jsonl(os.path.join(run_dir, "eval.jsonl"))
    clock, elapsed = {0: 0.0}, 0.0
    for r in rows:
        elapsed += r["time_step"]
        clock[r["step"]] = elapsed
    tokens = sum(r["response_tokens"] for r in rows) * b["problems"] * b["samples"]
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    memory = json.load(open(peak)) if _cuda() else rss
    return dict(name=method, steps=len(rows), train_s=elapsed, tokens=tokens, peak_mb=memory, base=summary["model"],
                curve=[(e["step"], clock[e["step"]], e["pass@1"]) for e in evals])


def trl_run(kind: str, base: str, b: dict[str, Any], out: str, threads: int) -> dict[str, Any]:
    result = os.path.join(out, f"{kind}.json")
    code, rss, tail = run_child([sys.executable, HERE, "--worker", kind, base, json.dumps(b), result], threads)
    if code != 0:
        raise SystemExit(f"loop_vs_trl: {kind} failed (exit {code}):\n{tail}")
    figures = json.load(open(result))
    if figures["peak_mb"] is None:
        figures["peak_mb"] = rss
    return figures


def _jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def distil_worker(peak: str, argv: list[str]) -> int:
    """``distil train ARGV`` in this process, then its GPU's peak allocation (MB) into ``peak``."""
    import torch

    from distil_core.cli.main import main as distil

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    code = distil(argv)
    with open(peak, "w") as fh:
        json.dump(torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None, fh)
    return code


# -- TRL's trainers, in a worker process ----------------------------------------------------------


def trl_worker(kind: str, base: str, b: dict[str, Any], result: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from distil_core.builtin import DigitsTask, ExactMatchVerifier
    from distil_core.context import ContextBuilder
    from distil_core.rollouts.local import Generator, SamplingParams
    from distil_core.training.evaluate import EVAL_SEED_OFFSET, evaluate
    from distil_core.types import Problem, Rollout

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).to(device)
    task, verifier = DigitsTask(), ExactMatchVerifier()
    held_out = list(task.problems("test"))[: b["eval_problems"]]
    eval_prompts = [ContextBuilder(tok).student_prompt_ids(p) for p in held_out]

    def pass_at_1(policy: Any) -> float:
        was_training = policy.training
        generator = Generator(policy, tok, SamplingParams(max_new_tokens=b["max_new_tokens"], temperature=1.0))
        scores = evaluate(generator, eval_prompts, held_out, verifier, samples=b["eval_samples"], ks=[1],
                          temperature=1.0, max_new_tokens=b["max_new_tokens"], seed=b["seed"] + EVAL_SEED_OFFSET)
        policy.train(was_training)
        return scores["pass@1"]

    class Clock(TrainerCallback):
        """Times each optimizer step (generation included, evaluation not) and evaluates."""

        def __init__(self) -> None:
            self.train_s, self.curve, self.began = 0.0, [], 0.0

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.curve.append((0, 0.0, pass_at_1(model)))

        def on_step_begin(self, args, state, control, **kw):
            _sync()
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):
            _sync()
            self.train_s += time.perf_counter() - self.began
            if state.global_step % b["eval_every"] == 0 or state.global_step == b["steps"]:
                self.curve.append((state.global_step, self.train_s, pass_at_1(model)))

    train = list(task.problems("train"))
    common = dict(output_dir=os.path.dirname(result) + f"/{kind}", max_steps=b["steps"], learning_rate=b["lr"],
                  lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0,
                  max_grad_norm=1.0, gradient_accumulation_steps=1, logging_steps=1, report_to="none",
                  save_strategy="no", seed=b["seed"], use_cpu=device == "cpu", bf16=False, disable_tqdm=True,
                  dataloader_num_workers=0, gradient_checkpointing=False)  # TRL's default is on; ours off
    clock, tokens = Clock(), [0]
    rollouts = b["problems"] * b["samples"]
    if kind == "trl-grpo":
        from trl import GRPOConfig, GRPOTrainer

        class Counted(GRPOTrainer):
            def compute_loss(self, model, inputs, *a, **kw):
                tokens[0] += int(inputs["completion_mask"].sum())
                return super().compute_loss(model, inputs, *a, **kw)

        def exact_match(prompts, completions, reference, **kw):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return [float(verifier.verify(Problem(id="p", prompt="", reference=ref),
                                          Rollout(problem_id="p", group_index=0, response_text=t, response_ids=[])).passed)
                    for t, ref in zip(texts, reference)]

        data = Dataset.from_list([{"prompt": p.messages(None), "reference": str(p.reference)} for p in train])
        config = GRPOConfig(**common, per_device_train_batch_size=rollouts, num_generations=b["samples"],
                            max_completion_length=b["max_new_tokens"], temperature=1.0, top_p=1.0, beta=0.0,
                            loss_type="dapo", scale_rewards="group", epsilon=0.2, num_iterations=1)
        trainer = Counted(model=model, reward_funcs=exact_match, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[clock])
    else:
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        class Counted(GKDTrainer):  # type: ignore[no-redef]
            def compute_loss(self, model, inputs, *a, **kw):
                tokens[0] += int((inputs["labels"] != -100).sum())
                return super().compute_loss(model, inputs, *a, **kw)

        teacher = AutoModelForCausalLM.from_pretrained(base).to(device).eval()
        data = Dataset.from_list([{"messages": p.messages(None) + [{"role": "assistant", "content": str(p.reference)}]}
                                  for p in train])
        config = GKDConfig(**common, per_device_train_batch_size=rollouts, lmbda=1.0, beta=0.5, temperature=1.0,
                           max_new_tokens=b["max_new_tokens"], max_length=256)
        trainer = Counted(model=model, teacher_model=teacher, args=config, train_dataset=data, processing_class=tok,
                          callbacks=[clock])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    figures = dict(name=kind, steps=b["steps"], train_s=clock.train_s, tokens=tokens[0], peak_mb=peak, curve=clock.curve)
    with open(result, "w") as fh:
        json.dump(figures, fh)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- the table ------------------------------------------------------------------------------------


def default_target(runs: dict[str, dict[str, Any]]) -> float:
    """The lower of the GRPO runs' best held-out pass@1: a level both reach (else any run's best)."""
    names = [n for n in ("grpo", "trl-grpo") if n in runs] or list(runs)
    return min(max(score for _, _, score in runs[n]["curve"]) for n in names)


def time_to(run: dict[str, Any], target: float) -> float | None:
    return next((seconds for _, seconds, score in run["curve"] if score >= target - 1e-9), None)


def median_repeat(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat whose training time is the median (``--repeats`` is odd)."""
    return sorted(reps, key=lambda r: r["train_s"])[len(reps) // 2]


def speed_ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> float:
    """Optimizer steps per second of ``ours`` over ``theirs``."""
    return (ours["steps"] / ours["train_s"]) / (theirs["steps"] / theirs["train_s"])


def table(runs: dict[str, dict[str, Any]], target: float, repeats: dict[str, list[dict[str, Any]]]) -> str:
    lines = [f"| run | steps/s | tokens/s | peak memory MB | pass@1 start → best | time to pass@1 ≥ {target:.3f} |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        reach = time_to(r, target)
        scores = [s for _, _, s in r["curve"]]
        lines.append(f"| {label(name)} | {r['steps'] / r['train_s']:.2f} | {r['tokens'] / r['train_s']:,.0f} | "
                     f"{r['peak_mb']:,.0f} | {scores[0]:.3f} → {max(scores):.3f} | "
                     + (f"{reach:.1f} s" if reach is not None else f"not in {r['steps']} steps") + " |")
    lines += ["", "| pair | steps/s ratio (ours / TRL) | each repeat's steps/s ratio | tokens/s ratio | "
              "peak memory ratio | time-to-target ratio |", "|---|---:|---:|---:|---:|---:|"]
    for ours, theirs in PAIRS:
        if ours not in runs or theirs not in runs:
            continue
        each = list(zip(repeats[ours], repeats[theirs]))  # a repeat's two runs, back to back for the main pairs
        speed = [speed_ratio(a, t) for a, t in each]
        tps = [(a["tokens"] / a["train_s"]) / max(t["tokens"] / t["train_s"], 1e-9) for a, t in each]
        memory = [a["peak_mb"] / t["peak_mb"] for a, t in each]
        reach = [(time_to(a, target), time_to(t, target)) for a, t in each]
        ttt = [a / t for a, t in reach if a is not None and t]  # repeats where both reach it
        lines.append(f"| {label(ours)} / {label(theirs)} | {statistics.median(speed):.2f}× | "
                     f"{', '.join(f'{x:.2f}' for x in speed)} | {statistics.median(tps):.2f}× | "
                     f"{statistics.median(memory):.2f}× | " + (f"{statistics.median(ttt):.2f}×" if ttt else "—") + " |")
    return "\n".join(lines)


def label(name: str) -> str:
    return {"trl-grpo": "TRL GRPOTrainer", "trl-gkd": "TRL GKDTrainer",
            "jsd-same-input": "distil train, method: jsd, expert input = student's"}.get(name, f"distil train, method: {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--problems", type=int, default=8, help="problems per step")
    parser.add_argument("--samples", type=int, default=8, help="samples per problem")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-problems", type=int, default=48)
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--target", type=float, help="pass@1 to reach (default: the lower GRPO run's best)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of every trainer (odd), taking turns; figures are each one's median")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every run (they run one at a time)")
    parser.add_argument("--runs", nargs="+", default=[*DISTIL_METHODS, *TRL_KINDS], choices=[*DISTIL_METHODS, *TRL_KINDS])
    parser.add_argument("--out", help="run directories and figures (default: a temporary directory)")
    parser.add_argument("--json", help="also write every run's figures here")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--distil-worker"]:
        return distil_worker(sys.argv[2], sys.argv[3:])
    args = parser.parse_args()
    if args.repeats < 1 or args.repeats % 2 == 0:
        parser.error(f"--repeats must be odd (got {args.repeats}): each run's figures are its median repeat")
    if args.worker:
        trl_worker(args.worker[0], args.worker[1], json.loads(args.worker[2]), args.worker[3])
        return 0
    try:
        import trl  # noqa: F401
    except ImportError:
        parser.error("TRL is not installed: pip install trl (a benchmark dependency only)")
    out = args.out or tempfile.mkdtemp(prefix="loop_vs_trl-")
    b = budget(args)
    print(f"budget: {args.steps} steps × {args.problems} problems × {args.samples} samples, max_new_tokens "
          f"{b['max_new_tokens']}, lr {b['lr']}; pass@1 on {args.eval_problems} held-out problems × "
          f"{args.eval_samples} samples every {args.eval_every} steps; OMP_NUM_THREADS={args.threads}, "
          f"{'cuda' if _cuda() else 'cpu'}; runs in {out}", flush=True)
    order = [name for name in RUN_ORDER if name in args.runs]
    base = None
    repeats: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
    for r in range(args.repeats):
        where = os.path.join(out, f"repeat-{r + 1}")
        os.makedirs(where, exist_ok=True)
        for name in order if r % 2 == 0 else order[::-1]:  # take turns: drift falls on both sides
            if name in TRL_KINDS and base is None:  # the cached base's path, from a one-step run
                os.makedirs(os.path.join(out, "base"), exist_ok=True)
                base = distil_run("grpo", dict(b, steps=1), os.path.join(out, "base"), args.threads)["base"]
            run = distil_run(name, b, where, args.threads) if name in DISTIL_METHODS else trl_run(name, base, b, where, args.threads)
            base = run.pop("base", base)
            repeats[name].append(run)
            print(f"  repeat {r + 1}/{args.repeats} {name}: {run['train_s']:.1f} s of training", flush=True)
    runs = {name: median_repeat(reps) for name, reps in repeats.items()}
    target = args.target if args.target is not None else default_target(runs)
    print()
    print(f"each run's figures are those of its median repeat of {args.repeats} by training time; a pair's "
          "ratios are the median of its repeats' ratios")
    print(table(runs, target, repeats))
    start = max(r["curve"][0][2] for r in runs.values())
    if target <= start:
        print(f"\nnote: the target {target:.3f} is no higher than a run's starting pass@1 ({start:.3f}): "
              "the GRPO runs did not improve within the budget; give more --steps or a --target")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"budget": b, "target": target, "repeats": args.repeats, "runs": runs, "every_repeat": repeats},
                      fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
