"""Procedural problems: deterministic per seed, disjoint splits, references that are right."""

import random
import re

import pytest

from distil_tasks import CodeTask, MathTask, ScienceTask
from distil_tasks.arith import evaluate, show
from distil_tasks.code_suite import TEST_INPUTS

TASKS = {
    "math": lambda seed: MathTask(train_size=300, test_size=40, seed=seed),
    "code": lambda seed: CodeTask(train_size=300, test_size=40, seed=seed),
    "science": lambda seed: ScienceTask(train_size=300, test_size=40, seed=seed),
}


def _dump(task):
    return [(p.id, p.prompt, p.reference, p.metadata) for split in ("train", "test") for p in task.problems(split)]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_problems_other_seed_others(name):
    make = TASKS[name]
    assert _dump(make(3)) == _dump(make(3))
    assert _dump(make(3)) != _dump(make(4))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_have_the_sizes_asked_and_share_no_problem(name):
    task = TASKS[name](0)
    train, test = task.problems("train"), task.problems("test")
    assert (len(train), len(test)) == (300, 40)
    assert not {p.id for p in train} & {p.id for p in test}
    assert not {p.user_text() for p in train} & {p.user_text() for p in test}
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        task.problems("dev")


def test_math_reference_is_the_value_of_the_expression_and_of_the_last_step():
    for p in MathTask(train_size=200, test_size=10, steps=3, ops="+-*").problems("train"):
        expr = p.prompt.removesuffix(" = ?")
        assert show(evaluate(expr)) == p.reference
        steps = p.metadata["steps"]
        assert len(steps) == 3 and steps[-1]["value"] == p.reference
        for step in steps:
            assert show(evaluate(step["expr"])) == step["value"]


def test_math_worked_answers_are_the_steps_and_wrong_answers_slip_in_one_step():
    from distil_tasks import MathAnswerVerifier
    from distil_tasks.arith import first_wrong_claim

    from tasks_testlib import rollout

    task = MathTask(train_size=200, test_size=10, worked_answer=True)
    final_only = MathTask(train_size=200, test_size=10)
    verifier = MathAnswerVerifier()
    rng = random.Random(0)
    for p in task.problems("train"):
        assert final_only.answer_text(p) == p.reference
        assert not verifier.verify(p, rollout(final_only.wrong_answer(p, random.Random(1)))).passed
        answer = task.answer_text(p)
        assert answer == "; ".join(f"{s['expr']}={s['value']}" for s in p.metadata["steps"])
        assert verifier.verify(p, rollout(answer)).passed and first_wrong_claim(answer) is None
        wrong = task.wrong_answer(p, rng)
        assert not verifier.verify(p, rollout(wrong)).passed
        expr, claimed, truth = first_wrong_claim(wrong)
        assert f"{expr}={truth}" in answer and len(wrong) <= len(answer) + 4


def test_code_solution_matches_its_tests_and_wrong_answers_differ():
    task = CodeTask(train_size=200, test_size=10, steps=2)
    rng = random.Random(0)
    for p in task.problems("train"):
        solution = p.metadata["solution"]
        assert re.fullmatch(r"def f\(x\): return .+", solution)
        namespace = {}
        exec(solution, namespace)  # our own generated one-liner
        calls = p.reference["calls"]
        assert [c["args"][0] for c in calls] == list(TEST_INPUTS)
        assert all(namespace["f"](*c["args"]) == c["expected"] for c in calls)
        assert task.wrong_answer(p, rng) != solution


def test_code_parentheses_follow_the_order_of_the_steps():
    from distil_tasks.code_suite import one_liner

    assert one_liner([("add", 3), ("mul", 2)]) == "def f(x): return (x + 3) * 2"
    assert one_liner([("mul", 3), ("add", 2)]) == "def f(x): return x * 3 + 2"
    assert one_liner([("sub", 3), ("sub", 2)]) == "def f(x): return x - 3 - 2"


def test_science_letter_points_at_the_value_the_explanation_computes():
    task = ScienceTask(train_size=300, test_size=40)
    for p in task.problems("train") + task.problems("test"):
        labels, choices = p.metadata["labels"], p.metadata["choices"]
        assert labels == ["A", "B", "C", "D"] and len(set(choices)) == 4
        correct = choices[labels.index(p.reference)]
        explanation = p.metadata["explanation"]
        assert explanation.endswith(f"The answer is <answer>{p.reference}</answer>.")
        value = correct.split()[0]
        assert f"= {value} " in explanation or f"= {value}." in explanation, (explanation, correct)
        assert f"{p.reference}) {correct}" in p.prompt
    assert {p.reference for p in task.problems("train")} == {"A", "B", "C", "D"}


def test_bad_options_are_rejected_with_the_option_named():
    with pytest.raises(ValueError, match="ops must be"):
        MathTask(ops="+/")
    with pytest.raises(ValueError, match="could only make"):
        MathTask(steps=1, max_operand=3, train_size=100)
    with pytest.raises(ValueError, match="kinds must be"):
        ScienceTask(kinds=["optics"])
    with pytest.raises(ValueError, match="ops must be"):
        CodeTask(ops=["pow"])
    with pytest.raises(ValueError, match="format and test_path only apply with path"):
        CodeTask(format="mbpp")


def test_code_mixed_phrasing_names_the_last_step_first_half_the_time():
    mixed = CodeTask(train_size=400, test_size=10).problems("train")
    after = [p for p in mixed if " after " in p.prompt]
    assert 0.35 < len(after) / len(mixed) < 0.65
    p = next(p for p in after if p.prompt.startswith("Write f(x): multiply by") and "after adding" in p.prompt)
    a, b = re.findall(r"\d+", p.prompt.split(":", 1)[1])
    assert p.metadata["solution"] == f"def f(x): return (x + {b}) * {a}"
    assert not any(" after " in p.prompt for p in CodeTask(train_size=100, test_size=10, phrasing="then").problems("train"))


@pytest.mark.parametrize("factory,options,message", [
    (MathTask, {"steps": "2"}, r"math: option steps must be a whole number between 1 and 4 \(got '2', a str: write it without quotes\)"),
    (MathTask, {"train_size": "100"}, r"math: option train_size must be a whole number at least 1"),
    (MathTask, {"worked_answer": "false"}, r"math: option worked_answer must be true or false"),
    (MathTask, {"seed": 1.5}, r"math: option seed must be a whole number \(got 1\.5, a float\)"),
    (MathTask, {"ops": ["+"]}, r"math: option ops must be a non-empty string of the operators '\+-\*'"),
    (ScienceTask, {"options": "4"}, r"science: option options must be a whole number between 2 and 5"),
    (ScienceTask, {"kinds": "density"}, r"science: option kinds must be a list of names from .*not a string .*write \[density\]"),
    (ScienceTask, {"kinds": []}, r"science: option kinds must be a non-empty list .*leave it out for all of them"),
    (CodeTask, {"ops": "mul"}, r"code: option ops must be a list of names from .*write \[mul\]"),
    (CodeTask, {"steps": True}, r"code: option steps must be a whole number between 1 and 3 \(got True"),
    (CodeTask, {"format": ["mbpp"], "path": "x.jsonl"}, r"code: option format must be one of \['humaneval', 'livecodebench', 'mbpp'\]"),
])
def test_option_values_of_the_wrong_type_name_the_option_and_the_fix(factory, options, message):
    with pytest.raises(ValueError, match=message):
        factory(**options)
