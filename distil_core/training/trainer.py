"""The training loop: generate → verify → feedback → context → expert → loss → step.

Every method runs on the same rollouts. Each piece lives in its own module; this file only
wires them together, logs, evaluates and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from typing import Any, Callable, Optional, Sequence

import torch

from distil_core.training import checkpointing as ckpt
from distil_core.io import atomic_directory, atomic_write_bytes, atomic_write_json
from distil_core.training import fsdp
from distil_core.losses.chunked import CHUNKED_METHODS
from distil_core.config import METHODS_NEEDING_EXPERT, RunConfig
from distil_core.training.distributed import World, init_world, rank_device
from distil_core.errors import ConfigError, DistilError, PluginError
from distil_core.training.evaluate import sample_and_grade, summarise
from distil_core.models.lora import load_policy_state, policy_state, trainable_parameters
from distil_core.losses.reference import group_advantages, sequence_ce_loss
from distil_core.losses.methods import (
    LossOutput,
    RowContext,
    chunked_distillation_loss,
    distillation_loss,
    grpo_micro_loss,
    stack_signals,
)
from distil_core.models.forward import (
    check_projection,
    output_projection,
    response_hidden,
    response_logits,
)
from distil_core.plugin_host import PluginHost
from distil_core.protocols import resolve, resolve_all
from distil_core.training.runtime import Runtime, build_runtime
from distil_core.types import ExpertQuery, ExpertSignal, Feedback, Problem, Rollout, Verdict

EVAL_SEED_OFFSET = 7919  # before/after evaluations share one seed: common random numbers


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        *,
        run_dir: Optional[str] = None,
        resume: bool = False,
        host: Optional[PluginHost] = None,
        echo: Callable[[str], None] = print,
        world: Optional[World] = None,
    ):
        self.config = config
        self.world = world or init_world(config.model.device)
        main = self.world.main
        self.echo = echo if main else (lambda _msg: None)
        self.progress = config.train.progress and main
        self.started = time.time()
        if self.world.size > config.rollout.problems_per_step:
            raise ConfigError(
                f"rollout.problems_per_step ({config.rollout.problems_per_step}) is smaller than the number of "
                f"processes ({self.world.size}): every rank needs at least one problem per step.")
        # FSDP2 shards the policy across the ranks; with one process there is nothing to shard
        self.sharded = self.world.distributed and config.train.parallel == "fsdp"
        if self.sharded:
            fsdp.check_config(config)
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        local = config
        if self.world.distributed:
            local = config.model_copy(deep=True)
            local.model.device = rank_device(config.model.device, self.world)
        if not main:
            self.world.barrier()  # rank 0 builds anything cached first (the tiny base)
        self.rt: Runtime = build_runtime(local, host, progress=self.progress)
        if main:
            self.world.barrier()
        self.model = self.rt.model
        self.model.train()
        self.world.broadcast_params(trainable_parameters(self.model))
        self.chunked = config.loss.chunk_size > 0 and config.method in CHUNKED_METHODS
        if self.chunked:
            try:
                check_projection(self.model, self.rt.pad_id)
            except (ValueError, AttributeError) as exc:
                raise ConfigError(f"loss.chunk_size: {exc}") from None
        if self.sharded:  # after the runtime: self/hf expert copies stay whole, local copies
            fsdp.shard_policy(self.model)
        opt = config.optim
        self.optimizer = torch.optim.AdamW(
            trainable_parameters(self.model), lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / opt.warmup_steps) if opt.warmup_steps else 1.0
        )
        self.train_problems, self.test_problems = evaluation_split(self.rt.task, config.eval.split, config.eval.problems)
        if not self.train_problems or not self.test_problems:
            raise DistilError(f"task {config.task.name!r} returned no train or no test problems")
        # one run directory for every rank: rank 0's (a default name holds the time)
        self.run_dir = self.world.gather(run_dir or config.train.output_dir or default_run_dir(config.method))[0]
        self.step = 0
        self.evals: dict[str, dict[str, float]] = {}
        os.makedirs(self.run_dir, exist_ok=True)
        if resume:
            self._resume()
        elif main:
            for name in ("metrics.jsonl", "provenance.jsonl", "rollouts.jsonl", "eval.jsonl", "summary.json"):
                if os.path.exists(os.path.join(self.run_dir, name)):
                    os.unlink(os.path.join(self.run_dir, name))
        if main:
            atomic_write_bytes(os.path.join(self.run_dir, "config.yaml"), config.to_yaml().encode())
        self.world.barrier()

    # -- one step ---------------------------------------------------------------------------

    def problems_for_step(self, step: int) -> list[Problem]:
        """A deterministic function of (seed, step), so a resumed run sees the same problems."""
        rng = random.Random(self.config.seed * 1_000_003 + step)
        k = min(self.config.rollout.problems_per_step, len(self.train_problems))
        return rng.sample(self.train_problems, k)

    def sampling_key(self, step: int) -> int:
        """The key of step ``step``'s rollouts (see :mod:`distil_core.rollouts.local`)."""
        return self.config.seed * 1_000_003 + step

    def train_step(self, step: int) -> dict[str, Any]:
        """One step on this rank's shard of the step's problems; the returned row is global."""
        cfg, rt = self.config, self.rt
        n = cfg.rollout.samples_per_problem
        timings: dict[str, float] = {}
        clock = began = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[f"time_{name}"] = now - clock
            clock = now

        everyone = self.problems_for_step(step)
        lo, hi = self.world.shard(len(everyone))
        problems = everyone[lo:hi]
        prompts = [rt.context.student_prompt_ids(p) for p in problems]
        signals: list[Optional[ExpertSignal]] = []
        queries: list[ExpertQuery] = []
        with self._full_weights():  # generation and scoring call the model unevenly across ranks
            rollouts = rt.generator.sample(prompts, [p.id for p in problems], n, key=self.sampling_key(step))
            lap("generate")
            verdicts = _checked(resolve_all([rt.verifier.verify(problems[i // n], r) for i, r in enumerate(rollouts)]), Verdict, cfg.verifier.name)
            lap("verify")
            groups = [
                [(j, rollouts[j], verdicts[j]) for j in range(i * n, (i + 1) * n)] for i in range(len(problems))
            ]
            signals = [None] * len(rollouts)
            feedback: list[list[Feedback]] = [[] for _ in rollouts]
            if cfg.method in METHODS_NEEDING_EXPERT:
                feedback = self._collect_feedback(problems, rollouts, verdicts, groups, n)
                lap("feedback")
                queries = [
                    rt.context.build(problems[j // n], j, rollouts[j], feedback[j], groups[j // n])
                    for j in range(len(rollouts))
                ]
                asked = [q for q in queries if q.has_signal or cfg.loss.no_signal == "keep"]
                score = rt.expert.score
                if self.chunked and callable(getattr(rt.expert, "score_hidden", None)):
                    score = rt.expert.score_hidden  # a local model: its hidden states, projected a chunk at a time
                answered = resolve(score(asked)) if asked else []
                if len(answered) != len(asked):
                    raise PluginError(f"expert {cfg.expert.name!r} returned {len(answered)} signals for {len(asked)} queries")
                for q, s in zip(asked, answered):
                    signals[q.rollout_index] = s
                lap("expert")
        stats = self._update(prompts, rollouts, verdicts, signals, n, queries)
        lap("update")
        synced = getattr(rt.generator, "after_update", None)
        if callable(synced):  # a generator outside this process gets the new policy (server rollouts)
            stats.update(synced(self.model, step) or {})
            lap("sync")
        self._write_lines("provenance.jsonl", self._provenance_lines(step, rollouts, verdicts, queries, signals))
        if cfg.train.log_rollouts:
            self._write_lines("rollouts.jsonl", self._rollout_lines(step, problems, rollouts, verdicts, feedback, n))
        counts = {
            "rollouts": len(rollouts),
            "reward": sum(v.score for v in verdicts),
            "pass_rate": sum(v.passed for v in verdicts),
            "feedback_coverage": sum(bool(f) for f in feedback),
            "demo_coverage": sum(any(p["kind"] == "demonstration" for p in q.provenance) for q in queries),
            "signal_rollouts": sum(s is not None and s.ok for s in signals),
            "dropped_no_signal": sum(not q.has_signal for q in queries) if cfg.loss.no_signal == "skip" else 0,
            "expert_failed": sum(s is not None and not s.ok for s in signals),
            "generated": sum(len(r.response_ids) for r in rollouts),
        }
        timings["time_step"] = time.perf_counter() - began
        ranks = self.world.gather((counts, _expert_accounting(signals), timings))
        total = {k: sum(c[k] for c, _, _ in ranks) for k in counts}
        # the step waits for its slowest rank
        timings = {k: max(t.get(k, 0.0) for _, _, t in ranks) for k in timings}
        rows = total["rollouts"]
        row: dict[str, Any] = {
            "step": step,
            "loss": stats.pop("loss"),
            "reward": total["reward"] / rows,
            "pass_rate": total["pass_rate"] / rows,
            **stats,
            "feedback_coverage": total["feedback_coverage"] / rows,
            "demo_coverage": total["demo_coverage"] / rows,
            "signal_rollouts": total["signal_rollouts"],
            "dropped_no_signal": total["dropped_no_signal"],
            "expert_failed": total["expert_failed"],
            **_merge_accounting([a for _, a, _ in ranks]),
            "response_tokens": total["generated"] / rows,
            "tokens_per_s": total["generated"] / max(timings["time_generate"], 1e-9),
            "lr": self.scheduler.get_last_lr()[0],
            **timings,
        }
        if self.world.distributed:
            row["world_size"] = self.world.size
        return row

    def _collect_feedback(self, problems, rollouts, verdicts, groups, n) -> list[list[Feedback]]:
        """Per rollout and source; a source with ``feedback_batch(items)`` gets the step in one call."""
        items = [
            (problems[j // n], rollout, verdict, [(r, v) for _, r, v in groups[j // n]])
            for j, (rollout, verdict) in enumerate(zip(rollouts, verdicts))
        ]
        calls, owners = [], []
        for name, source in self.rt.feedback_sources:
            batch = getattr(source, "feedback_batch", None)
            if callable(batch):
                calls.append(batch(items))
                owners.append((name, None))
                continue
            for j, item in enumerate(items):
                calls.append(source.feedback(*item))
                owners.append((name, j))
        results = resolve_all(calls)
        out: list[list[Feedback]] = [[] for _ in rollouts]
        for (name, j), result in zip(owners, results):
            if j is not None:
                out[j].extend(_checked(list(result or []), Feedback, name))
                continue
            result = list(result or [])
            if len(result) != len(items):
                raise PluginError(f"feedback source {name!r}: feedback_batch returned {len(result)} lists for {len(items)} rollouts")
            for k, per_rollout in enumerate(result):
                out[k].extend(_checked(list(per_rollout or []), Feedback, name))
        return out

    def _update(self, prompts, rollouts, verdicts, signals, n, queries=()) -> dict[str, float]:
        cfg = self.config
        method = cfg.method
        rewarded = method == "distil" and cfg.loss.future_credit and cfg.loss.reward_weight > 0 and n > 1
        scores = torch.tensor([v.score for v in verdicts], dtype=torch.float32)  # this rank's rows
        readers = baseline_exclusions(queries, len(rollouts), n)
        rows = list(range(len(rollouts)))
        advantages = None
        text_mode = any(s is not None and s.ok and s.access == "text" for s in signals)
        # sampled-token experts never hold a distribution: they keep the full-logit path
        sampled = any(s is not None and s.ok and s.access == "sampled" for s in signals)
        world = self.world
        if method == "grpo":
            # advantages need the whole batch's rewards under advantage_scale=batch (or n == 1)
            parts = world.gather([v.score for v in verdicts])
            offset = sum(len(part) for part in parts[: world.rank])
            rewards = torch.tensor([r for part in parts for r in part], dtype=torch.float32)
            advantages = group_advantages(rewards, n, scale=cfg.loss.advantage_scale) if n > 1 else rewards - rewards.mean()
            advantages = advantages[offset : offset + len(verdicts)]
        targets = [self._text_target(s) if text_mode else r.response_ids for r, s in zip(rollouts, signals)]
        # rows the loss reads: every row for GRPO; rows with a signal (and, with a success term, every row) otherwise
        weight_of = [len(t) if (method == "grpo" or rewarded or (signals[j] is not None and signals[j].ok)) else 0
                     for j, t in enumerate(targets)]
        micro = _micro_batches(len(rows), n, cfg.optim.grad_accum)
        # each micro-batch is weighted by its share of the global batch: the ranks' gradients add up
        learning = sum(any(weight_of[j] for j in chunk) for chunk in micro)
        parts = world.gather((sum(weight_of), len(rows), len(micro), learning))
        total_tokens, total_rows, total_micro = (sum(part[i] for part in parts) for i in range(3))
        # under fsdp every rank runs as many forward/backward passes as the busiest one
        idle = max(part[3] for part in parts) - learning if self.sharded else 0
        totals: dict[str, float] = {"loss": 0.0}
        self.optimizer.zero_grad(set_to_none=True)
        for chunk in micro:
            micro_tokens = sum(weight_of[j] for j in chunk)
            if micro_tokens == 0:
                continue
            if self.chunked and not text_mode and not sampled:
                hidden, tokens, mask = response_hidden(
                    self.model, [prompts[j // n] for j in chunk], [targets[j] for j in chunk], self.rt.pad_id
                )
                out = self._chunked_loss(chunk, hidden, tokens, mask, signals, self._rows(chunk, n, scores, readers))
            else:
                logits, tokens, mask = response_logits(
                    self.model, [prompts[j // n] for j in chunk], [targets[j] for j in chunk], self.rt.pad_id
                )
                out = self._micro_loss(chunk, logits, tokens, mask, signals, advantages, text_mode, total_tokens,
                                       self._rows(chunk, n, scores, readers))
            scale = _grpo_scale(cfg.loss.loss_type, len(chunk), total_rows, total_micro) if method == "grpo" else micro_tokens / total_tokens
            (out.loss * scale).backward()
            totals["loss"] += float(out.loss.detach()) * scale
            for key, value in out.stats.items():
                if key != "signal_tokens":
                    totals[key] = totals.get(key, 0.0) + value * micro_tokens / total_tokens
        for _ in range(idle):  # a zero-weighted pass: its collectives match the other ranks'
            logits, _, _ = response_logits(self.model, [prompts[0]], [[self.rt.pad_id]], self.rt.pad_id)
            (logits.sum() * 0.0).backward()
        if world.distributed:
            if not self.sharded:  # FSDP summed them in its reduce-scatters
                world.sum_grads(trainable_parameters(self.model))
            parts = world.gather(totals)
            totals = {k: sum(p.get(k, 0.0) for p in parts) for k in {k for p in parts for k in p}}
        if cfg.optim.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            totals["grad_norm"] = fsdp.norm_value(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        hook = getattr(self.rt.expert, "on_policy_update", None)
        if callable(hook):
            with self._full_weights():
                hook(self.model)
        return totals

    def _full_weights(self) -> Any:
        """Under fsdp, the whole policy gathered for the block (see :func:`fsdp.full_weights`)."""
        return fsdp.full_weights(self.model) if self.sharded else contextlib.nullcontext()

    def _rows(self, chunk, n, rewards, readers) -> RowContext:
        return RowContext(group_size=n, eos_id=self.rt.tokenizer.eos_token_id, rewards=rewards[chunk],
                          baseline_exclude=readers[chunk])

    def _micro_loss(self, chunk, logits, tokens, mask, signals, advantages, text_mode, total_tokens, rows) -> LossOutput:
        cfg = self.config
        if cfg.method == "grpo":
            return grpo_micro_loss(cfg.loss, logits, tokens, mask, advantages[chunk].to(logits.device), None,
                                   float(total_tokens), max_completion_length=cfg.rollout.max_new_tokens)
        if text_mode:
            rows = torch.tensor([1.0 if signals[j] is not None and signals[j].ok else 0.0 for j in chunk], device=mask.device)
            masked = mask * rows.unsqueeze(1)
            return LossOutput(sequence_ce_loss(logits.float(), tokens, masked), {"signal_tokens": float(masked.sum())})
        expert = stack_signals([signals[j] for j in chunk], tokens.shape[1], logits.shape[-1], logits.device)
        return distillation_loss(cfg.method, cfg.loss, logits, tokens, mask, expert, rows)

    def _chunked_loss(self, chunk, hidden, tokens, mask, signals, rows) -> LossOutput:
        """The distillation loss with the student's logits made a chunk at a time."""
        weight, bias = output_projection(self.model)
        batch = stack_signals([signals[j] for j in chunk], tokens.shape[1], weight.shape[0], hidden.device)
        return chunked_distillation_loss(self.config.method, self.config.loss, hidden, weight, bias, tokens, mask, batch, rows)

    def _text_target(self, signal: Optional[ExpertSignal]) -> list[int]:
        if signal is None or not signal.ok:
            return []
        tok = self.rt.tokenizer
        return tok.encode(signal.text, add_special_tokens=False) + [tok.eos_token_id]

    # -- logging, evaluation, checkpoints -----------------------------------------------------

    def _append(self, name: str, record: dict[str, Any]) -> None:
        if self.world.main:
            with open(os.path.join(self.run_dir, name), "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def _write_lines(self, name: str, lines: list[str]) -> None:
        """Every rank's lines, in rank order (the global order), appended once by rank 0."""
        lines = self.world.concat(lines)
        if self.world.main and lines:
            with open(os.path.join(self.run_dir, name), "a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")

    def _provenance_lines(self, step, rollouts, verdicts, queries, signals) -> list[str]:
        lines = []
        for q in queries:
            r, v, s = rollouts[q.rollout_index], verdicts[q.rollout_index], signals[q.rollout_index]
            lines.append(json.dumps({
                "step": step, "problem_id": q.problem_id, "rollout": r.group_index,
                "response_hash": r.response_hash, "passed": v.passed, "feedback": q.provenance,
                "has_signal": q.has_signal, "used": s is not None and s.ok,
            }))
        return lines

    def _rollout_lines(self, step, problems, rollouts, verdicts, feedback, n) -> list[str]:
        """Every rollout with its problem, verdict and feedback: what ``distil review`` shows."""
        return [json.dumps(rollout_record(step, problems[j // n], r, verdicts[j], feedback[j]))
                for j, r in enumerate(rollouts)]

    def run_eval(self, label: str) -> dict[str, float]:
        """pass@k on the test problems; under several ranks each evaluates a contiguous share."""
        cfg = self.config
        lo, hi = self.world.shard(len(self.test_problems))
        mine = self.test_problems[lo:hi]
        bar = _bar(len(mine), f"eval ({label})", self.progress)
        prompts = [self.rt.context.student_prompt_ids(p) for p in mine]
        with self._full_weights():
            correct, answers = sample_and_grade(
                self.rt.generator,
                prompts,
                mine,
                self.rt.verifier,
                samples=cfg.eval.samples,
                temperature=cfg.eval.temperature,
                max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                seed=cfg.seed + EVAL_SEED_OFFSET,
                progress=bar,
            )
            greedy = None
            if cfg.eval.greedy:
                greedy, _ = sample_and_grade(
                    self.rt.generator, prompts, mine, self.rt.verifier,
                    samples=1, temperature=0.0, max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                    seed=cfg.seed + EVAL_SEED_OFFSET,
                )
        bar.close()
        result = summarise(self.world.concat(correct), self.world.concat(answers), ks=cfg.eval.ks, samples=cfg.eval.samples)
        if greedy is not None:
            greedy = self.world.concat(greedy)
            result["greedy@1"] = sum(row[0] for row in greedy) / max(len(greedy), 1)
        self.evals[label] = result
        self._append("eval.jsonl", {"step": self.step, "label": label, **result})
        return result

    def save(self) -> str:
        expert_state = getattr(self.rt.expert, "state_dict", None)
        if self.sharded:  # gathered whole on rank 0: the checkpoint of one process
            policy, optim = fsdp.model_state(self.model), fsdp.optimizer_state(self.model, self.optimizer)
        else:
            policy, optim = policy_state(self.model), self.optimizer.state_dict()
        state = {
            "step": self.step,
            "model": policy,  # under LoRA: the adapters only
            "optimizer": optim,
            "scheduler": self.scheduler.state_dict(),
            "expert": expert_state() if callable(expert_state) else {},
            "rng": ckpt.rng_state(),
            "evals": self.evals,
            "elapsed": time.time() - self.started,
            "world_size": self.world.size,  # for the record: a checkpoint resumes on any number of ranks
        }
        path = ckpt.save_checkpoint(self.run_dir, self.step, state) if self.world.main else ""
        self.world.barrier()
        return path

    def _resume(self) -> None:
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            raise DistilError(f"--resume: no checkpoint in {self.run_dir!r}/checkpoints; start without --resume.")
        state = ckpt.load_checkpoint(path)
        if self.sharded:
            fsdp.load_state(self.model, self.optimizer, state["model"], state["optimizer"], where=path)
        else:
            load_policy_state(self.model, state["model"], where=path)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        loader = getattr(self.rt.expert, "load_state_dict", None)
        if callable(loader):
            loader(state.get("expert", {}))
        ckpt.set_rng_state(state["rng"])
        self.step = state["step"]
        self.evals = state.get("evals", {})
        self.started -= state.get("elapsed", 0.0)
        if self.world.main:
            for name in ("metrics.jsonl", "provenance.jsonl", "rollouts.jsonl", "eval.jsonl"):
                _truncate_jsonl(os.path.join(self.run_dir, name), self.step)
        self.echo(f"Resumed {self.run_dir} at step {self.step}.")

    def fit(self) -> dict[str, Any]:
        cfg = self.config
        total = cfg.train.steps
        if "before" not in self.evals:
            self.run_eval("before")
        if self.step < total:
            self.evals.pop("after", None)  # a finished run resumed with more steps: evaluate again at its end
        bar = _bar(total, f"{cfg.method}", self.progress, initial=self.step)
        while self.step < total:
            self.step += 1
            row = self.train_step(self.step)
            self._append("metrics.jsonl", row)
            bar.set_postfix(reward=f"{row['reward']:.2f}", loss=f"{row['loss']:.3f}")
            bar.update()
            if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < total:
                self.run_eval(f"step {self.step}")
            if cfg.train.save_every and self.step % cfg.train.save_every == 0:
                self.save()
        bar.close()
        after = self.evals.get("after") or self.run_eval("after")
        if cfg.train.save_every == 0 or self.step % cfg.train.save_every:
            self.save()
        self._save_final_model()
        return self._summary(self.evals["before"], after)

    def _save_final_model(self) -> None:
        weights = {"state_dict": fsdp.full_model_state(self.model)} if self.sharded else {}
        if self.world.main:
            with atomic_directory(os.path.join(self.run_dir, "final")) as tmp:
                self.model.save_pretrained(tmp, **weights)
                self.rt.tokenizer.save_pretrained(tmp)
        self.world.barrier()

    def _reference_tokens(self) -> Optional[float]:
        """Mean length in tokens (with the end token) of the reference responses of the evaluation
        problems: the length an expert that reproduces the reference writes, to set beside the
        student's ``response_tokens``."""
        hook = getattr(self.rt.task, "answer_text", None)
        texts = [hook(p) if callable(hook) else p.reference for p in self.test_problems]
        texts = [t for t in texts if isinstance(t, str)]
        if not texts:
            return None
        tok = self.rt.tokenizer
        return sum(len(tok.encode(t, add_special_tokens=False)) + 1 for t in texts) / len(texts)

    def _summary(self, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
        keys = [k for k in before if "@" in k]
        summary = {
            "method": self.config.method,
            "task": self.config.task.name,
            "model": self.rt.model_source,
            "steps": self.step,
            "seed": self.config.seed,
            "wall_s": round(time.time() - self.started, 1),
            "before": {k: before[k] for k in keys},
            "after": {k: after[k] for k in keys},
            "gain": {k: after[k] - before[k] for k in keys},
            "eval": {"problems": len(self.test_problems), "samples": self.config.eval.samples,
                     "split": self.config.eval.split},
            "reference_tokens": self._reference_tokens(),
            "run_dir": os.path.abspath(self.run_dir),
        }
        if self.world.main:
            atomic_write_json(os.path.join(self.run_dir, "summary.json"), summary)
        return summary


# -- helpers -----------------------------------------------------------------------------------


def evaluation_split(task: Any, split: str, count: int) -> tuple[list[Problem], list[Problem]]:
    """(training problems, evaluation problems) for ``eval.split``.

    "validation" holds out the last ``count`` train problems — never the test problems — and
    trains on the rest, so knobs chosen on it say nothing about the test set in advance.
    """
    train = list(task.problems("train"))
    if split == "test":
        return train, list(task.problems("test"))[:count]
    if count >= len(train):
        raise ConfigError(f"eval.split: validation takes eval.problems={count} problems out of the "
                          f"{len(train)} train problems and leaves none to train on; lower eval.problems")
    return train[:-count], train[-count:]


def default_run_dir(method: str) -> str:
    return os.path.join("runs", f"{method}-{time.strftime('%Y%m%d-%H%M%S')}")


def rollout_record(
    step: int, problem: Problem, rollout: Rollout, verdict: Verdict, feedback: Sequence[Feedback]
) -> dict[str, Any]:
    """One line of ``rollouts.jsonl``; long references, details and feedback texts are cut short."""
    return {
        "step": step, "problem_id": problem.id, "prompt": problem.user_text(),
        "reference": _trimmed(problem.reference, 2000), "group_index": rollout.group_index,
        "response_text": rollout.response_text, "response_hash": rollout.response_hash, "finished": rollout.finished,
        "verdict": {"score": verdict.score, "passed": verdict.passed, "answer": verdict.answer,
                    "details": {k: _trimmed(v, 500) for k, v in verdict.details.items()}},
        "feedback": [{"source": f.source, "kind": f.kind, "text": _trimmed(f.text, 2000)} for f in feedback],
    }


def _trimmed(value: Any, limit: int) -> Any:
    """``value`` itself when it is JSON of at most ``limit`` characters; else its text, cut there."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = str(value)
    else:
        if len(text) <= limit:
            return value
    return text[:limit] + "…"


def _micro_batches(count: int, group_size: int, accum: int) -> list[list[int]]:
    """Split rows into ``accum`` micro-batches on group boundaries (group baselines need whole groups)."""
    groups = [list(range(i, min(i + group_size, count))) for i in range(0, count, group_size)]
    per = max(1, -(-len(groups) // accum))
    return [sum(groups[i : i + per], []) for i in range(0, len(groups), per)]


def baseline_exclusions(queries: Sequence[ExpertQuery], rows: int, group_size: int) -> torch.Tensor:
    """``[rows, group_size]``: True where sibling b's expert context read row j (as its demonstration).

    The ``group_loo`` baseline of row j must not depend on j's own rollout; a sibling whose
    context shows j's response has a future cost that does (provenance records which rollout
    each demonstration came from), so it is left out of j's baseline.
    """
    exclude = torch.zeros(rows, group_size, dtype=torch.bool)
    for query in queries:
        for item in query.provenance:
            if item.get("kind") == "demonstration" and item.get("source") == "sibling":
                read = int(item["rollout"])
                if read // group_size == query.rollout_index // group_size:
                    exclude[read, query.rollout_index % group_size] = True
    return exclude


def _expert_accounting(signals: Sequence[Optional[ExpertSignal]]) -> dict[str, Any]:
    """Which access level the expert's answers used, and what they cost (summed ``usage``)."""
    answered = [s for s in signals if s is not None]
    if not answered:
        return {}
    levels = sorted({s.access for s in answered if s.ok})
    out: dict[str, Any] = {"expert_access": ",".join(levels) if levels else "none"}
    for s in answered:
        for key, value in s.usage.items():
            out[f"expert_{key}"] = out.get(f"expert_{key}", 0.0) + float(value)
    return out


def _merge_accounting(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ranks' :func:`_expert_accounting` as one: access levels joined, costs summed."""
    out: dict[str, Any] = {}
    levels = sorted({lvl for p in parts for lvl in p.get("expert_access", "").split(",") if lvl and lvl != "none"})
    if any("expert_access" in p for p in parts):
        out["expert_access"] = ",".join(levels) if levels else "none"
    for p in parts:
        for key, value in p.items():
            if key != "expert_access":
                out[key] = out.get(key, 0.0) + float(value)
    return out


def _grpo_scale(loss_type: str, micro_rows: int, rows: int, micro_batches: int) -> float:
    """Weight of one micro-batch so accumulation matches each GRPO aggregation's definition."""
    if loss_type == "dapo":
        return 1.0  # the loss already divides by the whole batch's token count
    if loss_type == "bnpo":
        return 1.0 / micro_batches  # token mean per micro-batch, averaged
    return micro_rows / rows  # grpo / dr_grpo: means over sequences


def _checked(items: Sequence[Any], model: type, plugin: str) -> list[Any]:
    out = []
    for item in items:
        if isinstance(item, model):
            out.append(item)
            continue
        try:
            out.append(model.model_validate(item))
        except Exception as exc:
            raise PluginError(f"plugin component {plugin!r} returned an invalid {model.__name__}: {exc}") from None
    return out


def _truncate_jsonl(path: str, last_step: int) -> None:
    """Drop records written after the checkpoint we resume from (they will be written again)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        kept = [line for line in fh if line.strip() and json.loads(line).get("step", 0) <= last_step]
    atomic_write_bytes(path, "".join(kept).encode())


def _bar(total: int, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)
