"""The trainer's boundaries with plugins: expert signals are checked as they arrive, and a task
whose ``problems`` is a coroutine function is awaited like every other hook."""

import json
import math

import pytest
import torch

from distil_core import ExpertCapability, ExpertSignal, Feedback, hookimpl
from distil_core.builtin import DigitsTask
from distil_core.config import load_config
from distil_core.errors import ConfigError, PluginError
from distil_core.plugin_host import PluginHost
from distil_core.training.evaluate import evaluation_split
from distil_core.training.signals import check_signal
from distil_core.training.trainer import Trainer

from distil_core.testing import FAST_RUN, use_cache as distil_cache


@pytest.fixture(scope="module", autouse=True)
def _cache(tiny_base_cache_dir):
    with distil_cache(tiny_base_cache_dir):
        yield


def _dense(t, v):
    return torch.zeros(t, v)


def _topk(t, v, k=2):
    ids = torch.arange(k).repeat(t, 1)
    return ids, torch.full((t, k), math.log(0.4))


def _faulty_signal(fault, t, v):
    """A signal for a response of ``t`` tokens over a vocabulary of ``v``, wrong in one way."""
    if fault.endswith("logits"):
        logits = {"short_logits": lambda: _dense(t + 1, v), "wide_logits": lambda: _dense(t, v + 1)}.get(
            fault, lambda: _dense(t, v))()
        if fault == "nan_logits":
            logits[0, 3] = float("nan")
        if fault == "inf_logits":
            logits[0, 3] = -float("inf")
        return ExpertSignal(access="dense", logits=logits)
    if fault.startswith("topk"):
        ids, lps = _topk(t, v)
        if fault == "topk_positive":
            lps[0, 1] = 0.5
        elif fault == "topk_mass":
            lps[0] = math.log(0.6)
        elif fault == "topk_id_past_vocab":
            ids[0, 0] = v
        elif fault == "topk_negative_id":
            ids[0, 1] = -1
        elif fault == "topk_nan":
            lps[0, 1] = float("nan")
        elif fault == "topk_shape":
            lps = torch.full((t, 3), math.log(0.2))
        return ExpertSignal(access="topk", topk_ids=ids, topk_logprobs=lps)
    if fault == "sampled_past_vocab":
        ids = torch.zeros(t, 1, dtype=torch.long)
        ids[0, 0] = v + 5
        return ExpertSignal(access="sampled", sample_ids=ids)
    if fault == "text_surrogate":  # valid JSON ("\\ud800") decodes to half a character
        return ExpertSignal(access="text", text="12\ud80034")
    if fault == "text_huge":  # never tokenized
        return ExpertSignal(access="text", text="7" * 5_000_000)
    if fault == "hidden_head":
        return ExpertSignal(access="hidden", hidden=torch.zeros(t, 8), head=(torch.zeros(v - 1, 8), None))
    raise AssertionError(fault)


class _FaultyExpert:
    def __init__(self, runtime, fault: str):
        self.vocab, self.fault = runtime.model.config.vocab_size, fault

    @property
    def capability(self):
        return ExpertCapability(access="dense")

    def score(self, queries):
        if self.fault == "one_short":
            return [ExpertSignal(access="dense", logits=_dense(len(q.response_ids), self.vocab)) for q in queries][1:]
        return [_faulty_signal(self.fault, len(q.response_ids), self.vocab) for q in queries]


class _AsyncDigits(DigitsTask):
    """A task whose problems are served by a coroutine function (as a remote dataset would be)."""

    async def problems(self, split):
        return DigitsTask.problems(self, split)


class _FloodFeedback:
    """A source whose every item runs to 50,000 characters (a trace that never ends); it reads
    the runtime, so the tiny base pretrains without it."""

    def __init__(self, runtime):
        pass

    def feedback(self, problem, rollout, verdict, group):
        return [Feedback(source="flood", kind="execution_trace", text="start\n" + "x" * 50_000 + "\nend")]


class _SaysYes:
    """A verifier that answers a word, not a Verdict."""

    def verify(self, problem, rollout):
        return "yes"


class _Chatty:
    """A feedback source that answers a string, not a list of items (it iterates as letters)."""

    def feedback(self, problem, rollout, verdict, group):
        return "try again"


class _Plugin:
    @hookimpl
    def register_experts(register):
        register("faulty", _FaultyExpert)

    @hookimpl
    def register_verifiers(register):
        register("says_yes", _SaysYes)
        register("not_a_verifier", lambda: 42)

    @hookimpl
    def register_feedback_sources(register):
        register("flood", _FloodFeedback)
        register("chatty", _Chatty)

    @hookimpl
    def register_tasks(register):
        register("async_digits", _AsyncDigits)


def _host():
    host = PluginHost(load_entrypoints=False)
    host.register_plugin(_Plugin, "signals-test-plugin")
    return host


def _trainer(tmp_path, *overrides):
    config = load_config(None, FAST_RUN + ["loss.no_signal=keep"] + list(overrides))  # every rollout is asked
    return Trainer(config, run_dir=str(tmp_path), host=_host(), echo=lambda *_: None)


BAD_SIGNALS = [
    ("nan_logits", "logits is nan at position 0, column 3", "finite logits"),
    ("inf_logits", "logits is -inf at position 0, column 3", "finite logits"),
    ("short_logits", "logits has shape [", "[response tokens, vocabulary]"),
    ("wide_logits", "logits has shape [", "[response tokens, vocabulary]"),
    ("topk_positive", "topk_logprobs is 0.5 at position 0, column 1: above 0", "log q(a) ≤ 0"),
    ("topk_mass", "topk_logprobs at position 0 have logsumexp 0.1823 > 0", "sum to at most 1"),
    ("topk_nan", "topk_logprobs is nan at position 0, column 1", "log q(a) ≤ 0"),
    ("topk_id_past_vocab", "topk_ids holds id {v} at position 0, column 0, outside the vocabulary [0, {v})",
     "token ids in [0, {v})"),
    ("topk_negative_id", "topk_ids holds id -1 at position 0, column 1", "token ids in [0, {v})"),
    ("topk_shape", "topk_logprobs has shape [", "the shape of topk_ids"),
    ("sampled_past_vocab", "sample_ids holds id {v5} at position 0, column 0",
     "a negative id (no sample at that position) or token ids in [0, {v})"),
    ("hidden_head", "head weight has shape [{v1}, 8], not [{v}, 8]", "[vocabulary, hidden size]"),
    # before: a text went to the tokenizer as it came, so half a character was a TypeError that
    # ended the run and a text of megabytes a target of millions of tokens (gigabytes, then a crash)
    ("text_surrogate", "text holds half a character (a lone surrogate) at character 2",
     "UTF-8 text, the response the student should have written (it is trained on up to {m} of the student's tokens"),
    ("text_huge", "text is 5000000 characters long, far more than {m} tokens", "UTF-8 text, the response"),
]


@pytest.mark.parametrize("fault, problem, fix", BAD_SIGNALS, ids=[b[0] for b in BAD_SIGNALS])
def test_a_bad_expert_signal_is_a_failed_signal_counted_and_explained(tmp_path, fault, problem, fix):
    trainer = _trainer(tmp_path, f"expert={{name: faulty, options: {{fault: {fault}}}}}")
    v = trainer.model.config.vocab_size
    row = trainer.train_step(1)
    # every query was answered badly: each answer is failed, none is used by the loss
    assert row["expert_failed"] == 16 and row["signal_rollouts"] == 0  # 4 problems × 4 samples, all asked
    reasons = row["expert_fail_reasons"]  # the first 3 distinct ones (they differ in the response length)
    assert 1 <= len(reasons) <= 3 and all(r.startswith("unusable ") for r in reasons)
    reason = reasons[0]
    m = trainer.config.rollout.max_new_tokens
    for fragment in (problem, fix):
        assert fragment.format(v=v, v1=v - 1, v5=v + 5, m=m) in reason

    assert "the expert should return" in reason
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_run_of_only_bad_signals_stops_with_one_line_naming_the_expert(tmp_path):
    # no success term (loss.reward_weight=0): the expert's signals are all the loss reads
    trainer = _trainer(tmp_path, "expert={name: faulty, options: {fault: topk_positive}}", "train.steps=3",
                       "loss.reward_weight=0")
    start = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(PluginError) as err:
        trainer.fit()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("expert 'faulty': 16 of 16 answers failed over step 1, more than "
                              "train.max_expert_failed_fraction = 0.5; first reasons: unusable 'topk' signal")
    assert "topk_logprobs is 0.5 at position 0, column 1: above 0" in message
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and rows[0]["expert_failed"] == 16  # the stopping step is logged
    # no signal reached the loss: the policy is untouched
    assert all(torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))


def test_a_failed_fraction_under_the_threshold_trains_on(tmp_path):
    trainer = _trainer(tmp_path, "expert={name: faulty, options: {fault: topk_nan}}",
                       "train.max_expert_failed_fraction=1", "train.steps=2", "train.save_every=0")
    summary = trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and [r["expert_failed"] for r in rows] == [16, 16]


def test_an_expert_that_answers_fewer_queries_than_asked_is_named(tmp_path):
    trainer = _trainer(tmp_path, "expert={name: faulty, options: {fault: one_short}}")
    with pytest.raises(PluginError, match=r"expert 'faulty' returned \d+ signals for \d+ queries; score\(\) must"):
        trainer.train_step(1)


@pytest.mark.parametrize("signal", [
    ExpertSignal(access="dense", logits=torch.randn(3, 5)),
    ExpertSignal(access="topk", topk_ids=torch.tensor([[0, 4]] * 3), topk_logprobs=torch.log(torch.tensor([[0.7, 0.3]] * 3))),
    ExpertSignal(access="sampled", sample_ids=torch.tensor([[1], [-100], [4]])),
    ExpertSignal(access="hidden", hidden=torch.randn(3, 2), head=(torch.randn(5, 2), torch.zeros(5))),
    ExpertSignal(access="text", text="42"),
    ExpertSignal.failed("dense", "rate limited"),
], ids=["dense", "topk", "sampled", "hidden", "text", "failed"])
def test_well_formed_signals_pass(signal):
    check_signal(signal, 3, 5)  # raises on any problem


def test_a_coroutine_problems_hook_is_awaited_for_the_splits():
    train, test = evaluation_split(_AsyncDigits(length=2, train_size=30, test_size=8), "test", 5)
    assert len(train) == 30 and len(test) == 5
    train, held_out = evaluation_split(_AsyncDigits(length=2, train_size=30, test_size=8), "validation", 5)
    assert len(train) == 25 and len(held_out) == 5


@pytest.mark.slow
def test_a_task_with_async_problems_trains(tmp_path):
    trainer = _trainer(tmp_path, "task={name: async_digits, options: {length: 2, train_size: 80, test_size: 16}}",
                       "train.steps=2", "train.save_every=0")
    start = [p.detach().clone() for p in trainer.model.parameters()]
    summary = trainer.fit()
    assert summary["steps"] == 2 and "pass@1" in summary["after"]
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))


def test_feedback_past_the_cap_is_cut_counted_and_recorded(tmp_path):
    trainer = _trainer(tmp_path, "feedback=[{name: flood}]", "train.steps=1")
    trainer.fit()
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert row["feedback_cut"] == row["feedback_coverage"] * 16 == 16  # every rollout, 4 problems x 4 samples
    provenance = [json.loads(line) for line in (tmp_path / "provenance.jsonl").read_text().splitlines()]
    cuts = [item for rec in provenance for item in rec["feedback"] if item["kind"] == "feedback_cut"]
    assert len(cuts) == 16 and all(int(c["chars"]) > 50_000 - 16_000 for c in cuts)


@pytest.mark.parametrize("overrides, error, said", [
    (["verifier=not_a_verifier"], ConfigError,
     "verifier 'not_a_verifier' was built as int, which does not implement the Verifier protocol"),
    (["verifier=says_yes"], PluginError, "plugin component 'says_yes' returned an invalid Verdict"),
    (["feedback=[chatty]"], PluginError, "plugin component 'chatty' returned str, not a list of Feedback"),
], ids=["factory", "verdict", "feedback"])
def test_what_a_plugin_returns_is_checked_while_the_tiny_base_is_built(tmp_path, overrides, error, said):
    """The tiny base pretrains with the run's own verifier and feedback sources. Before, none of
    their answers was checked there: AttributeError tracebacks from deep inside the build."""
    with distil_cache(str(tmp_path / "cache")):
        with pytest.raises(error) as caught:
            _trainer(tmp_path / "run", *overrides)
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_a_text_longer_than_a_response_may_be_is_cut_as_the_students_own_would_be():
    """An answer the provider cut at its max_tokens counts the expert's tokens; in the student's
    it is often longer. It is trained on as far as the student could have written it: up to
    rollout.max_new_tokens tokens, with no end where it was cut."""
    from distil_core.testing import tiny_tokenizer
    from distil_core.training.update import text_target

    tok = tiny_tokenizer()
    whole = tok.encode(" 1" * 100, add_special_tokens=False)
    assert len(whole) > 10
    assert text_target(tok, ExpertSignal(access="text", text=" 1" * 100), 10) == whole[:10]
    short = tok.encode("12", add_special_tokens=False)
    assert text_target(tok, ExpertSignal(access="text", text="12"), 10) == short + [tok.eos_token_id]
    assert text_target(tok, ExpertSignal.failed("text", "no answer"), 10) == []
