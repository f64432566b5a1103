"""Diagnostics behind docs/results/README.md: is the expert right, and does the update learn?

    python benchmarks/bench_diagnostics.py expert-gap SUITE [--problems 60] [--set KEY=VALUE ...]
    python benchmarks/bench_diagnostics.py expert-on-policy SUITE [--problems 40] [--samples 8] [--set KEY=VALUE ...]
    python benchmarks/bench_diagnostics.py memorise SUITE METHOD [--problems 32] [--set KEY=VALUE ...]
    python benchmarks/bench_diagnostics.py sharpness SUITE RUN_DIR [RUN_DIR ...] [--problems 100]
    python benchmarks/bench_diagnostics.py temperatures RUN_DIR [RUN_DIR ...] [--temperatures 0.5 0.7 1.0]
    python benchmarks/bench_diagnostics.py passk RUN_DIR [RUN_DIR ...] [--samples 32] [--plot PNG] [--json PATH]
    python benchmarks/bench_diagnostics.py choices RUN_DIR [RUN_DIR ...] [--every 4]

SUITE is a suite of the embedded bench spec (math, code, science, digits), configured exactly as
`distil bench` configures it, seed 0.

- ``expert-gap``: on held-out problems, the probability that the starting model gives the
  reference answer (teacher-forced, the whole answer and its end token) on the bare prompt —
  the student — and with the suite's feedback on a wrong answer in its context — the expert.
  Also the first token alone.
- ``expert-on-policy``: the expert where DistIL asks it, on the student's own states. The
  starting model samples ``--samples`` answers to each of ``--problems`` training problems;
  each failed answer is teacher-forced under the expert's context (the feedback on that very
  answer) and under the student's prompt. Reported apart: the states still on the reference
  answer (the expert's and the student's probability of the reference token, KL(q‖p)) and the
  states after the answer's first wrong token (how sure the expert is, how often its top token
  is the reference's token at that position, KL(q‖p)). It tells an expert that misleads the
  student after its mistakes from one that is right everywhere. Per first response token it
  gives the share of samples, the share right, and the failed samples' mean KL(q‖p) over the
  tokens after the first: the future cost DistIL's credit gives that first token
  (``loss.future_reduce: mean``, γ = 1, the expert at temperature 1: a ``loss.expert_temperature``
  set is not applied here). Where the first token chooses a strategy (sparse_ways'
  way), future credit moves the student towards the choice whose later tokens it already
  matches best, whether or not that choice can succeed.
- ``memorise``: trains METHOD with the suite's budget on a fixed set of ``--problems`` training
  problems (each seen many times), then reports pass@1 on those problems and on the held-out
  split, before and after. It separates "the update does not move the student towards the
  expert" (a bug) from "what it learns does not carry to new problems".
- ``sharpness``: each trained run's final model, teacher-forced on the reference answers of the
  held-out problems: the mean and median probability of the whole answer (a sample at
  temperature 1 is right with that probability), and the share of answer tokens the model
  gives less than 0.1 (confidently wrong) or more than 0.9. It tells a student that hedges on
  every token (lower pass@1 at temperature 1, higher pass@k) from one that is sharp but wrong
  on some problems. Per answer position it also gives the mean probability of the reference
  token and the mean entropy of the model's distribution there: a run whose entropy fell while
  the reference's probability did not rise has sharpened what it already did rather than
  learned. ``--base`` adds the starting model as the first row. Per problem it also bins
  P(answer) and gives the mean probability of the model's own greedy answer: a model that
  reaches as many problems as another but spreads its mass within each has this low.
- ``temperatures``: each trained run's final model evaluated as training evaluates it (its own
  config, split and seed), at several sampling temperatures. Sharpening a model trades pass@k
  for pass@1; comparing methods along that trade, rather than at one temperature, tells a
  method that knows more from one that is only sharper.
- ``passk``: each trained run's final model evaluated as training evaluates it, with
  ``--samples`` samples per problem (it sets ``eval.samples`` and ``eval.ks``), and pass@k for
  every power of two up to that: how each
  method's share of solved problems grows with the number of tries. A method that covers the
  expert's answers (forward cross-entropy) should gain more with k than one that commits to a
  single answer; the bench's pass@8 shows one point of that curve.
- ``choices``: each run's own training rollouts (``rollouts.jsonl``: train with ``--set
  train.log_rollouts=true``), step by step: the share that open with each first character and
  the share of those that passed, per run and as the mean over each method's runs (the table
  shows the four most frequent first characters; the JSON holds them all). Where the first token chooses a
  strategy (sparse_ways' way), it tells how fast a method settles the choice from how fast it
  learns to carry the chosen way out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
from typing import Any


def suite_config(suite: str, method: str, overrides: list[str], output_dir: str) -> Any:
    from distil_core.cli.bench import Bench, load_spec

    spec, base = load_spec()
    bench = Bench(spec, base, output_dir, suites=[suite], methods=[method], seeds=[0], overrides=overrides)
    return bench.configs[(suite, method, 0)]


def suite_feedback(rt: Any, problem: Any, rollout: Any, verdict: Any) -> list:
    """What the suite's feedback sources say about ``rollout`` alone (its only sibling is itself)."""
    from distil_core.protocols import resolve_all

    feedback: list = []
    for _, source in rt.feedback_sources:
        feedback += resolve_all([source.feedback(problem, rollout, verdict, [(rollout, verdict)])])[0] or []
    return feedback


def expert_gap(suite: str, problems: int, overrides: list[str]) -> dict[str, Any]:
    import torch

    from distil_core.context import prompt_ids
    from distil_core.protocols import resolve_all
    from distil_core.training.runtime import build_runtime
    from distil_core.models.tiny import BaseFeedback
    from distil_core.types import Rollout

    config = suite_config(suite, "distil", overrides, "unused")
    rt = build_runtime(config, progress=False)
    tok, model = rt.tokenizer, rt.model.eval()
    held_out = rt.task.problems("test")[:problems]
    teacher = BaseFeedback(rt.task)
    rng = random.Random(0)
    wrong = [teacher.wrong(p, teacher.answer(p), rng) for p in held_out]
    rollouts = [
        Rollout(problem_id=p.id, group_index=0, response_text=w, response_ids=tok.encode(w, add_special_tokens=False))
        for p, w in zip(held_out, wrong)
    ]
    verdicts = resolve_all([rt.verifier.verify(p, r) for p, r in zip(held_out, rollouts)])

    @torch.no_grad()
    def answer_logprob(context: list[int], target: list[int]) -> tuple[float, float]:
        ids = torch.tensor([context + target], device=rt.device)
        logprobs = model(input_ids=ids).logits[0, len(context) - 1 : -1].float().log_softmax(-1)
        per_token = logprobs.gather(-1, torch.tensor(target, device=rt.device)[:, None])[:, 0]
        return float(per_token.sum()), float(per_token[0])

    rows: dict[str, list[tuple[float, float]]] = {"student": [], "expert": []}
    for problem, rollout, verdict in zip(held_out, rollouts, verdicts):
        feedback = suite_feedback(rt, problem, rollout, verdict)
        target = tok.encode(teacher.answer(problem), add_special_tokens=False) + [tok.eos_token_id]
        rows["student"].append(answer_logprob(rt.context.student_prompt_ids(problem), target))
        rows["expert"].append(answer_logprob(prompt_ids(tok, rt.context.expert_messages(problem, feedback, None)), target))
    out: dict[str, Any] = {"suite": suite, "problems": len(held_out)}
    for who, values in rows.items():
        out[who] = {
            "p_answer": sum(math.exp(a) for a, _ in values) / len(values),
            "p_first_token": sum(math.exp(b) for _, b in values) / len(values),
        }
    return out


def expert_on_policy(suite: str, problems: int, samples: int, overrides: list[str]) -> dict[str, Any]:
    import statistics

    import torch

    from distil_core.context import prompt_ids
    from distil_core.protocols import resolve_all
    from distil_core.training.runtime import build_runtime
    from distil_core.models.tiny import BaseFeedback
    from distil_core.types import Rollout

    config = suite_config(suite, "distil", overrides, "unused")
    rt = build_runtime(config, progress=False)
    tok, model = rt.tokenizer, rt.model.eval()  # the bench's expert: this model, feedback in context
    teacher = BaseFeedback(rt.task)
    torch.manual_seed(0)
    values: dict[str, list[float]] = {key: [] for key in (
        "passed", "on_expert_p", "on_student_p", "on_kl", "first_expert_p", "first_student_p",
        "after_expert_max", "after_follows", "after_kl")}
    # per first response token: [samples, passed, the failed samples' mean KL over the later tokens]
    by_first: dict[str, list] = {}

    @torch.no_grad()
    def distributions(context: list[int], response: list[int]) -> torch.Tensor:
        ids = torch.tensor([context + response], device=rt.device)
        return model(input_ids=ids).logits[0, len(context) - 1:-1].float().log_softmax(-1)

    for problem in rt.task.problems("train")[:problems]:
        reference = tok.encode(teacher.answer(problem), add_special_tokens=False) + [tok.eos_token_id]
        prompt = rt.context.student_prompt_ids(problem)
        ids = torch.tensor([prompt] * samples, device=rt.device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=1.0, max_new_tokens=config.rollout.max_new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for row in out[:, len(prompt):].tolist():
            if tok.eos_token_id in row:
                row = row[:row.index(tok.eos_token_id) + 1]
            text = tok.decode([t for t in row if t != tok.eos_token_id])
            rollout = Rollout(problem_id=problem.id, group_index=0, response_text=text, response_ids=row)
            (verdict,) = resolve_all([rt.verifier.verify(problem, rollout)])
            values["passed"].append(float(verdict.passed))
            first = by_first.setdefault(tok.decode(row[:1]), [0, 0, []])
            first[0] += 1
            first[1] += verdict.passed
            if verdict.passed:
                continue
            feedback = suite_feedback(rt, problem, rollout, verdict)
            q = distributions(prompt_ids(tok, rt.context.expert_messages(problem, feedback, None)), row)
            p = distributions(prompt, row)
            kl = (q.exp() * (q - p)).sum(-1)
            wrong = next((i for i, (a, b) in enumerate(zip(row, reference)) if a != b), min(len(row), len(reference)))
            for t in range(len(row)):
                if t <= wrong and t < len(reference):  # the response so far is the reference's prefix
                    values["on_expert_p"].append(float(q[t, reference[t]].exp()))
                    values["on_student_p"].append(float(p[t, reference[t]].exp()))
                    values["on_kl"].append(float(kl[t]))
                else:
                    values["after_expert_max"].append(float(q[t].max().exp()))
                    values["after_follows"].append(float(t < len(reference) and int(q[t].argmax()) == reference[t]))
                    values["after_kl"].append(float(kl[t]))
            if len(row) > 1:  # G_0 with loss.future_reduce=mean and γ = 1: what future credit tells the first token
                first[2].append(float(kl[1:].mean()))
            values["first_expert_p"].append(float(q[0, reference[0]].exp()))
            values["first_student_p"].append(float(p[0, reference[0]].exp()))

    def mean(key: str) -> float:
        return statistics.fmean(values[key]) if values[key] else float("nan")

    return {
        "suite": suite, "rollouts": len(values["passed"]), "pass_rate": mean("passed"),
        "first_token": {"expert_p_reference": mean("first_expert_p"), "student_p_reference": mean("first_student_p")},
        "on_reference": {"states": len(values["on_kl"]), "expert_p_reference": mean("on_expert_p"),
                         "student_p_reference": mean("on_student_p"), "kl": mean("on_kl")},
        "after_first_error": {"states": len(values["after_kl"]), "expert_max_p": mean("after_expert_max"),
                              "expert_top_is_reference": mean("after_follows"), "kl": mean("after_kl")},
        "by_first_token": {
            text: {"share": n / len(values["passed"]), "pass_rate": passed / n,
                   "later_kl": statistics.fmean(later) if later else float("nan")}
            for text, (n, passed, later) in sorted(by_first.items(), key=lambda item: -item[1][0])},
    }


def memorise(suite: str, method: str, problems: int, overrides: list[str], output_dir: str) -> dict[str, Any]:
    from distil_core.training.trainer import Trainer

    config = suite_config(suite, method, overrides + ["train.eval_every=0"], output_dir)
    trainer = Trainer(config, run_dir=output_dir, echo=lambda *_: None)
    trainer.train_problems = trainer.train_problems[:problems]
    held_out = trainer.test_problems

    def on_train_set(label: str) -> float:
        trainer.test_problems = trainer.train_problems
        try:
            return trainer.run_eval(label)["pass@1"]
        finally:
            trainer.test_problems = held_out

    before = on_train_set("train set, before")
    summary = trainer.fit()
    after = on_train_set("train set, after")
    return {
        "suite": suite, "method": method, "problems": problems,
        "train_set_pass@1": [before, after],
        "held_out_pass@1": [summary["before"]["pass@1"], summary["after"]["pass@1"]],
    }


def sharpness(suite: str, run_dirs: list[str], problems: int, overrides: list[str], base: bool = False) -> dict[str, Any]:
    import statistics

    import torch
    from transformers import AutoModelForCausalLM

    from distil_core.models.forward import response_logits
    from distil_core.training.runtime import build_runtime
    from distil_core.models.tiny import BaseFeedback
    from distil_core.config import run_dir_config

    finals = {run_dir: run_dir_config(run_dir).model.name for run_dir in run_dirs}  # every run checked first
    config = suite_config(suite, "distil", overrides, "unused")
    rt = build_runtime(config, progress=False)
    held_out = rt.task.problems("test")[:problems]
    teacher = BaseFeedback(rt.task)
    tok = rt.tokenizer
    prompts = [rt.context.student_prompt_ids(p) for p in held_out]
    targets = [tok.encode(teacher.answer(p), add_special_tokens=False) + [tok.eos_token_id] for p in held_out]
    out: dict[str, Any] = {"suite": suite, "problems": len(held_out), "runs": {}}
    models = [("base", rt.model)] if base else []
    models += [(run_dir, AutoModelForCausalLM.from_pretrained(final)) for run_dir, final in finals.items()]
    for name, model in models:
        with torch.no_grad():
            logits, tokens, mask = response_logits(model.eval(), prompts, targets, tok.pad_token_id)
        all_logprobs = torch.log_softmax(logits.float(), -1)
        logprobs = all_logprobs.gather(-1, tokens[..., None]).squeeze(-1)
        entropy = -(all_logprobs.exp() * all_logprobs).sum(-1)
        keep = mask.bool()
        token_p = logprobs.exp()[keep]
        answer_p = torch.where(keep, logprobs, 0.0).sum(-1).exp().tolist()
        counts = keep.sum(0).clamp(min=1)
        greedy_p = greedy_answer_p(model, prompts, config.rollout.max_new_tokens, tok)
        out["runs"][name] = {
            "mean_p_answer": statistics.fmean(answer_p), "median_p_answer": statistics.median(answer_p),
            "tokens_below_0.1": float((token_p < 0.1).float().mean()), "tokens_above_0.9": float((token_p > 0.9).float().mean()),
            "p_reference_by_position": (torch.where(keep, logprobs.exp(), 0.0).sum(0) / counts).tolist(),
            "entropy_by_position": (torch.where(keep, entropy, 0.0).sum(0) / counts).tolist(),
            "problems_by_p_answer": {label: statistics.fmean(low <= a < high for a in answer_p)
                                     for label, low, high in P_ANSWER_BINS},
            "mean_p_greedy_answer": statistics.fmean(greedy_p),
        }
    return out


P_ANSWER_BINS = [("< 0.05", 0.0, 0.05), ("0.05-0.5", 0.05, 0.5), ("0.5-0.9", 0.5, 0.9), (">= 0.9", 0.9, 1.01)]
"""Bins of a problem's P(reference answer): never sampled right, sometimes, mostly, almost always."""


def greedy_answer_p(model: Any, prompts: list[list[int]], max_new_tokens: int, tok: Any) -> list[float]:
    """Per problem, the probability of the model's greedy answer (end token included): how much
    of its mass the model puts on its own best answer, right or wrong. A model that hedges
    within a problem has it low; one that is sure of some answer has it near 1."""
    import torch

    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt], device=model.device)
        with torch.no_grad():
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                       eos_token_id=tok.eos_token_id, output_scores=True, return_dict_in_generate=True)
        row = generated.sequences[0, len(prompt):]
        logp = sum(float(score[0].float().log_softmax(-1)[token]) for score, token in zip(generated.scores, row))
        out.append(math.exp(logp))
    return out


def temperatures(run_dirs: list[str], temps: list[float], samples: int, overrides: list[str]) -> dict[str, Any]:
    configs = run_configs(run_dirs, lambda run_dir: overrides + [
        f"eval.samples={samples}", f"eval.ks={json.dumps(ks_up_to(run_dir, samples, overrides))}"])
    out: dict[str, Any] = {"temperatures": temps, "runs": {}}
    for run_dir, config in configs.items():
        evaluate, problems = final_model(config)
        rows = {}
        for temp in temps:
            config.eval.temperature = temp
            rows[str(temp)] = evaluate()
        out["runs"][run_dir] = {"method": config.method, "split": config.eval.split, "problems": problems,
                                "by_temperature": rows}
    return out


def run_configs(run_dirs: list[str], overrides_for: Any) -> dict[str, Any]:
    """Each run's own config with its final/ model, as `distil eval RUN_DIR` reads it, with
    ``overrides_for(run_dir)``; every run is checked before the first model loads, so a mistyped
    last path fails at once."""
    from distil_core.config import run_dir_config

    return {run_dir: run_dir_config(run_dir, overrides_for(run_dir)) for run_dir in run_dirs}


def final_model(config: Any) -> tuple[Any, int]:
    """A run's final model built once (no expert), and a function that evaluates it on its
    evaluation problems as training does, under ``config.eval`` as it stands at each call;
    with the number of those problems."""
    from distil_core.training.distributed import World
    from distil_core.training.evaluate import evaluate_on_ranks, evaluation_split
    from distil_core.training.runtime import build_runtime

    rt = build_runtime(config, progress=False, for_training=False)
    _, problems = evaluation_split(rt.task, config.eval.split, config.eval.problems, config.task.name)
    def evaluate() -> dict[str, Any]:
        return evaluate_on_ranks(rt, config, World(), problems, label=config.eval.split, progress=False)

    return evaluate, len(problems)


def ks_up_to(run_dir: str, samples: int, overrides: list[str]) -> list[int]:
    """The run's own ``eval.ks`` that ``samples`` samples per problem can estimate (pass@k needs
    k ≤ samples), so a smaller ``--samples`` than the run evaluated with drops its larger k
    instead of failing as an invalid config."""
    from distil_core.config import run_dir_config

    return [k for k in run_dir_config(run_dir, overrides).eval.ks if k <= samples] or [1]


def pass_at_k(run_dirs: list[str], samples: int, overrides: list[str]) -> dict[str, Any]:
    """Per run, pass@k for k = 1, 2, 4, ... up to ``samples`` (keyed by k as text, as JSON keeps
    it), at the run's own evaluation settings (split, problems, temperature, seed) with
    ``samples`` samples per problem."""
    ks = [2 ** i for i in range(int(math.log2(samples)) + 1)]
    configs = run_configs(run_dirs, lambda _: overrides + [f"eval.samples={samples}", f"eval.ks={json.dumps(ks)}"])
    out: dict[str, Any] = {"ks": ks, "runs": {}}
    for run_dir, config in configs.items():
        evaluate, problems = final_model(config)
        metrics = evaluate()
        out["runs"][run_dir] = {"method": bench_label(run_dir, config.method), "task": config.task.name,
                                "split": config.eval.split, "problems": problems,
                                "temperature": config.eval.temperature,
                                "pass@k": {str(k): metrics[f"pass@{k}"] for k in ks}}
    return out


def first_choices(run_dirs: list[str], every: int) -> dict[str, Any]:
    """Per run, at step 1 and every ``every`` steps, its training rollouts by the first
    character of their answer (``""`` for an empty one): each one's share of the step's
    rollouts and the share of those that passed; and the mean of those over each method's runs
    (a character a run never opened with counts as share 0 there)."""
    from distil_core.config import saved_config
    from distil_core.errors import ConfigError

    out: dict[str, Any] = {"every": every, "runs": {}, "methods": {}}
    for run_dir in run_dirs:
        config = saved_config(run_dir) if os.path.isdir(run_dir) else None
        if config is None:
            raise ConfigError(f"{run_dir!r} is not a run directory (no config.yaml); give the directory "
                              "`distil train` writes.")
        out["runs"][run_dir] = {"method": bench_label(run_dir, config.method), "steps": logged_choices(run_dir, every)}
    for method in dict.fromkeys(r["method"] for r in out["runs"].values()):
        runs = [r["steps"] for r in out["runs"].values() if r["method"] == method]
        out["methods"][method] = mean_choices(runs)
    return out


def logged_choices(run_dir: str, every: int) -> dict[str, Any]:
    """One run's rollouts.jsonl counted by step and first character (see :func:`first_choices`).
    Its lines are read by the rule every step-log reader applies (:func:`~distil_core.run_files.step_records`:
    blank lines skipped, a last line still being written left for the next read); each record
    must then hold a text ``response_text`` and a true/false ``verdict.passed``."""
    from distil_core.errors import DistilError
    from distil_core.run_files import log_lines, step_records

    damaged = "the log is damaged: move it aside or train the run again"
    counts: dict[int, dict[str, list[int]]] = {}
    for record in step_records(log_lines(run_dir, "rollouts.jsonl"), finished=False, damaged=damaged):
        text, verdict = record.get("response_text"), record.get("verdict")
        passed = verdict.get("passed") if isinstance(verdict, dict) else None
        if not isinstance(text, str) or not isinstance(passed, bool):
            raise DistilError(f"{run_dir}: rollouts.jsonl holds a record at step {record['step']} that is not a "
                              f"rollout record (a text response_text and a true/false verdict.passed); {damaged}")
        step = int(record["step"])
        if step == 1 or step % every == 0:
            seen = counts.setdefault(step, {}).setdefault(text.strip()[:1], [0, 0])
            seen[0] += 1
            seen[1] += passed
    if not counts:
        raise DistilError(f"{run_dir}: no training rollouts logged (rollouts.jsonl); train it with "
                          "--set train.log_rollouts=true")
    out = {}
    for step, by_first in sorted(counts.items()):
        total = sum(n for n, _ in by_first.values())
        out[str(step)] = {"rollouts": total, "pass_rate": sum(p for _, p in by_first.values()) / total,
                          "by_first": {c: {"share": n / total, "pass_rate": p / n} for c, (n, p) in sorted(by_first.items())}}
    return out


def mean_choices(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over runs, step by step (the steps every run logged), of :func:`logged_choices`:
    a first character's share counts 0 in a run that never opened with it; its pass rate is
    the mean over the runs that did."""
    steps = [s for s in runs[0] if all(s in r for r in runs)]
    out = {}
    for step in steps:
        rows = [r[step] for r in runs]
        chars = sorted({c for row in rows for c in row["by_first"]})
        by_first = {}
        for c in chars:
            seen = [row["by_first"][c] for row in rows if c in row["by_first"]]
            by_first[c] = {"share": sum(x["share"] for x in seen) / len(rows),
                           "pass_rate": sum(x["pass_rate"] for x in seen) / len(seen)}
        out[step] = {"pass_rate": sum(row["pass_rate"] for row in rows) / len(rows), "by_first": by_first}
    return out


def bench_label(run_dir: str, method: str) -> str:
    """The bench's label for a run in its layout (``OUTPUT_DIR/<suite>/<label>/seed<N>``), which
    tells ``reverse_kl_dense`` from ``jsd`` though both train with ``method: jsd``; else
    ``method``."""
    parts = os.path.normpath(run_dir).split(os.sep)
    return parts[-2] if len(parts) >= 2 and re.fullmatch(r"seed\d+", parts[-1]) else method


def plot_pass_at_k(result: dict[str, Any], path: str, title: str) -> None:
    """Mean pass@k against k (a log scale), one line per method, ± the std over its runs."""
    import statistics

    from distil_core.cli.plots import require_matplotlib, save_figure

    plt = require_matplotlib("bench_diagnostics.py passk --plot")
    ks = result["ks"]
    runs: dict[str, list[dict]] = {}
    for r in result["runs"].values():
        runs.setdefault(r["method"], []).append(r["pass@k"])
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for method, rows in runs.items():
        means = [100 * statistics.fmean(row[str(k)] for row in rows) for k in ks]
        spread = [100 * statistics.stdev(row[str(k)] for row in rows) if len(rows) > 1 else 0.0 for k in ks]
        ax.plot(ks, means, marker="o", label=method)
        ax.fill_between(ks, [m - s for m, s in zip(means, spread)], [m + s for m, s in zip(means, spread)], alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("held-out pass@k (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    print(f"Plot: {save_figure(plt, fig, path)}")


def method_means(result: dict[str, Any]) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    """The largest pass@k measured, and per method (mean pass@1, mean pass@k) over its runs at
    each temperature, in order."""
    import statistics

    runs: dict[str, list[dict]] = {}
    for r in result["runs"].values():
        runs.setdefault(r["method"], []).append(r["by_temperature"])
    first = next(iter(next(iter(runs.values()))[0].values()))
    top = max((key for key in first if key.startswith("pass@")), key=lambda key: int(key[5:]))
    return top, {method: [(statistics.fmean(r[str(t)]["pass@1"] for r in rows), statistics.fmean(r[str(t)][top] for r in rows))
                          for t in result["temperatures"]] for method, rows in runs.items()}


def plot_frontier(top: str, means: dict[str, list[tuple[float, float]]], temps: list[float], path: str) -> None:
    """``top`` (the largest pass@k) against pass@1, one line per method through its temperatures."""
    from distil_core.cli.plots import require_matplotlib, save_figure

    plt = require_matplotlib("bench_diagnostics.py temperatures --plot")
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for method, points in means.items():
        xs, ys = [100 * a for a, _ in points], [100 * b for _, b in points]
        ax.plot(xs, ys, marker="o", label=method)
        for x, y, t in zip(xs, ys, temps):
            ax.annotate(f"{t:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("pass@1 (%)")
    ax.set_ylabel(f"{top} (%)")
    ax.set_title("Sampling temperature moves each method along its trade (labels: T)")
    ax.grid(alpha=0.3)
    ax.legend()
    print(f"Plot: {save_figure(plt, fig, path)}")


def print_choices(result: dict[str, Any]) -> None:
    """Per method, a row per reported step: its pass rate, and for each of the four most frequent
    first characters (over all its steps) its share of the rollouts / the share of those that
    passed. Rarer characters are left out of the table (a row's shares may sum below 100); the
    JSON printed after it holds every one."""
    for method, steps in result["methods"].items():
        weight: dict[str, float] = {}
        for row in steps.values():
            for c, x in row["by_first"].items():
                weight[c] = weight.get(c, 0.0) + x["share"]
        chars = sorted(weight, key=lambda c: -weight[c])[:4]
        print(f"\n{method}: training rollouts by first character, share / passed among them (%)")
        print("| step | passed | " + " | ".join(f"{c!r}" for c in chars) + " |")
        print("|---:|---:|" + "---:|" * len(chars))
        for step, row in steps.items():
            cells = [f"{100 * row['by_first'][c]['share']:.0f} / {100 * row['by_first'][c]['pass_rate']:.0f}"
                     if c in row["by_first"] else "0 / –" for c in chars]
            print(f"| {step} | {100 * row['pass_rate']:.1f} | " + " | ".join(cells) + " |")


def main() -> int:
    """Run one diagnostic; an error the user can fix (a path that is not a finished run, a bad
    ``--set``) prints as one line, as ``distil`` prints it, not as a traceback."""
    from distil_core.errors import DistilError

    try:
        return run(sys.argv[1:])
    except DistilError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def written(write: Any, flag: str, path: str) -> None:
    """Run ``write``; a file that cannot be written (a file where a folder should be, a full
    disk) is one line naming the flag and the path, after the tables are already printed."""
    from distil_core.errors import DistilError

    try:
        write()
    except OSError as exc:
        raise DistilError(f"{flag} {path!r} cannot be written ({exc.strerror or exc}); the results above "
                          "are complete") from None


def check_outputs(args: argparse.Namespace) -> None:
    """Before any run is read: ``--json`` and ``--plot`` must not name a file of a run given (its
    config.yaml replaced by results would still parse, as a different config), and ``--plot``'s
    suffix must name a format a plot is written in."""
    from distil_core.cli.plots import figure_format
    from distil_core.run_files import refuse_run_files

    for flag in ("--json", "--plot"):
        path = getattr(args, flag[2:], None)
        if not path:
            continue
        refuse_run_files(path, getattr(args, "run_dirs", []), flag, "Choose a path outside the run's own files.")
        if flag == "--plot":
            figure_format(path, flag)


def counted(text: str) -> int:
    """A count of problems or samples: a whole number of at least 1 (argparse names the flag)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


counted.__name__ = "count (a whole number of at least 1)"


def temperature(text: str) -> float:
    """A sampling temperature: a finite number of at least 0 (0: greedy)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


temperature.__name__ = "temperature (a finite number of at least 0)"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gap = sub.add_parser("expert-gap", help="P(reference answer): bare prompt vs feedback in context")
    gap.add_argument("suite")
    gap.add_argument("--problems", type=counted, default=60)
    onp = sub.add_parser("expert-on-policy", help="the expert on the starting student's own samples")
    onp.add_argument("suite")
    onp.add_argument("--problems", type=counted, default=40)
    onp.add_argument("--samples", type=counted, default=8)
    mem = sub.add_parser("memorise", help="train on a fixed subset; pass@1 there and held out")
    mem.add_argument("suite")
    mem.add_argument("method")
    mem.add_argument("--problems", type=counted, default=32)
    mem.add_argument("--output-dir", default="runs/diagnostics")
    sharp = sub.add_parser("sharpness", help="trained runs: P(reference answer) per problem and per token")
    sharp.add_argument("suite")
    sharp.add_argument("run_dirs", nargs="+")
    sharp.add_argument("--problems", type=counted, default=100)
    sharp.add_argument("--base", action="store_true", help="add the starting model as the first row")
    temp = sub.add_parser("temperatures", help="trained runs: pass@1 and pass@k at several sampling temperatures")
    temp.add_argument("run_dirs", nargs="+")
    temp.add_argument("--temperatures", nargs="+", type=temperature, default=[0.5, 0.7, 1.0])
    temp.add_argument("--samples", type=counted, default=8, help="samples per problem (pass@k needs k ≤ samples)")
    temp.add_argument("--plot", metavar="PNG", help="also draw each method's mean pass@1 against its largest pass@k")
    passk = sub.add_parser("passk", help="trained runs: pass@k for k = 1, 2, 4, ... up to --samples")
    passk.add_argument("run_dirs", nargs="+")
    passk.add_argument("--samples", type=counted, default=32, help="samples per problem, a power of two")
    passk.add_argument("--plot", metavar="PNG", help="also draw each method's mean pass@k against k")
    passk.add_argument("--title", default="pass@k against the number of samples")
    passk.add_argument("--json", metavar="PATH", help="also write the result (ks, and per run its pass@k) as JSON")
    choices = sub.add_parser("choices", help="trained runs: training rollouts by their first character, step by step")
    choices.add_argument("run_dirs", nargs="+")
    choices.add_argument("--every", type=counted, default=4, help="report step 1 and every N-th step")
    for p in (gap, onp, mem, sharp, temp, passk):
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.command == "passk" and args.samples & (args.samples - 1):
        parser.error(f"--samples must be a power of two (1, 2, 4, ...), got {args.samples}")
    check_outputs(args)
    if args.command == "choices":
        result = first_choices(args.run_dirs, args.every)
        print_choices(result)
    elif args.command == "passk":
        result = pass_at_k(args.run_dirs, args.samples, args.overrides)
        ks = result["ks"]
        print("| run | " + " | ".join(f"pass@{k}" for k in ks) + " |")
        print("|---|" + "---:|" * len(ks))
        for run, r in result["runs"].items():
            print(f"| {run} | " + " | ".join(f"{100 * r['pass@k'][str(k)]:.1f}" for k in ks) + " |")
        if args.json:
            from distil_core.io import atomic_write_json

            written(lambda: atomic_write_json(args.json, result), "--json", args.json)
            print(f"JSON: {args.json}")
        if args.plot:
            written(lambda: plot_pass_at_k(result, args.plot, args.title), "--plot", args.plot)
    elif args.command == "temperatures":
        result = temperatures(args.run_dirs, args.temperatures, args.samples, args.overrides)
        ks = [k for k in next(iter(next(iter(result["runs"].values()))["by_temperature"].values())) if k.startswith("pass@")]
        print("| run | " + " | ".join(f"T {t}: " + " / ".join(ks) for t in args.temperatures) + " |")
        print("|---|" + "---:|" * len(args.temperatures))
        for run, r in result["runs"].items():
            cells = [" / ".join(f"{100 * r['by_temperature'][str(t)][k]:.1f}" for k in ks) for t in args.temperatures]
            print(f"| {run} | " + " | ".join(cells) + " |")
        top, means = method_means(result)
        print(f"\nMean over each method's runs, pass@1 / {top}:")
        print("| method | " + " | ".join(f"T {t}" for t in args.temperatures) + " |")
        print("|---|" + "---:|" * len(args.temperatures))
        for method, points in means.items():
            print(f"| {method} | " + " | ".join(f"{100 * a:.1f} / {100 * b:.1f}" for a, b in points) + " |")
        if args.plot:
            written(lambda: plot_frontier(top, means, args.temperatures, args.plot), "--plot", args.plot)
    elif args.command == "sharpness":
        result = sharpness(args.suite, args.run_dirs, args.problems, args.overrides, base=args.base)
        print("| run | mean P(answer) | median P(answer) | tokens p < 0.1 | tokens p > 0.9 |")
        print("|---|---:|---:|---:|---:|")
        for run, r in result["runs"].items():
            print(f"| {run} | {r['mean_p_answer']:.3f} | {r['median_p_answer']:.3f} | "
                  f"{100 * r['tokens_below_0.1']:.1f} % | {100 * r['tokens_above_0.9']:.1f} % |")
        bins = [label for label, _, _ in P_ANSWER_BINS]
        print("\nProblems by P(reference answer), and the mean probability of the model's own greedy answer")
        print("| run | " + " | ".join(f"P {b}" for b in bins) + " | P(greedy answer) |")
        print("|---|" + "---:|" * (len(bins) + 1))
        for run, r in result["runs"].items():
            cells = [f"{100 * r['problems_by_p_answer'][b]:.0f} %" for b in bins]
            print(f"| {run} | " + " | ".join(cells) + f" | {r['mean_p_greedy_answer']:.3f} |")
        print("\nBy answer position: P(reference token) / entropy (nats) of the model's distribution")
        positions = max(len(r["entropy_by_position"]) for r in result["runs"].values())
        print("| run | " + " | ".join(f"position {i}" for i in range(positions)) + " |")
        print("|---|" + "---:|" * positions)
        for run, r in result["runs"].items():
            cells = [f"{p:.2f} / {h:.2f}" for p, h in zip(r["p_reference_by_position"], r["entropy_by_position"])]
            print(f"| {run} | " + " | ".join(cells) + " |")
    elif args.command == "expert-gap":
        result = expert_gap(args.suite, args.problems, args.overrides)
        for who in ("student", "expert"):
            print(f"{args.suite} {who:<8} P(answer) {result[who]['p_answer']:.3f}   P(first token) {result[who]['p_first_token']:.3f}")
    elif args.command == "expert-on-policy":
        result = expert_on_policy(args.suite, args.problems, args.samples, args.overrides)
        on, after, first = result["on_reference"], result["after_first_error"], result["first_token"]
        print(f"{args.suite}: {result['rollouts']} samples of the starting model, {100 * result['pass_rate']:.1f} % right")
        print(f"  first token: expert P(reference) {first['expert_p_reference']:.3f}, "
              f"student {first['student_p_reference']:.3f}")
        print(f"  {on['states']} states on the reference: expert P(reference) {on['expert_p_reference']:.3f}, "
              f"student {on['student_p_reference']:.3f}, KL(q||p) {on['kl']:.3f}")
        print(f"  {after['states']} states after the first wrong token: expert's top token p {after['expert_max_p']:.3f}, "
              f"it is the reference's token there {100 * after['expert_top_is_reference']:.1f} % of the time, "
              f"KL(q||p) {after['kl']:.3f}")
        print("  by first token: share of samples, share right, and the failed samples' mean KL(q||p) over the later tokens")
        for text, r in result["by_first_token"].items():
            print(f"    {text!r}: {100 * r['share']:.1f} % of samples, {100 * r['pass_rate']:.1f} % right, "
                  f"later KL {r['later_kl']:.3f}")
    else:
        result = memorise(args.suite, args.method, args.problems, args.overrides,
                          f"{args.output_dir}/{args.suite}-{args.method}")
        tb, ta = result["train_set_pass@1"]
        hb, ha = result["held_out_pass@1"]
        print(f"{args.suite} {args.method}: {args.problems} training problems {100 * tb:.1f} → {100 * ta:.1f} pass@1; "
              f"held out {100 * hb:.1f} → {100 * ha:.1f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
