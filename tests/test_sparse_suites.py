"""The bench's sparse-reward suites: the `ring` task (an early choice decides success), the
sparse digits (sorting) and addition variants, and their negative controls (feedback that
withholds the answer)."""

import random

import pytest

from distil_core.cli.bench import Bench, load_spec
from distil_core.builtin import (
    AnswerCheckFeedback, ColumnAddTask, DigitsTask, ExactMatchVerifier, RingTask, TwoWaysTask, TwoWaysVerifier,
)
from distil_core.errors import ConfigError
from distil_core.context import ContextTemplate
from distil_core.plugin_host import PluginHost
from distil_core.models.tiny import BaseFeedback, base_examples
from distil_core.types import Rollout

SPARSE = {"sparse_digits": "digits", "sparse_ring": "ring", "sparse_add": "column_add", "sparse_ways": "two_ways"}


def _rollout(text):
    return Rollout(problem_id="p", group_index=0, response_text=text, response_ids=[])


def _grade(problem, text):
    return ExactMatchVerifier().verify(problem, _rollout(text))


def test_ring_problems_are_deterministic_distinct_and_split():
    a, b = RingTask(length=7, train_size=300, test_size=40), RingTask(length=7, train_size=300, test_size=40)
    for split in ("train", "test"):
        assert [p.model_dump() for p in a.problems(split)] == [p.model_dump() for p in b.problems(split)]
    train, test = a.problems("train"), a.problems("test")
    assert len(train) == 300 and len(test) == 40
    ids = [p.id for p in train + test]
    assert len(set(ids)) == len(ids)  # no problem twice, and no held-out problem in training
    assert [p.id for p in RingTask(length=7, train_size=300, test_size=40, seed=1).problems("test")] != [p.id for p in test]
    for p in train + test:
        ring = p.prompt.removeprefix("ring ")
        assert len(ring) == 7 and len(set(ring)) == 7  # distinct digits: each rotation starts differently
        assert p.reference in RingTask.rotations(ring) and p.reference[-1] == max(ring)


def test_ring_reference_by_hand_and_bad_options():
    assert RingTask.solve("4831907") == "0748319"
    assert RingTask.solve("0853749") == "0853749"
    assert RingTask.solve("9012") == "0129"
    with pytest.raises(ValueError, match="length"):
        RingTask(length=11)
    with pytest.raises(ValueError, match="at most"):
        RingTask(length=3, train_size=700, test_size=50)  # 10*9*8 = 720 arrangements
    with pytest.raises(ValueError, match="split"):
        RingTask(train_size=5, test_size=5).problems("dev")


def test_ring_is_registered_as_a_builtin_task():
    task = PluginHost(load_entrypoints=False).build("task", "ring", {"length": 5, "train_size": 20, "test_size": 5})
    assert isinstance(task, RingTask) and task.problems("test")[0].prompt.startswith("ring ")


def test_ring_verifier_passes_the_reference_and_fails_every_wrong_first_choice():
    for p in RingTask(length=7, train_size=50, test_size=10).problems("test"):
        assert _grade(p, p.reference).passed
        assert _grade(p, p.reference + "\n").passed
        ring = p.prompt.removeprefix("ring ")
        for first in set("0123456789") - {p.reference[0]}:
            # Once a wrong first digit is written, no continuation is correct: not the rotation
            # it starts (a wrong plan carried out well), nor the reference's own tail.
            wrong_plans = [r for r in RingTask.rotations(ring) if r[0] == first]
            for text in wrong_plans + [first + p.reference[1:], first + p.reference]:
                assert not _grade(p, text).passed, (p.prompt, text)


def test_ring_wrong_answers_for_the_base_are_mostly_wrong_plans():
    task = RingTask(length=7, train_size=50, test_size=10)
    rng = random.Random(0)
    problems = task.problems("train")
    wrong = [(p, task.wrong_answer(p, rng)) for p in problems for _ in range(4)]
    assert all(w != p.reference and not _grade(p, w).passed for p, w in wrong)
    rotations = sum(w in RingTask.rotations(p.reference) for p, w in wrong)
    assert 0.5 < rotations / len(wrong) < 0.9
    teacher = BaseFeedback(task)  # the base is pretrained on these, with the run's feedback
    examples = list(base_examples(problems, ContextTemplate(), random.Random(0), 100, 0.02, teacher))
    assert all(answer == RingTask.solve(m[-1]["content"].split("\n")[0].removeprefix("ring ")) for m, answer in examples)


def test_sparse_digits_verifier_fails_a_wrong_first_digit():
    for p in DigitsTask(op="sort", length=5, train_size=50, test_size=10).problems("test"):
        assert _grade(p, p.reference).passed
        first = "9" if p.reference[0] != "9" else "8"
        assert not _grade(p, first + p.reference[1:]).passed


def test_column_add_problems_are_carry_free_sums_split_and_registered():
    task = ColumnAddTask(length=3, train_size=300, test_size=50)
    train, test = task.problems("train"), task.problems("test")
    assert [p.model_dump() for p in test] == [p.model_dump() for p in ColumnAddTask(length=3, train_size=300, test_size=50).problems("test")]
    assert len({p.id for p in train + test}) == 350  # no problem twice, none held out in training
    for p in train + test:
        a, b = p.prompt.removeprefix("add ").split()
        assert len(a) == len(b) == len(p.reference) == 3
        assert all(int(x) + int(y) == int(z) for x, y, z in zip(a, b, p.reference))  # no column carries
        assert int(a) + int(b) == int(p.reference) and _grade(p, p.reference).passed
        first = "9" if p.reference[0] != "9" else "8"
        assert not _grade(p, first + p.reference[1:]).passed
    with pytest.raises(ValueError, match="at most"):
        ColumnAddTask(length=1, train_size=50, test_size=10)  # 55 carry-free digit pairs
    built = PluginHost(load_entrypoints=False).build("task", "column_add", {"length": 2, "train_size": 20, "test_size": 5})
    assert isinstance(built, ColumnAddTask) and built.problems("test")[0].prompt.startswith("add ")


def test_two_ways_answers_by_hand_split_and_registered():
    task = TwoWaysTask(length=4, train_size=2000, test_size=200)
    assert task.answers("4831") == {"1": "11348", "2": "23817"}  # sorted; 7 × 4831 = 33817
    assert task.answers("0007") == {"1": "10007", "2": "20049"}
    train, test = task.problems("train"), task.problems("test")
    ids = [p.id for p in train + test]
    assert len(set(ids)) == len(ids) == 2200
    for p in test:
        digits = p.prompt.removeprefix("ways ")
        assert p.metadata["answers"] == task.answers(digits) and p.reference in p.metadata["answers"].values()
    # the base is pretrained on the second way for about second_way_share of the problems
    share = sum(p.reference.startswith("2") for p in train) / len(train)
    assert 0.56 < share < 0.64
    assert all(p.reference.startswith("1") for p in TwoWaysTask(train_size=50, test_size=5, second_way_share=0.0).problems("train"))
    assert [p.model_dump() for p in TwoWaysTask(train_size=50, test_size=5).problems("test")] == \
        [p.model_dump() for p in TwoWaysTask(train_size=50, test_size=5).problems("test")]
    for bad, match in (({"length": 1}, "length"), ({"multiplier": 1}, "multiplier"), ({"second_way_share": 1.5}, "share")):
        with pytest.raises(ValueError, match=match):
            TwoWaysTask(**bad)
    built = PluginHost(load_entrypoints=False).build("task", "two_ways", {"train_size": 20, "test_size": 5})
    assert isinstance(built, TwoWaysTask)
    assert isinstance(PluginHost(load_entrypoints=False).build("verifier", "two_ways", {}), TwoWaysVerifier)


def test_two_ways_verifier_passes_either_way_and_expects_the_attempts_own_way():
    task = TwoWaysTask(length=4, train_size=50, test_size=10)
    verifier = TwoWaysVerifier()
    for p in task.problems("test"):
        answers = p.metadata["answers"]
        for way, answer in answers.items():
            verdict = verifier.verify(p, _rollout(answer))
            assert verdict.passed and verdict.score == 1.0 and verdict.details["expected"] == answer
            wrong = way + ("0" if answer[1] != "0" else "1") + answer[2:]
            verdict = verifier.verify(p, _rollout(wrong))
            assert not verdict.passed and verdict.details["expected"] == answer
            # answer_check tells the attempt what it should have said, the way it took
            [item] = AnswerCheckFeedback().feedback(p, _rollout(wrong), verdict)
            assert item.text == f"Your answer {wrong} is wrong. The expected answer is {answer}."
        for other in ("3" + answers["1"][1:], "no digits"):  # no way named: the reference is expected
            verdict = verifier.verify(p, _rollout(other))
            assert not verdict.passed and verdict.details["expected"] == p.reference
    with pytest.raises(ConfigError, match="two_ways"):
        verifier.verify(DigitsTask(train_size=5, test_size=5).problems("test")[0], _rollout("1"))
    listed = task.problems("test")[0].model_copy(update={"metadata": {"answers": ["11348", "23817"]}})
    with pytest.raises(ConfigError, match="mapping"):
        verifier.verify(listed, _rollout("1"))
    # answers read from a dataset as numbers are compared as text
    numeric = task.problems("test")[0].model_copy(update={"metadata": {"answers": {1: 10478, 2: 25236}}, "reference": "25236"})
    assert verifier.verify(numeric, _rollout("10478")).passed and verifier.verify(numeric, _rollout("25236")).passed


def test_answer_check_reports_the_reference_for_verifiers_that_name_no_attempt():
    """Only ``expected_for_attempt`` changes what answer_check reports: a verifier whose
    ``expected`` is a normalised reference (as math_answer's) keeps the reference in the text."""
    class Normalising:
        def verify(self, problem, rollout):
            return ExactMatchVerifier().verify(problem, rollout).model_copy(update={"details": {"expected": "1/2"}})

    problem = DigitsTask(train_size=5, test_size=5).problems("test")[0].model_copy(update={"reference": "$\\dfrac{1}{2}$"})
    verdict = Normalising().verify(problem, _rollout("3"))
    [item] = AnswerCheckFeedback().feedback(problem, _rollout("3"), verdict)
    assert item.text == "Your answer 3 is wrong. The expected answer is $\\dfrac{1}{2}$."


def test_two_ways_wrong_answers_for_the_base_keep_the_references_way():
    task = TwoWaysTask(length=4, train_size=200, test_size=10)
    rng = random.Random(0)
    for p in task.problems("train"):
        wrong = task.wrong_answer(p, rng)
        assert wrong != p.reference and wrong[0] == p.reference[0] and len(wrong) >= 2
        assert not TwoWaysVerifier().verify(p, _rollout(wrong)).passed


def test_sparse_suites_are_calibrated_as_documented():
    """The settings behind the numbers in the descriptions (seed 0): changing them needs a
    fresh calibration with benchmarks/bench_diagnostics.py (expert-gap, memorise)."""
    spec, base = load_spec(None)
    bench = Bench(spec, base, "unused", suites=["sparse_ring", "sparse_add"], methods=["distil_local"], seeds=[0])
    ring = bench.configs[("sparse_ring", "distil_local", 0)]
    assert ring.task.options == {"length": 5} and ring.model.tiny.plain_fraction == 0.25 and ring.model.tiny.steps == 500
    add = bench.configs[("sparse_add", "distil_local", 0)]
    assert add.task.name == "column_add" and add.task.options == {"length": 3}
    assert add.model.tiny.plain_fraction == 0.12 and add.model.tiny.steps == 150
    assert add.rollout.max_new_tokens >= 4  # the answer's three digits and its end token
    ways = Bench(spec, base, "unused", suites=["sparse_ways"], methods=["distil_local"], seeds=[0]).configs[("sparse_ways", "distil_local", 0)]
    assert ways.task.name == "two_ways" and ways.task.options == {"length": 4, "second_way_share": 0.6}
    assert ways.verifier.name == "two_ways" and ways.model.tiny.plain_fraction == 0.3 and ways.model.tiny.steps == 300
    assert ways.rollout.max_new_tokens >= 6  # the way, four digits and the end token
    for config in (ring, add, ways):  # 128 rollouts a step, which distil_local spends on 64 problems × 2
        assert config.rollout.problems_per_step == 64 and config.rollout.samples_per_problem == 2
        assert config.train.steps == 60 and config.eval.problems == 100
    for suite in ("sparse_ring", "sparse_add"):  # the suite's own split, as GRPO's groups need it
        assert (spec.suites[suite].set["rollout"]["problems_per_step"],
                spec.suites[suite].set["rollout"]["samples_per_problem"]) == (16, 8)


@pytest.mark.parametrize("task", [RingTask(length=7, train_size=50, test_size=20), DigitsTask(train_size=50, test_size=20), ColumnAddTask(train_size=50, test_size=20)])
def test_negative_control_feedback_withholds_the_reference(task):
    rng = random.Random(0)
    for p in task.problems("test"):
        wrong = task.wrong_answer(p, rng) if hasattr(task, "wrong_answer") else ("0" if p.reference[0] != "0" else "1") + p.reference[1:]
        verdict = _grade(p, wrong)
        assert not verdict.passed
        with_answer = AnswerCheckFeedback().feedback(p, _rollout(wrong), verdict)
        withheld = AnswerCheckFeedback(include_expected=False).feedback(p, _rollout(wrong), verdict)
        assert p.reference in with_answer[0].text
        assert p.reference not in withheld[0].text and withheld[0].data["expected"] is None
        assert withheld[0].text == f"Your answer {wrong} is wrong."


def test_the_bench_has_sparse_suites_each_with_a_negative_control():
    spec, base = load_spec(None)
    names = list(spec.suites)
    assert names.index("sparse_digits") > names.index("digits")  # grouped after the dense suites
    bench = Bench(spec, base, "unused", suites=[*SPARSE, *(f"{s}_noanswer" for s in SPARSE)], methods=["grpo", "distil_local"], seeds=[0])
    for suite, task in SPARSE.items():
        assert spec.suites[suite].description and spec.suites[f"{suite}_noanswer"].description
        # sparse means a starting model at most 10 % pass@1; a bench outside it says so
        assert spec.suites[suite].base == spec.suites[f"{suite}_noanswer"].base == {"pass@1": (0.0, 0.1)}
        ours = bench.configs[(suite, "distil_local", 0)].model_dump(mode="json")
        control = bench.configs[(f"{suite}_noanswer", "distil_local", 0)].model_dump(mode="json")
        assert ours["task"]["name"] == task
        assert [f["name"] for f in ours["feedback"]] == ["answer_check"] and not ours["feedback"][0]["options"]
        assert control["feedback"] == [{"name": "answer_withheld", "options": {}}]
        # The control differs only in its feedback; both share the rollout budget of every method.
        for key in ("task", "verifier", "model", "rollout", "train", "eval", "expert", "context"):
            assert ours[key] == control[key], (suite, key)
        assert bench.budget(suite) == bench.budget(f"{suite}_noanswer")


def _tasks_host():
    plugin = pytest.importorskip("distil_tasks.plugin")
    host = PluginHost(load_entrypoints=False)
    host.register_plugin(plugin, "tasks")
    return host


def test_a_negative_control_starts_from_the_same_tiny_base_as_its_suite():
    """`answer_withheld` is runtime-bound, so the base is pretrained on the answer-bearing
    `answer_check` in both suites: same recipe, task and feedback, hence the same cached base."""
    from distil_core.training.runtime import base_feedback_components

    host = _tasks_host()
    spec, base = load_spec(None)
    for suite in SPARSE:
        bench = Bench(spec, base, "unused", suites=[suite, f"{suite}_noanswer"], methods=["distil_local"], seeds=[0])
        ours, control = bench.configs[(suite, "distil_local", 0)], bench.configs[(f"{suite}_noanswer", "distil_local", 0)]
        assert base_feedback_components(ours, host) == base_feedback_components(control, host)
        assert ours.model.tiny == control.model.tiny and ours.task == control.task


def test_answer_withheld_never_shows_the_reference():
    source = _tasks_host().build("feedback_source", "answer_withheld", {}, runtime=None)
    task = RingTask(length=6, train_size=50, test_size=20)
    rng = random.Random(0)
    for p in task.problems("test"):
        wrong = task.wrong_answer(p, rng)
        verdict = _grade(p, wrong)
        [item] = source.feedback(p, _rollout(wrong), verdict)
        assert p.reference not in item.text and item.text == f"Your answer {wrong} is wrong."
        assert source.feedback(p, _rollout(p.reference), _grade(p, p.reference)) == []
