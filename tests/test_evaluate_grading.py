"""Evaluation grades its samples as a training step does: a verifier with ``verify_batch`` gets
each chunk of problems with all their samples in one call, and the summary is the one that
grading each sample with ``verify`` gives."""

from __future__ import annotations

import pytest

from distil_core.builtin import AnswerCheckFeedback, ExactMatchVerifier
from distil_core.errors import ConfigError, PluginError
from distil_core.rollouts.local import Generator, SamplingParams
from distil_core.testing import problem, tiny_model, tiny_tokenizer
from distil_core.types import Rollout, Verdict
from distil_core.training.evaluate import evaluate


class Batching(ExactMatchVerifier):
    """exact_match, graded a batch at a time, with a record of the calls."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def verify_batch(self, problems, rollouts):
        self.batches.append(len(rollouts))
        return [self.verify(p, r) for p, r in zip(problems, rollouts)]


def setup(count):
    tok = tiny_tokenizer()
    generator = Generator(tiny_model(), tok, SamplingParams(max_new_tokens=3))
    problems = [problem(str(k % 3), pid=f"p{k}", prompt=f"{k}") for k in range(count)]
    return generator, [tok.encode(p.prompt) for p in problems], problems


def test_each_chunk_is_graded_in_one_verify_batch_call_with_the_same_summary():
    generator, prompts, problems = setup(5)
    batching = Batching()
    options = dict(samples=4, ks=[1, 2], seed=3, chunk_problems=2)
    by_batch = evaluate(generator, prompts, problems, batching, **options)
    one_by_one = evaluate(generator, prompts, problems, ExactMatchVerifier(), **options)
    assert batching.batches == [8, 8, 4]  # chunks of 2, 2 and 1 problems, 4 samples each
    assert by_batch == one_by_one


def test_a_verifier_without_answers_reports_no_maj_at_n_rather_than_zero():
    """Before, code_exec's verdicts (no answer) made maj@n read 0.0 however many samples passed."""
    class Tested(ExactMatchVerifier):
        gives_answers = False

        def verify(self, problem, rollout):
            return Verdict(score=1.0, passed=True)  # passes, with no answer, as a program its tests pass

    generator, prompts, problems = setup(3)
    options = dict(samples=2, ks=[1, 2], seed=0)
    summary = evaluate(generator, prompts, problems, Tested(), **options)
    assert "maj@2" not in summary and summary["pass@1"] == 1.0 and summary["obs_pass@2"] == 1.0
    assert "maj@2" in evaluate(generator, prompts, problems, ExactMatchVerifier(), **options)


def test_a_verify_batch_that_miscounts_is_named():
    class Short(ExactMatchVerifier):
        def verify_batch(self, problems, rollouts):
            return []

    generator, prompts, problems = setup(2)
    with pytest.raises(PluginError, match="verifier 'short': verify_batch returned 0 verdicts for 4 rollouts"):
        evaluate(generator, prompts, problems, Short(), samples=2, ks=[1], verifier_name="short")


@pytest.mark.parametrize("reference", [{"asserts": ["assert f(1) == 2"]}, ["assert f(1) == 2"]])
def test_text_graders_refuse_a_reference_that_holds_tests(reference):
    """Compared as text, tests fail every rollout and feedback would quote them as the answer."""
    tests, answer = problem(reference, pid="code-7"), problem("42", pid="sum-1")
    rollout = Rollout(problem_id="code-7", group_index=0, response_text="42", response_ids=[1])
    verdict = Verdict(score=0.0, passed=False)
    with pytest.raises(ConfigError, match="exact_match: problem 'code-7' holds code tests.*verifier: code_exec"):
        ExactMatchVerifier().verify(tests, rollout)
    with pytest.raises(ConfigError, match="answer_check: problem 'code-7' holds code tests"):
        AnswerCheckFeedback().feedback(tests, rollout, verdict)
    assert ExactMatchVerifier().verify(answer, rollout).passed
    [said] = AnswerCheckFeedback().feedback(answer, rollout.model_copy(update={"response_text": "41"}), verdict)
    assert said.data["expected"] == "42"


def test_a_summary_keeps_the_metrics_both_evaluations_report():
    """A run resumed across the version that stopped reporting maj@n for code_exec had maj@8 in
    its stored "before" and not in its "after": the summary ended the run with a KeyError."""
    from distil_core.config import load_config
    from distil_core.training.runlog import run_summary

    facts = dict(model="tiny", steps=2, wall_s=1.0, problems=4, reference_tokens=6.0, run_dir="r")
    summary = run_summary(load_config(None, []), {"pass@1": 0.1, "maj@8": 0.0, "problems": 4.0},
                          {"pass@1": 0.3, "problems": 4.0}, **facts)
    assert summary["before"] == {"pass@1": 0.1} and summary["gain"] == {"pass@1": pytest.approx(0.2)}
