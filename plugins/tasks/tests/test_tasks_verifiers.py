"""Verifiers and feedback sources of the math and science suites."""

import pytest
from distil_core import Problem

from distil_tasks import MathAnswerVerifier, MathStepsFeedback, MathTask, MCLetterVerifier, ScienceTask, WorkedExplanationFeedback
from distil_tasks.math_suite import extract_final
from distil_tasks.science_suite import extract_letter

from tasks_testlib import fixture, rollout


@pytest.fixture(scope="module")
def math_answer():
    return MathAnswerVerifier()


@pytest.mark.parametrize("reference,response", [
    ("1/2", "0.5"),
    ("0.5", "\\boxed{\\frac{1}{2}}"),
    ("\\frac{1}{2}", "The answer is <answer>1/2</answer>."),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{2}{4}}"),
    ("5\\sqrt{2}", "so $\\sqrt{50}$ = \\boxed{5\\sqrt{2}}"),
    ("5\\sqrt{2}", "\\boxed{\\sqrt{50}}"),
    ("600", "#### 600"),
    ("1000", "They pay 1,000"),
    ("36", "7+5=12, 12*3=36"),
    ("-3", "-3"),
])
def test_math_answer_accepts_equivalent_forms(math_answer, reference, response):
    verdict = math_answer.verify(Problem(id="p", prompt="q", reference=reference), rollout(response))
    assert verdict.passed and verdict.score == 1.0, verdict


@pytest.mark.parametrize("reference,response", [
    ("1/2", "0.6"),
    ("1/2", "\\boxed{2}"),
    ("5\\sqrt{2}", "\\boxed{5\\sqrt{3}}"),
    ("36", "36 is close but the answer is 35"),
    ("36", "no idea"),
    ("-3", "3"),
])
def test_math_answer_rejects_other_values(math_answer, reference, response):
    verdict = math_answer.verify(Problem(id="p", prompt="q", reference=reference), rollout(response))
    assert not verdict.passed and verdict.score == 0.0


def test_final_answer_priority_boxed_then_tags_then_hashes_then_last_number():
    assert extract_final("3 then \\boxed{4} then <answer>5</answer> 6") == ("4", "boxed")
    assert extract_final("\\boxed{\\frac{1}{2}}") == ("\\frac{1}{2}", "boxed")
    assert extract_final("3 <answer> 5 </answer> 6") == ("5", "answer_tag")
    assert extract_final("steps 3\n#### 72\n") == ("72", "####")
    assert extract_final("first 3, then 1,250 and 7.5") == ("7.5", "last_number")
    assert extract_final("nothing") == (None, None)


def test_math_answer_caches_math_verify_judgements(math_answer, monkeypatch):
    import distil_tasks.math_suite as suite

    calls = []
    real = suite.math_verify_equal
    monkeypatch.setattr(suite, "math_verify_equal", lambda a, r: calls.append((a, r)) or real(a, r))
    problem = Problem(id="p", prompt="q", reference="\\frac{3}{7}")
    for _ in range(3):
        assert math_answer.verify(problem, rollout("\\boxed{\\frac{6}{14}}")).passed
    assert math_answer.verify(problem, rollout("\\boxed{3/8}")).passed is False
    assert calls == [("\\frac{6}{14}", "\\frac{3}{7}"), ("3/8", "\\frac{3}{7}")]
    assert math_answer.verify(Problem(id="p", prompt="q", reference="12"), rollout("13")).passed is False
    assert len(calls) == 2  # two integers: no math-verify call at all


def test_math_steps_feedback_names_the_first_wrong_step_then_the_worked_steps():
    problem = MathTask(train_size=50, test_size=5).make(__import__("random").Random(1))
    problem = problem.model_copy(update={"prompt": "(7+5)-3 = ?", "reference": "9", "metadata": {
        "steps": [{"expr": "7+5", "value": "12"}, {"expr": "12-3", "value": "9"}]}})
    source, verifier = MathStepsFeedback(), MathAnswerVerifier()
    response = "7+5=13, 13-3=10"
    [fb] = source.feedback(problem, rollout(response), verifier.verify(problem, rollout(response)))
    assert fb.text == "Your step 7+5=13 is wrong: 7+5=12. Steps: 7+5=12; 12-3=9. The answer is 9."
    assert fb.kind == "worked_steps" and fb.data["first_wrong_step"] == ["7+5", "13", "12"]
    [fb] = source.feedback(problem, rollout("8"), verifier.verify(problem, rollout("8")))
    assert fb.text == "Your answer 8 is wrong. Steps: 7+5=12; 12-3=9. The answer is 9."
    [fb] = MathStepsFeedback(show_answer=False).feedback(problem, rollout("x"), verifier.verify(problem, rollout("x")))
    assert fb.text == "Your response gave no final answer. Steps: 7+5=12; 12-3=9."
    assert source.feedback(problem, rollout("9"), verifier.verify(problem, rollout("9"))) == []


def test_math_steps_feedback_uses_the_worked_solution_of_a_math_record():
    task = MathTask(path=fixture("math"), format="math", test_fraction=0.0)
    problem = next(p for p in task.problems("train") if p.reference == "6")
    verdict = MathAnswerVerifier().verify(problem, rollout("\\boxed{5}"))
    [fb] = MathStepsFeedback(max_chars=60).feedback(problem, rollout("\\boxed{5}"), verdict)
    assert fb.text.startswith("Your answer 5 is wrong. Worked solution: Subtract 5 from both sides")
    assert "..." in fb.text and fb.text.endswith("The answer is 6.")


@pytest.mark.parametrize("text,letter", [
    ("<answer>B</answer>", "B"),
    ("I think <answer> (c) </answer>", "C"),
    ("<answer>A</answer> no wait <answer>D) 4 mol</answer>", "D"),
    ("<ANSWER>b.</ANSWER>", "B"),
    ("B", None),
    ("<answer>E</answer>", None),
    ("<answer>Because</answer>", None),
])
def test_mc_letter_reads_the_letter_inside_the_last_answer_tags(text, letter):
    assert extract_letter(text, ["A", "B", "C", "D"]) == letter


def test_mc_letter_verifier_and_untagged_option():
    problem = ScienceTask(path=fixture("sciknoweval"), format="sciknoweval", test_fraction=0.0).problems("train")[1]
    assert problem.reference == "C"
    assert MCLetterVerifier().verify(problem, rollout("<answer>C</answer>")).passed
    verdict = MCLetterVerifier().verify(problem, rollout("C"))
    assert not verdict.passed and verdict.answer is None and verdict.details["tagged"] is False
    assert MCLetterVerifier(require_tags=False).verify(problem, rollout(" C ")).passed
    verdict = MCLetterVerifier().verify(problem, rollout("<answer>A</answer>"))
    assert not verdict.passed and verdict.answer == "A"


def test_worked_explanation_feedback():
    task = ScienceTask(train_size=50, test_size=5)
    problem = task.problems("test")[0]
    wrong = next(label for label in "ABCD" if label != problem.reference)
    verdict = MCLetterVerifier().verify(problem, rollout(f"<answer>{wrong}</answer>"))
    [fb] = WorkedExplanationFeedback().feedback(problem, rollout(f"<answer>{wrong}</answer>"), verdict)
    chosen = problem.metadata["choices"]["ABCD".index(wrong)]
    assert fb.text == f"Your answer {wrong} ({chosen}) is wrong. {problem.metadata['explanation']}"
    assert fb.kind == "worked_explanation" and fb.text.endswith(f"The answer is <answer>{problem.reference}</answer>.")
    [fb] = WorkedExplanationFeedback(show_answer=False).feedback(problem, rollout("no tags"), MCLetterVerifier().verify(problem, rollout("no tags")))
    assert fb.text.startswith("Your response has no letter in <answer></answer> tags.")
    assert "The answer is" not in fb.text and "<answer>" not in fb.text.split("tags.", 1)[1]
    passed = MCLetterVerifier().verify(problem, rollout(f"<answer>{problem.reference}</answer>"))
    assert WorkedExplanationFeedback().feedback(problem, rollout(""), passed) == []


def test_worked_explanation_without_one_names_the_correct_option():
    problems = {p.id: p for p in ScienceTask(path=fixture("sciknoweval"), format="sciknoweval", test_fraction=0.0).problems("train")}
    problem = problems["ske-3"]  # no explanation in the record
    verdict = MCLetterVerifier().verify(problem, rollout("<answer>A</answer>"))
    [fb] = WorkedExplanationFeedback().feedback(problem, rollout("<answer>A</answer>"), verdict)
    assert fb.text == "Your answer A (Ribosome) is wrong. The correct option is B (Mitochondrion)."
