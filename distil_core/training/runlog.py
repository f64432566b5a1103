"""What a run writes: JSONL logs, the per-step metrics row merged over ranks, and summary.json.

Every rank computes its own share of a step; rank 0 alone writes. A line written after the
checkpoint a run resumes from is dropped (it will be written again), so the logs of a resumed
run read as those of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Iterator, Optional, Sequence

from distil_core.errors import DistilError
from distil_core.io import StagedWrites, atomic_write_bytes, atomic_write_json, staged_writes
from distil_core.losses.expert_batch import DIVERGENCE_KEYS
from distil_core.run_files import GROWING_LOGS, STEP_LOGS, log_lines, remove_run, remove_temporaries, rewrite_segments
from distil_core.run_files import rotate_if_large, step_record, step_records
from distil_core.training.distributed import World
from distil_core.training.step import REASONS_SHOWN
from distil_core.types import ExpertSignal, Feedback, Problem, Rollout, Verdict

PRIVATE = 0o600
"""The step logs' and config.yaml's permissions: readable by the run's owner alone."""


def open_log(path: str):
    """``path`` opened to append text; created ``PRIVATE`` (an existing file keeps its mode)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE), "a", encoding="utf-8")


class RunLog:
    """The files of one run directory, written by rank 0 (every call is collective where it gathers)."""

    def __init__(self, run_dir: str, world: World, *, max_mb: float = 0.0, keep_segments: Optional[int] = None):
        self.run_dir, self.world = run_dir, world
        self.max_bytes = int(max_mb * 2**20)  # 0: never rotate
        self.keep_segments = keep_segments

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[None]:
        """A write of ``name`` the disk refuses (full, read-only, gone) ends the run in one line
        that says how to go on: a resumed run starts from its last checkpoint and drops every
        log line after it, a line the refused write left half-written included."""
        try:
            yield
        except OSError as exc:
            raise DistilError(
                f"could not write {self.path(name)} ({exc.strerror or exc}); the checkpoints are kept: free some "
                f"space (or fix the directory), then continue from the last one with --output-dir {self.run_dir} "
                "--resume.") from None

    def append(self, name: str, record: dict[str, Any]) -> None:
        if self.world.main:
            with self.writing(name), open_log(self.path(name)) as fh:
                fh.write(json.dumps(record) + "\n")

    def write_lines(self, name: str, lines: list[str]) -> None:
        """Every rank's lines, in rank order (the global order), appended once by rank 0."""
        lines = self.world.concat(lines)
        if self.world.main and lines:
            with self.writing(name):
                with open_log(self.path(name)) as fh:
                    fh.write("\n".join(lines) + "\n")
                if self.max_bytes and name in GROWING_LOGS:
                    rotate_if_large(self.run_dir, name, self.max_bytes, self.keep_segments, mode=PRIVATE)

    def start_fresh(self) -> None:
        """A new run where an old one was (``--overwrite``, checked when the directory was
        prepared): everything the old run wrote goes, its checkpoints and final model too, so
        nothing of it can be mistaken for the new run's. Called once the new run is set up."""
        if self.world.main:
            remove_run(self.run_dir)

    def evaluation_at(self, step: int, label: str) -> Optional[dict[str, Any]]:
        """The metrics of evaluation ``label`` that eval.jsonl holds at ``step``, if any (the last
        such line). Read by rank 0 after :meth:`truncate` has checked the log; collective."""
        found = None
        if self.world.main:
            for _path, _number, line in log_lines(self.run_dir, "eval.jsonl"):
                record = json.loads(line) if line.strip() and line.endswith("\n") else None
                if isinstance(record, dict) and record.get("step") == step and record.get("label") == label:
                    found = {k: v for k, v in record.items() if k not in ("step", "label")}
        return self.world.gather(found)[0]

    def truncate(self, last_step: int) -> None:
        """Drop records written after the checkpoint we resume from (they will be written again),
        and the temporaries of writes the stopped run left unfinished.

        Every log is checked whole before any is rewritten, so a damaged one stops the resume with
        one line naming ``file:line`` and loses nothing (see :func:`check_step_log`), and every new
        content is written before any log is replaced (a full disk: one line, nothing cut). Collective:
        every rank raises rank 0's error, so none goes on to wait for the others."""
        problem = None
        if self.world.main:
            remove_temporaries(self.run_dir)
            try:
                self.drop_after(last_step)
            except DistilError as exc:
                problem = str(exc)
        problem = self.world.gather(problem)[0]
        if problem:
            raise DistilError(problem)

    def drop_after(self, last_step: int) -> None:
        """Rank 0's part of :meth:`truncate`. Every log's new content (segments too) is written to a
        temporary file before any log is replaced (:func:`~distil_core.io.staged_writes`), so a disk
        too full for them stops the resume in one line with every log as it was, never one log cut
        and the others not."""
        for name in STEP_LOGS:
            check_step_log(self.run_dir, name)

        def keep(line: str) -> bool:
            try:
                return bool(line.strip()) and step_record(line)["step"] <= last_step
            except ValueError:  # only an unfinished last line gets here: check_step_log passed
                return False

        with staged_writes() as staged:
            for name in STEP_LOGS:
                try:
                    self._stage_cut(name, keep, staged)
                except OSError as exc:
                    raise DistilError(
                        f"--resume could not cut {self.path(name)} back to step {last_step} ({exc.strerror or exc}); "
                        "no log was changed: free some space (about the size of the run's logs), then resume "
                        "again.") from None

    def _stage_cut(self, name: str, keep: Callable[[str], bool], staged: StagedWrites) -> None:
        """Stage log ``name`` (and its rotated segments) holding only the lines ``keep`` accepts."""
        if name in GROWING_LOGS:
            rewrite_segments(self.run_dir, name, keep, mode=PRIVATE, staged=staged)
        path = self.path(name)
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8", errors="replace") as fh:  # bad bytes: only in a line dropped
            lines = fh.readlines()
        kept = [line if line.endswith("\n") else line + "\n" for line in lines if keep(line)]
        if kept != lines:
            staged.write(path, "".join(kept).encode(), mode=PRIVATE)

    def write_bytes(self, name: str, data: bytes, *, mode: Optional[int] = None) -> None:
        if self.world.main:
            with self.writing(name):
                atomic_write_bytes(self.path(name), data, mode=mode)

    def write_json(self, name: str, value: Any) -> None:
        if self.world.main:
            with self.writing(name):
                atomic_write_json(self.path(name), value, mode=PRIVATE)


def check_step_log(run_dir: str, name: str) -> None:
    """A DistilError naming ``file:line`` at the first line of log ``name`` that is not a step
    record, and what to do (:func:`~distil_core.run_files.step_records`; an unfinished last line
    is the tail of a write that a crash or a full disk cut short, which the resumed run writes again)."""
    for _ in step_records(log_lines(run_dir, name), finished=False,
                          damaged="the log is damaged and --resume changed nothing: fix or delete that line, then "
                                  "resume again."):
        pass


def provenance_lines(step: int, rollouts, verdicts, queries, signals) -> list[str]:
    """One line per expert query: which feedback built its context, and whether its signal was used.

    ``context`` is the expert's context messages as built (each text cut to 4,000 characters),
    so a reviewer can read exactly what the expert was shown."""
    lines = []
    for q in queries:
        r, v, s = rollouts[q.rollout_index], verdicts[q.rollout_index], signals[q.rollout_index]
        lines.append(json.dumps({
            "step": step, "problem_id": q.problem_id, "rollout": r.group_index,
            "response_hash": r.response_hash, "passed": v.passed, "feedback": q.provenance,
            "has_signal": q.has_signal, "used": s is not None and s.ok,
            "context": [{"role": m.get("role", ""), "content": trimmed(str(m.get("content", "")), 4000)}
                        for m in q.context_messages],
        }))
    return lines


def rollout_lines(step: int, problems, rollouts, verdicts, feedback, n: int) -> list[str]:
    """Every rollout with its problem, verdict and feedback: what ``distil review`` shows."""
    return [json.dumps(rollout_record(step, problems[j // n], r, verdicts[j], feedback[j]))
            for j, r in enumerate(rollouts)]


def rollout_record(
    step: int, problem: Problem, rollout: Rollout, verdict: Verdict, feedback: Sequence[Feedback]
) -> dict[str, Any]:
    """One line of ``rollouts.jsonl``; long references, details and feedback texts are cut short."""
    return {
        "step": step, "problem_id": problem.id, "prompt": problem.user_text(),
        "reference": trimmed(problem.reference, 2000), "group_index": rollout.group_index,
        "response_text": rollout.response_text, "response_hash": rollout.response_hash, "finished": rollout.finished,
        "verdict": {"score": verdict.score, "passed": verdict.passed, "answer": verdict.answer,
                    "details": {k: trimmed(v, 500) for k, v in verdict.details.items()}},
        "feedback": [{"source": f.source, "kind": f.kind, "text": trimmed(f.text, 2000)} for f in feedback],
    }


def trimmed(value: Any, limit: int) -> Any:
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


def expert_accounting(signals: Sequence[Optional[ExpertSignal]]) -> dict[str, Any]:
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


def merge_accounting(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ranks' :func:`expert_accounting` as one: access levels joined, costs summed."""
    out: dict[str, Any] = {}
    levels = sorted({lvl for p in parts for lvl in p.get("expert_access", "").split(",") if lvl and lvl != "none"})
    if any("expert_access" in p for p in parts):
        out["expert_access"] = ",".join(levels) if levels else "none"
    for p in parts:
        for key, value in p.items():
            if key != "expert_access":
                out[key] = out.get(key, 0.0) + float(value)
    return out


def step_row(step: int, world: World, counts: dict[str, float], accounting: dict[str, Any],
             timings: dict[str, float], stats: dict[str, float], lr: float,
             reasons: Sequence[str] = ()) -> dict[str, Any]:
    """The step's metrics row over every rank: counts summed, costs merged, each time the
    slowest rank's (the step waits for it), and the first few distinct reasons the expert's
    failed answers gave (``expert_fail_reasons``, only on a step with failures). Collective."""
    ranks = world.gather((counts, accounting, timings, list(reasons)))
    total = {k: sum(c[k] for c, _, _, _ in ranks) for k in counts}
    timings = {k: max(t.get(k, 0.0) for _, _, t, _ in ranks) for k in timings}
    why = list(dict.fromkeys(r for _, _, _, rs in ranks for r in rs))[:REASONS_SHOWN]
    rows = total["rollouts"]
    row: dict[str, Any] = {
        "step": step,
        "loss": stats.pop("loss"),
        "reward": total["reward"] / rows,
        "pass_rate": total["pass_rate"] / rows,
        **dict.fromkeys(DIVERGENCE_KEYS),  # null unless the expert sent a distribution (dense, top-k)
        **stats,
        "feedback_coverage": total["feedback_coverage"] / rows,
        "demo_coverage": total["demo_coverage"] / rows,
        "feedback_cut": total["feedback_cut"],
        "signal_rollouts": total["signal_rollouts"],
        "dropped_no_signal": total["dropped_no_signal"],
        "expert_failed": total["expert_failed"],
        **({"expert_fail_reasons": why} if why else {}),
        **merge_accounting([a for _, a, _, _ in ranks]),
        "response_tokens": total["generated"] / rows,
        "tokens_per_s": total["generated"] / max(timings["time_generate"], 1e-9),
        "lr": lr,
        **timings,
    }
    if world.distributed:
        row["world_size"] = world.size
    return row


def reference_tokens(task: Any, tokenizer: Any, problems: Sequence[Problem]) -> Optional[float]:
    """Mean length in tokens (with the end token) of the reference responses of the evaluation
    problems: the length an expert that reproduces the reference writes, to set beside the
    student's ``response_tokens``."""
    hook = getattr(task, "answer_text", None)
    texts = [hook(p) if callable(hook) else p.reference for p in problems]
    texts = [t for t in texts if isinstance(t, str)]
    if not texts:
        return None
    return sum(len(tokenizer.encode(t, add_special_tokens=False)) + 1 for t in texts) / len(texts)


def run_summary(config: Any, before: dict[str, float], after: dict[str, float], **facts: Any) -> dict[str, Any]:
    """summary.json: the run's pass@k before and after training and their gain, with ``facts``
    (model and, for a tiny base, its weights' fingerprint; steps, wall time, evaluation set,
    run directory, and ``source``, the toolkit revision of the session that finished the run)
    beside them. ``time_s`` splits the
    last session's time into setup (building or loading the models), training and evaluation.
    Only the metrics both evaluations report are kept (a run resumed across a version that
    stopped reporting one, as maj@n for a verifier without answers)."""
    keys = [k for k in before if "@" in k and k in after]  # an evaluation resumed from an older one may lack some
    return {
        "method": config.method,
        "task": config.task.name,
        "model": facts["model"],
        "model_sha256": facts.get("model_sha256"),
        "steps": facts["steps"],
        "seed": config.seed,
        "wall_s": facts["wall_s"],
        "time_s": facts.get("time_s", {}),
        "before": {k: before[k] for k in keys},
        "after": {k: after[k] for k in keys},
        "gain": {k: after[k] - before[k] for k in keys},
        "eval": {"problems": facts["problems"], "samples": config.eval.samples, "split": config.eval.split},
        "reference_tokens": facts["reference_tokens"],
        "run_dir": facts["run_dir"],
        "source": facts.get("source"),
    }
