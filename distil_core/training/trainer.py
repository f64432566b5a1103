"""The training loop: generate → verify → feedback → context → expert → loss → step.

Every method runs on the same rollouts. :class:`Trainer` builds a run and drives it; the step's
data comes from :mod:`~distil_core.training.step`, the update from
:mod:`~distil_core.training.update`, the logs from :mod:`~distil_core.training.runlog`,
evaluations from :mod:`~distil_core.training.evaluate` and checkpoints from
:mod:`~distil_core.training.checkpointing`. This file only wires them together.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Callable, Optional

import torch
from safetensors import SafetensorError

from distil_core.config import RunConfig, check_resume_config
from distil_core.errors import ConfigError, DistilError
from distil_core.run_files import RUN_CONFIG_HEADER
from distil_core.text import shown_safely
from distil_core.io import atomic_directory
from distil_core.losses.methods import method_named
from distil_core.models.forward import check_projection, projects_plainly
from distil_core.models.lora import trainable_parameters
from distil_core.plugin_host import PluginHost
from distil_core.version import source_revision
from distil_core.tracking import Trackers
from distil_core.training import checkpointing as ckpt
from distil_core.training import fsdp
from distil_core.training.distributed import World, init_world, rank_device
from distil_core.training.evaluate import evaluate_on_ranks, evaluation_split
from distil_core.training.base_weights import starting_weights
from distil_core.training.guards import RunGuard
from distil_core.training.runlog import PRIVATE, RunLog, expert_accounting
from distil_core.training.rundir import default_run_dir, removed_if_unused, shared_run_dir
from distil_core.training.console import eval_line, progress_bar, step_line
from distil_core.training.runlog import provenance_lines
from distil_core.training.runlog import reference_tokens, rollout_lines, run_summary, step_row
from distil_core.training.runtime import Runtime, build_runtime
from distil_core.training.overlap import GradingOverlap
from distil_core.training.step import Clock, StepBatch, consult_expert, fail_reasons, problems_for_step, sample_rollouts
from distil_core.training.step import step_counts, step_key
from distil_core.training.reference_policy import ReferencePolicy
from distil_core.training.schedule import build_scheduler
from distil_core.training.update import Learner, update_policy
from distil_core.types import Problem


class Trainer:
    """One run: its components, policy and optimizer, logs, evaluations and checkpoints."""

    def __init__(self, config: RunConfig, *, run_dir: Optional[str] = None, resume: bool = False,
                 overwrite: bool = False, host: Optional[PluginHost] = None, echo: Callable[[str], None] = print,
                 world: Optional[World] = None, quiet: bool = False):
        self.config = config
        self.world = world or init_world(config.model.device)
        self.echo = echo if self.world.main else (lambda _msg: None)
        # what the console shows (``quiet``: neither bar nor lines) is this session's, not the run's config
        self.progress = config.train.progress and self.world.main and not quiet
        self.line_every = 0 if quiet or self.progress else config.train.log_every
        self.started = self.started_session = time.time()  # started moves back by the time of earlier sessions
        self.method = method_named(config.method)
        if self.world.size > config.rollout.problems_per_step:
            raise ConfigError(
                f"rollout.problems_per_step ({config.rollout.problems_per_step}) is smaller than the number of "
                f"processes ({self.world.size}): every rank needs at least one problem per step.")
        # FSDP2 shards the policy across the ranks; with one process there is nothing to shard
        self.sharded = self.world.distributed and config.train.parallel == "fsdp"
        if self.sharded:
            fsdp.check_config(config)
        # one run directory for every rank: rank 0's (a default name holds the time), made and
        # locked before anything slow runs, so a path that cannot be one fails at once; the lock
        # is held until the run ends (fit), or given up here when setting the run up fails
        reuse = "resume" if resume else "overwrite" if overwrite else "refuse"
        self.run_dir, created, self.lock = shared_run_dir(
            self.world, run_dir or config.train.output_dir or default_run_dir(config.method), reuse)
        with removed_if_unused(self.run_dir, created, self.lock):
            if resume:
                self._check_resume_config()
            random.seed(config.seed)
            torch.manual_seed(config.seed)
            # train.report_to: checked now (names, options, libraries); each opens on its first call
            self.trackers = Trackers.open(host, config.train, self.run_dir, enabled=self.world.main, warn=self.echo)
            self.rt: Runtime = self._build_runtime(host)
            self.chunked = config.loss.chunk_size > 0 and self.method.chunkable
            self.learner = self._build_learner()
            # the base it starts from, which its checkpoints record (rank 0 reads the weights)
            tiny = config.model.name == "tiny"  # cheap to hash: every rank does, for its summary
            self.base = starting_weights(self.learner, tiny) if self.world.main or tiny else None
            self.overlap = GradingOverlap(self.learner)
            self.times = {"setup": time.time() - self.started, "eval": 0.0}  # this session's, for the summary
            self.train_problems, self.test_problems = evaluation_split(
                self.rt.task, config.eval.split, config.eval.problems, config.task.name)
            self.step = 0
            self.evals: dict[str, dict[str, float]] = {}
            self.guard = RunGuard(config)
            self.log = RunLog(self.run_dir, self.world, max_mb=config.train.log_max_mb,
                              keep_segments=config.train.log_keep_segments)
            if resume:
                self._resume()
            else:
                self.log.start_fresh()
            self.log.write_bytes("config.yaml", (RUN_CONFIG_HEADER + config.to_yaml()).encode(),
                                 mode=PRIVATE)  # may hold API keys
        self.world.barrier()

    def _build_runtime(self, host: Optional[PluginHost]) -> Runtime:
        """The run's components, on this rank's device; rank 0 builds anything cached first (the tiny base)."""
        local = self.config
        if self.world.distributed:
            local = self.config.model_copy(deep=True)
            local.model.device = rank_device(self.config.model.device, self.world)
        if not self.world.main:
            self.world.barrier()
        rt = build_runtime(local, host, progress=self.progress)
        if self.world.main:
            self.world.barrier()
        rt.model.train()
        self.world.broadcast_params(trainable_parameters(rt.model))
        return rt

    def _build_learner(self) -> Learner:
        """The policy ready to train (checked for chunking, sharded under fsdp) with its optimizer."""
        model, opt = self.rt.model, self.config.optim
        if self.chunked:
            try:
                check_projection(model, self.rt.pad_id)
            except (ValueError, AttributeError) as exc:
                raise ConfigError(f"loss.chunk_size: {exc}") from None
        projects_plainly(model)  # settled now, at full precision: which path response_logits takes
        reference = ReferencePolicy.build(self.config, model, self.rt.expert)  # the initial weights, before sharding
        if self.sharded:  # after the runtime: self/hf expert copies stay whole, local copies
            fsdp.shard_policy(model)
        optimizer = torch.optim.AdamW(trainable_parameters(model), lr=opt.lr, betas=opt.betas,
                                      weight_decay=opt.weight_decay)
        scheduler = build_scheduler(optimizer, opt, total_steps=self.config.train.steps)
        return Learner(self.config, self.rt, model, optimizer, scheduler, self.world, self.method,
                       sharded=self.sharded, chunked=self.chunked, reference=reference)

    @property
    def model(self) -> Any:
        return self.learner.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.learner.optimizer

    @property
    def scheduler(self) -> Any:
        return self.learner.scheduler

    # -- one step ---------------------------------------------------------------------------

    def problems_for_step(self, step: int) -> list[Problem]:
        """A deterministic function of (seed, step), so a resumed run sees the same problems."""
        return problems_for_step(self.config, self.train_problems, step)

    def sampling_key(self, step: int) -> int:
        """The key of step ``step``'s rollouts (see :mod:`distil_core.rollouts.sampling`)."""
        return step_key(self.config.seed, step)

    def sampled_batch(self, step: int) -> StepBatch:
        """This rank's shard of step ``step``'s problems with their rollouts, sampled now."""
        everyone = self.problems_for_step(step)
        lo, hi = self.world.shard(len(everyone))
        problems = everyone[lo:hi]
        batch = StepBatch(problems, [self.rt.context.student_prompt_ids(p) for p in problems],
                          self.config.rollout.samples_per_problem)
        return sample_rollouts(self.rt, batch, key=self.sampling_key(step))

    def train_step(self, step: int) -> dict[str, Any]:
        """One step on this rank's shard of the step's problems; the returned row is global."""
        cfg, rt, clock = self.config, self.rt, Clock()
        ahead = step + 1 if cfg.rollout.overlap_grading and step < cfg.train.steps else None
        with self.learner.full_weights():  # generation and scoring call the model unevenly across ranks
            batch = self.overlap.take(step) or self.sampled_batch(step)
            clock.lap("generate")
            self.overlap.grade(batch, clock, next_step=ahead, sample=self.sampled_batch)
            consult_expert(rt, cfg, self.method, batch, chunked=self.chunked, clock=clock)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step's update uses (the schedule moves after it)
        stats = update_policy(self.learner, batch)
        clock.lap("update")
        synced = getattr(rt.generator, "after_update", None)
        if callable(synced):  # a generator outside this process gets the new policy (server rollouts)
            stats.update(synced(self.model, step) or {})
            clock.lap("sync")
        if step % cfg.train.log_rollouts_every == 0:  # the growing logs: every k-th step's rollouts
            self.log.write_lines("provenance.jsonl", provenance_lines(step, batch.rollouts, batch.verdicts,
                                                                      batch.queries, batch.signals))
        if cfg.train.log_rollouts and step % cfg.train.log_rollouts_every == 0:
            self.log.write_lines("rollouts.jsonl", rollout_lines(step, batch.problems, batch.rollouts,
                                                                 batch.verdicts, batch.feedback, batch.n))
        self.trackers.log_rollouts(step, batch)  # every train.log_rollout_table_every steps: a few of rank 0's
        return step_row(step, self.world, step_counts(batch, cfg), expert_accounting(batch.signals),
                        clock.total(), stats, lr, fail_reasons(batch.signals))

    # -- evaluation, checkpoints, the loop ----------------------------------------------------

    def run_eval(self, label: str) -> dict[str, float]:
        """pass@k on the test problems; under several ranks each evaluates a contiguous share."""
        began = time.time()
        with self.learner.full_weights():
            result = evaluate_on_ranks(self.rt, self.config, self.world, self.test_problems, label=label,
                                       progress=self.progress)
        self.times["eval"] += time.time() - began
        self.evals[label] = result
        self.log.append("eval.jsonl", {"step": self.step, "label": label, **result})
        self.trackers.log_eval(self.step, label, result)
        if self.line_every:
            self.echo(eval_line(self.step, label, result))
        return result

    def save(self) -> str:
        return ckpt.save_training(self.learner, self.run_dir, step=self.step, evals=self.evals,
                                  elapsed=time.time() - self.started, base=self.base)

    def _check_resume_config(self) -> None:
        """Rank 0 finds the checkpoint to resume from and compares the config with the one it was
        trained with (or, for an older checkpoint, the run's config.yaml) before anything slow is
        built; every rank raises the same error."""
        problem = None
        if self.world.main:
            try:
                checkpoint = ckpt.resume_point(self.run_dir)
                check_resume_config(self.run_dir, self.config, ckpt.recorded_config(checkpoint), checkpoint)
            except DistilError as exc:
                problem = (isinstance(exc, ConfigError), str(exc))
        problem = self.world.gather(problem)[0]
        if problem:
            raise (ConfigError if problem[0] else DistilError)(problem[1])

    def _resume(self) -> None:
        state = ckpt.restore_training(self.learner, self.run_dir, self.base)
        if self.base and isinstance(state.get("base"), dict):  # the weights it started from, not today's copy
            self.base = {**self.base, "sha256": state["base"].get("sha256") or self.base["sha256"]}
        self.step = state["step"]
        if self.step > self.config.train.steps:  # before a log is cut or config.yaml rewritten
            raise ConfigError(f"--resume: {self.run_dir} is at step {self.step}, past train.steps = "
                              f"{self.config.train.steps}; a run cannot be resumed backwards. Give train.steps "
                              f"of at least {self.step} (more steps train on), or evaluate the run as it is with "
                              f"`distil eval {self.run_dir}`.")
        self.evals = state.get("evals", {})
        self.started -= state.get("elapsed", 0.0)
        self.log.truncate(self.step)
        if "after" not in self.evals:  # a checkpoint written at the last step, before the final evaluation
            logged = self.log.evaluation_at(self.step, "after")
            if logged is not None:
                self.evals["after"] = logged  # a finished run resumed again is not evaluated twice
        self.trackers.resume(self.step)  # each tracker goes on from the checkpoint, as the JSONL files do
        self.echo(f"Resumed {self.run_dir} at step {self.step}.")

    def fit(self) -> dict[str, Any]:
        """Train to ``train.steps`` and evaluate; the trackers see the run from start to end and are
        closed when it ends, however it ends, and so are the run's components
        (:meth:`~distil_core.training.runtime.Runtime.close`)."""
        try:
            with self.trackers.session(self.config.model_dump(mode="json")):
                return self._fit()
        finally:
            for problem in self.rt.close():
                self.echo(f"warning: {shown_safely(problem)}")
            self.lock.release()  # the run directory is free for the next run (a --resume of this one)

    def _fit(self) -> dict[str, Any]:
        cfg = self.config
        total = cfg.train.steps
        if "before" not in self.evals:
            self.run_eval("before")
        if self.step < total:
            self.evals.pop("after", None)  # a finished run resumed with more steps: evaluate again at its end
        bar = progress_bar(total, f"{cfg.method}", self.progress, initial=self.step)
        while self.step < total:
            self.step += 1
            row = self.train_step(self.step)
            self.log.append("metrics.jsonl", row)
            self.trackers.log_metrics(self.step, row)  # after the JSONL record: a tracker is a copy
            self.guard.observe(row)  # logged first: the row that stops the run is on record
            bar.set_postfix(reward=f"{row['reward']:.2f}", loss=f"{row['loss']:.3f}")
            bar.update()
            if self.line_every and self.step % self.line_every == 0:
                self.echo(step_line(self.step, total, row))
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
        problem = ""
        if self.world.main:
            try:
                with atomic_directory(os.path.join(self.run_dir, "final")) as tmp:
                    self.model.save_pretrained(tmp, **weights)
                    self.rt.tokenizer.save_pretrained(tmp)
            except (OSError, SafetensorError) as exc:  # a full disk: the checkpoint just saved holds the same weights
                reason = getattr(exc, "strerror", None) or exc  # safetensors reports an I/O error as its own
                problem = (f"the final model could not be written to {self.run_dir}/final ({reason}); "
                           f"the checkpoint of step {self.step} is kept: free some space, then run again with "
                           f"--output-dir {self.run_dir} --resume.")
        problem = self.world.gather(problem)[0]
        if problem:
            raise DistilError(problem)

    def _summary(self, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
        session = time.time() - self.started_session
        times = {"setup": self.times["setup"], "train": session - self.times["setup"] - self.times["eval"],
                 "eval": self.times["eval"]}
        summary = run_summary(
            self.config, before, after, model=self.rt.model_source, steps=self.step,
            model_sha256=(self.base or {}).get("sha256") if self.config.model.name == "tiny" else None,
            time_s={k: round(v, 1) for k, v in times.items()}, wall_s=round(time.time() - self.started, 1),
            problems=len(self.test_problems),
            reference_tokens=reference_tokens(self.rt.task, self.rt.tokenizer, self.test_problems),
            run_dir=os.path.abspath(self.run_dir), source=source_revision())
        self.log.write_json("summary.json", summary)
        return summary


__all__ = ["Trainer"]
