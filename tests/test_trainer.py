"""The trainer end to end on a tiny model: every method, provenance, accumulation, checkpoints."""

import hashlib
import json
import os

import pytest
import torch

from distil_core import DistilError, hookimpl
from distil_core.builtin import DigitsTask
from distil_core.training import checkpointing as ckpt
from distil_core.config import load_config
from distil_core.plugin_host import PluginHost
from distil_core.training.trainer import Trainer

from distil_core.testing import FAST_RUN

pytestmark = pytest.mark.slow  # every test here trains (or builds) a tiny run

METHODS = ["distil", "distil_local", "jsd", "reverse_kl", "grpo"]


def _trainer(run_dir, *overrides, resume=False):
    config = load_config(None, FAST_RUN + list(overrides))
    return Trainer(config, run_dir=str(run_dir), resume=resume, host=PluginHost(load_entrypoints=False),
                   echo=lambda *_: None)


def _rows(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_logs_and_summarises(tmp_path, method):
    trainer = _trainer(tmp_path, f"method={method}")
    start = [p.detach().clone() for p in trainer.model.parameters()]
    summary = trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "reward", "tokens_per_s", "feedback_coverage", "dropped_no_signal", "time_generate"):
        assert all(key in r for r in rows), key
    if method != "grpo":
        assert all("ce_to_expert" in r and r["signal_rollouts"] > 0 for r in rows)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert set(saved["before"]) == set(saved["after"]) >= {"pass@1", "pass@4", "avg@4", "maj@4"}
    assert (tmp_path / "final" / "config.json").exists() and (tmp_path / "config.yaml").exists()


def test_provenance_names_the_feedback_that_built_each_context(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.fit()
    records = _rows(tmp_path / "provenance.jsonl")
    metrics = _rows(tmp_path / "metrics.jsonl")
    assert len(records) == 4 * 16
    for r in records:
        kinds = {(f["source"], f["kind"]) for f in r["feedback"]}
        assert (("answer_check", "answer_check") in kinds) == (not r["passed"])
        assert r["has_signal"] == bool(r["feedback"])
    for m in metrics:
        step = [r for r in records if r["step"] == m["step"]]
        assert m["dropped_no_signal"] == sum(not r["has_signal"] for r in step)
        assert m["feedback_coverage"] == sum(not r["passed"] for r in step) / len(step)


def test_rollouts_log_holds_each_rollout_with_verdict_and_feedback(tmp_path):
    trainer = _trainer(tmp_path / "on")
    trainer.train_step(1)
    records = _rows(tmp_path / "on" / "rollouts.jsonl")
    assert len(records) == 16 and [r["group_index"] for r in records[:4]] == [0, 1, 2, 3]
    problems = {p.id: p for p in trainer.train_problems}
    for r in records:
        problem = problems[r["problem_id"]]
        assert r["step"] == 1 and r["prompt"] == problem.prompt and r["reference"] == problem.reference
        assert r["response_hash"] == hashlib.sha256(r["response_text"].encode()).hexdigest()[:16]
        assert r["verdict"]["details"]["expected"] == problem.reference
        kinds = [(f["source"], f["kind"]) for f in r["feedback"]]
        assert kinds == ([] if r["verdict"]["passed"] else [("answer_check", "answer_check")])
    off = _trainer(tmp_path / "off", "train.log_rollouts=false")
    off.train_step(1)
    assert not (tmp_path / "off" / "rollouts.jsonl").exists()


@pytest.mark.parametrize("method, extra", [
    ("distil", ["loss.baseline=group_loo"]),
    ("distil", ["loss.baseline=group_loo", "loss.reward_weight=0.5"]),
    ("grpo", ["loss.loss_type=dapo"]),
    ("grpo", ["loss.loss_type=dr_grpo"]),
])
def test_gradient_accumulation_gives_the_same_update(tmp_path, method, extra):
    """Micro-batches add up to the whole batch (dr_grpo: the divisor is batch × max_new_tokens).
    DistIL's batch baseline is each micro-batch's own (docs/algorithms.md), so it pins group_loo."""
    params = []
    for accum in (1, 2):
        trainer = _trainer(tmp_path / f"a{accum}", f"method={method}", "train.steps=1", *extra,
                           "rollout.temperature=2.0", f"optim.grad_accum={accum}", "optim.grad_clip=0")
        trainer.train_step(1)
        params.append([p.detach().clone() for p in trainer.model.parameters()])
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, "train.steps=2")
    trainer.step = 2
    first = trainer.save()
    trainer.step = 3

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(DistilError, match="disk full") as err:
        trainer.save()
    assert first in str(err.value) and "--resume" in str(err.value)  # names the last good one
    assert ckpt.latest_checkpoint(str(tmp_path)) == first
    assert ckpt.load_checkpoint(first)["step"] == 2
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-000002.pt"]


class _AsyncHint:
    """An async feedback source: the engine must await it."""

    async def feedback(self, problem, rollout, verdict, group):
        from distil_core import Feedback

        if verdict.passed:
            return []
        return [Feedback(source="async_hint", kind="critique", text=f"Try {problem.reference}.")]


class _ReferenceTextExpert:
    """Text access: answers every query with the reference answer of its problem."""

    def __init__(self, runtime):
        self.answers = {p.id: str(p.reference) for split in ("train", "test") for p in runtime.task.problems(split)}

    @property
    def capability(self):
        from distil_core import ExpertCapability

        return ExpertCapability(access="text", same_tokenizer=False)

    def score(self, queries):
        from distil_core import ExpertSignal

        return [ExpertSignal(access="text", text=self.answers[q.problem_id], usage={"cost_usd": 0.5}) if i % 4 else
                ExpertSignal.failed("text", "rate limited") for i, q in enumerate(queries)]


class _ReferenceSampledExpert(_ReferenceTextExpert):
    """Sampled access: proposes the reference's tokens at the student's positions."""

    @property
    def capability(self):
        from distil_core import ExpertCapability

        return ExpertCapability(access="sampled")

    async def score(self, queries):  # async experts are awaited by the engine
        from distil_core import ExpertSignal

        out = []
        for q in queries:
            ref = self.tokenizer.encode(self.answers[q.problem_id], add_special_tokens=False) + [self.tokenizer.eos_token_id]
            ids = torch.full((len(q.response_ids), 1), -100)
            n = min(len(ref), len(q.response_ids))
            ids[:n, 0] = torch.tensor(ref[:n])
            out.append(ExpertSignal(access="sampled", sample_ids=ids))
        return out


class _TestPlugin:
    from distil_core import hookimpl

    @hookimpl
    def register_feedback_sources(register):
        register("async_hint", _AsyncHint)

    @hookimpl
    def register_experts(register):
        def sampled(runtime):
            expert = _ReferenceSampledExpert(runtime)
            expert.tokenizer = runtime.tokenizer
            return expert

        register("reference_text", _ReferenceTextExpert)
        register("reference_sampled", sampled)


@pytest.mark.parametrize("chunk", [0, 3])
@pytest.mark.parametrize("expert", ["reference_text", "reference_sampled"])
def test_text_and_sampled_experts_async_feedback_and_failed_signals(tmp_path, expert, chunk):
    """Also with loss.chunk_size: these experts send no distribution and keep the full-logit path."""
    host = PluginHost(load_entrypoints=False)
    host.register_plugin(_TestPlugin, "test-plugin")
    try:
        # A hot sampling temperature makes sure some rollouts fail and get feedback.
        # a sampling expert gives no log q: the future cost is the CE it estimates
        config = load_config(None, FAST_RUN + [f"expert={expert}", "feedback=[async_hint, answer_check]", "train.steps=2",
                                               "loss.future_cost=ce",
                                               "rollout.temperature=2.0", f"loss.chunk_size={chunk}"])
        trainer = Trainer(config, run_dir=str(tmp_path), host=host, echo=lambda *_: None)
        start = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.fit()
    finally:
        host.unregister_plugin("test-plugin")
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))
    rows = _rows(tmp_path / "metrics.jsonl")
    records = _rows(tmp_path / "provenance.jsonl")
    failed = [r for r in records if not r["passed"]]
    assert failed and all({"source": "async_hint", "kind": "critique"} in r["feedback"] for r in failed)
    if expert == "reference_text":
        assert sum(r["expert_failed"] for r in rows) > 0  # every 4th query "rate limited": skipped, counted
        assert all(r["expert_access"] == "text" for r in rows)
        assert all(r["expert_cost_usd"] == 0.5 * r["signal_rollouts"] for r in rows)  # usage summed
    else:
        assert all(r["expert_access"] == "sampled" for r in rows)
    assert all(r["signal_rollouts"] + r["expert_failed"] + r["dropped_no_signal"] == 16 for r in rows)


def test_distil_eval_scores_a_finished_run_like_the_trainer_did(tmp_path, capsys):
    from distil_core.cli.main import main

    summary = _trainer(tmp_path, "train.steps=2").fit()
    assert main(["eval", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == str((tmp_path / "final").resolve())
    for key, value in summary["after"].items():
        assert result[key] == pytest.approx(value), key  # same model, same seeded sampling
    assert main(["eval", str(tmp_path / "nowhere")]) == 2


def test_distil_eval_evaluates_the_split_and_greedy_decode_the_run_was_evaluated_on(tmp_path, capsys):
    """eval.split=validation and eval.greedy reach `distil eval` as they reach the trainer's
    evaluation: the same problems, the same greedy@1."""
    from distil_core.cli.main import main

    summary = _trainer(tmp_path, "train.steps=1", "eval.split=validation", "eval.problems=6", "eval.greedy=true").fit()
    assert main(["eval", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "validation" and result["problems"] == 6 and "greedy@1" in result
    for key, value in summary["after"].items():
        assert result[key] == pytest.approx(value), key
    assert main(["eval", str(tmp_path), "--quiet"]) == 0
    assert "on validation digits (6 problems" in capsys.readouterr().out


class _TrainOnly(DigitsTask):
    """A task with no test split (a dataset whose test_fraction is 0)."""

    def problems(self, split):
        return DigitsTask.problems(self, split) if split == "train" else []


class _TrainOnlyPlugin:
    @hookimpl
    def register_tasks(register):
        register("train_only", _TrainOnly)


def test_a_task_without_test_problems_says_what_to_set(tmp_path, capsys, plugin_host, tiny_base_cache):
    from distil_core.cli.main import main

    plugin_host.register_plugin(_TrainOnlyPlugin, "train-only")
    assert main(["eval", "--quiet", *[a for item in FAST_RUN for a in ("--set", item)], "--set", "task.name=train_only"]) == 2
    error = capsys.readouterr().err
    assert "task 'train_only' has no test problems to evaluate on" in error and "eval.split=validation" in error
    with pytest.raises(DistilError, match="task 'train_only' has no test problems to evaluate on; .* "
                                          "or set eval.split=validation"):
        Trainer(load_config(None, FAST_RUN + ["task.name=train_only"]), run_dir=str(tmp_path / "run"),
                host=plugin_host, echo=lambda *_: None)


@pytest.mark.parametrize("method, extra", [("distil", "loss.baseline=group_loo"), ("distil_local", "seed=0"),
                                           ("jsd", "loss.beta=0.5"), ("reverse_kl", "loss.reverse_kl_gamma=0.5"),
                                           ("distil", "expert.options={weights: live, access: topk, k: 5}")])
def test_chunked_losses_give_the_same_update_as_full_logits(tmp_path, method, extra):
    """loss.chunk_size only changes how the logits are computed, not the step."""
    params, rows = [], []
    for chunk in (0, 2):
        trainer = _trainer(tmp_path / f"c{chunk}", f"method={method}", "train.steps=1", extra,
                           f"loss.chunk_size={chunk}", "optim.grad_clip=0")
        assert trainer.chunked == bool(chunk)
        rows.append(trainer.train_step(1))
        params.append([p.detach().clone() for p in trainer.model.parameters()])
    # one Adam step moves each weight by about lr (3e-4) whatever the gradient's size, so a
    # float32 rounding difference in a near-zero gradient can show as a few 1e-6
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)
    assert rows[1]["loss"] == pytest.approx(rows[0]["loss"], rel=1e-5, abs=1e-6)
    # a dense local expert sends hidden states to the chunked path, never [T, V] logits
    assert rows[1]["expert_access"] == ("topk" if "topk" in extra else "hidden")
    assert rows[0]["expert_access"] == ("topk" if "topk" in extra else "dense")
    if "ce_to_expert" in rows[0]:
        assert rows[1]["ce_to_expert"] == pytest.approx(rows[0]["ce_to_expert"], rel=1e-5)


def test_a_success_term_teaches_rows_that_have_no_expert_signal(tmp_path):
    """With loss.reward_weight a lone success (no feedback, no demonstration) still moves the policy."""
    trainer = _trainer(tmp_path, "train.steps=1", "loss.reward_weight=1.0", "optim.grad_clip=0",
                       "feedback=[]", "context.use_demonstrations=false", "loss.no_signal=skip")
    start = [p.detach().clone() for p in trainer.model.parameters()]
    row = trainer.train_step(1)
    assert row["signal_rollouts"] == 0 and row["pass_rate"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))


def test_greedy_evaluation_is_reported_beside_the_sampled_one(tmp_path):
    trainer = _trainer(tmp_path / "a", "train.steps=0", "eval.greedy=true")
    greedy = trainer.run_eval("before")["greedy@1"]
    # four samples at temperature 0 are four copies of the greedy answer
    cold = _trainer(tmp_path / "b", "train.steps=0", "eval.temperature=0").run_eval("before")
    assert greedy == pytest.approx(cold["pass@1"]) and 0.0 <= greedy <= 1.0
    summary = _trainer(tmp_path / "c", "train.steps=1", "eval.greedy=true").fit()
    assert "greedy@1" in summary["after"] and summary["reference_tokens"] > 1


@pytest.mark.parametrize("method", ["distil", "distil_local"])
def test_one_sample_per_problem_trains_without_siblings(tmp_path, method):
    """The group baseline and its success term need siblings; with one rollout each they step aside
    (the batch baseline, the default, keeps both)."""
    trainer = _trainer(tmp_path, f"method={method}", "train.steps=1", "rollout.samples_per_problem=1",
                       "rollout.temperature=2.0")
    start = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step(1)
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))


def test_the_batch_baseline_keeps_the_success_term_with_one_sample_per_problem(tmp_path):
    """With one rollout a problem the group baseline steps aside; the batch baseline compares a
    row with the other problems' rollouts, so a lone success still teaches (as with siblings)."""
    trainer = _trainer(tmp_path, "train.steps=1", "rollout.samples_per_problem=1", "rollout.problems_per_step=16",
                       "loss.baseline=batch", "loss.reward_weight=1.0", "optim.grad_clip=0", "feedback=[]",
                       "context.use_demonstrations=false")
    start = [p.detach().clone() for p in trainer.model.parameters()]
    row = trainer.train_step(1)
    assert row["signal_rollouts"] == 0 and 0 < row["pass_rate"] < 1
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))
    # under the group baseline the same rows have nothing to be centred on: nothing moves
    plain = _trainer(tmp_path / "group", "train.steps=1", "rollout.samples_per_problem=1",
                     "rollout.problems_per_step=16", "loss.baseline=group_loo", "loss.reward_weight=1.0",
                     "optim.grad_clip=0", "feedback=[]", "context.use_demonstrations=false")
    start = [p.detach().clone() for p in plain.model.parameters()]
    assert plain.train_step(1)["signal_rollouts"] == 0
    assert all(torch.equal(a, b) for a, b in zip(start, plain.model.parameters()))


def test_a_micro_batch_without_any_expert_signal_takes_only_the_success_term(tmp_path):
    """Chunked: rows with no signal get no [B, T, V] target laid out, only the success term."""
    from distil_core.losses.methods import stack_signals

    assert stack_signals([None, None], 3, 10, "cpu").access == "none"
    trainer = _trainer(tmp_path, "train.steps=1", "loss.chunk_size=2", "optim.grad_clip=0",
                       "feedback=[]", "context.use_demonstrations=false")
    start = [p.detach().clone() for p in trainer.model.parameters()]
    row = trainer.train_step(1)
    assert row["signal_rollouts"] == 0
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))


def test_a_run_closes_its_components_once_each_when_it_ends_however_it_ends(tmp_path):
    """Before, the run's verifier, feedback sources, expert and generator were never closed: a
    process that trains several runs (distil bench, a notebook) kept every finished run's
    workers until it exited (code_exec: two worker processes and threads per run)."""
    for ending, overrides in (("returns", []), ("raises", ["loss.expert_temperature=1e-45", "loss.no_signal=keep",
                                                           "train.max_nonfinite_steps=1"])):
        said, closed = [], []
        trainer = Trainer(load_config(None, FAST_RUN + ["train.steps=2", *overrides]), run_dir=str(tmp_path / ending),
                          host=PluginHost(load_entrypoints=False), echo=said.append)
        rt = trainer.rt
        assert rt.feedback_sources, "the default run has a feedback source"

        async def feedback_close():  # an async close is awaited
            closed.append("feedback")

        def expert_close():
            raise RuntimeError("socket gone")

        rt.verifier.close = lambda: closed.append("verifier")
        rt.feedback_sources[0][1].close = feedback_close
        rt.feedback_sources.append(("listed twice", rt.feedback_sources[0][1]))  # one object, closed once
        rt.expert.close = expert_close
        rt.generator.close = lambda: closed.append("generator")
        if ending == "raises":
            with pytest.raises(DistilError, match="not finite"):
                trainer.fit()
        else:
            trainer.fit()
        assert closed == ["verifier", "feedback", "generator"], ending
        expert = type(rt.expert).__name__
        assert f"warning: expert {expert}: close() failed (RuntimeError: socket gone)" in said, ending
