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


@pytest.mark.parametrize("reference,response,passed", [
    ("3", "The answer is −3.", False),  # U+2212: the sign belongs to the number
    ("-3", "The answer is −3.", True),
    ("5", "The answer is .5", False),  # a leading dot: the number is 0.5, not 5
    ("0.5", "The answer is .5", True),
    ("5", "That is 1e5.", False),  # an exponent is part of the number
    ("100000", "That is 1e5.", True),
    ("12", "\\boxed{1,2}", False),  # a comma between single digits is a pair, not a thousands separator
    ("1,2", "\\boxed{12}", False),
    ("-2,1", "\\boxed{-21}", False),
    ("1234567", "\\boxed{1,234,567}", True),
    ("-3", "7-3", False),  # subtraction: the last number is 3, not -3
    ("3", "7-3", True),
    ("4", "#### 4\nWait, that is wrong; let me redo it.\n#### 5", False),  # the last '####', as for boxed and tags
    ("5", "#### 4\nWait, that is wrong; let me redo it.\n#### 5", True),
    ("5", "\\boxed{５}", True),  # unchanged: fullwidth digits, -0, a plus sign, spaces
    ("0", "-0", True),
    ("5", "+5", True),
    ("5", "<answer> 5 </answer>", True),
])
def test_math_answer_reads_whole_numbers(math_answer, reference, response, passed):
    verdict = math_answer.verify(Problem(id="p", prompt="q", reference=reference), rollout(response))
    assert verdict.passed is passed, verdict


def test_plain_numbers_strip_only_thousands_separators():
    from fractions import Fraction

    from distil_tasks.arith import number

    assert number("1,234") == 1234 and number("-1,234.5") == Fraction(-2469, 2)
    assert number("1,2") is None and number("-2,1") is None and number("1234,567") is None
    assert number("−3") == -3 and number(".5") == Fraction(1, 2) and number("1e5") == 100000
    assert number("2.5e-1/5") == Fraction(1, 20)
    assert number("1e99999") is None  # no exponent worth computing


def test_long_responses_are_read_in_one_pass():
    # Both used to backtrack quadratically (seconds on these); the result is what matters here.
    problem = Problem(id="p", prompt="q", reference="9", metadata={"steps": [{"expr": "4+5", "value": "9"}]})
    looping = "12 " * 20_000 + "\n4+5=10"
    verdict = MathAnswerVerifier().verify(problem, rollout(looping))
    [fb] = MathStepsFeedback().feedback(problem, rollout(looping), verdict)
    assert fb.data["first_wrong_step"] == ["4+5", "10", "9"]
    padded = Problem(id="p", prompt="q", reference="5")
    assert MathAnswerVerifier().verify(padded, rollout("#### 5" + " " * 200_000 + ".")).answer == "5"
    assert extract_final("#### 5" + " " * 200_000 + "\n") == ("5", "####")


def test_claims_are_the_same_as_before_on_ordinary_text():
    from distil_tasks.arith import claims

    assert claims("7+5=12, 12*3=36") == [("7+5", "12"), ("12*3", "36")]
    assert claims("1+1=2+3=5") == [("1+1", "2"), ("+3", "5")]
    assert claims("x = 5 + 3 = 8 and (2+2) = 4") == [("5 + 3", "8"), ("(2+2)", "4")]
    assert claims("12 3+4=7") == []  # "12 3+4" is no expression
    assert claims("3+4\n= 7") == [("3+4", "7")]


@pytest.mark.parametrize("factory,options,message", [
    (MathAnswerVerifier, {"cache_size": -1}, r"math_answer: option cache_size must be a whole number at least 0 \(got -1"),
    (MathAnswerVerifier, {"max_answer_chars": None}, r"math_answer: option max_answer_chars must be a whole number"),
    (MathAnswerVerifier, {"max_answer_chars": "200"}, r"max_answer_chars .*got '200', a str: write it without quotes"),
    (MathStepsFeedback, {"show_answer": "false"}, r"math_steps: option show_answer must be true or false \(got 'false'"),
    (MathStepsFeedback, {"max_steps": "8"}, r"math_steps: option max_steps must be a whole number at least 1"),
    (MCLetterVerifier, {"require_tags": "false"}, r"mc_letter: option require_tags must be true or false"),
    (WorkedExplanationFeedback, {"max_chars": None}, r"worked_explanation: option max_chars must be a whole number at least 40"),
    (WorkedExplanationFeedback, {"show_answer": 0}, r"worked_explanation: option show_answer must be true or false"),
])
def test_verifier_and_feedback_options_are_checked_when_built(factory, options, message):
    with pytest.raises(ValueError, match=message):
        factory(**options)


def test_math_answer_without_a_cache_still_judges():
    verifier = MathAnswerVerifier(cache_size=0)
    problem = Problem(id="p", prompt="q", reference="\\frac{1}{2}")
    assert verifier.verify(problem, rollout("\\boxed{0.5}")).passed
    assert verifier.verify(problem, rollout("\\boxed{0.5}")).passed and not verifier._cache


@pytest.mark.parametrize("text", [
    "<answer>A or B</answer>", "<answer>A B C D</answer>", "<answer>A. No wait, C</answer>", "<answer>(A) (B)</answer>",
])
def test_mc_letter_refuses_an_answer_naming_several_options(text):
    problem = Problem(id="s", prompt="q", reference="A", metadata={"labels": list("ABCD")})
    verdict = MCLetterVerifier().verify(problem, rollout(text))
    assert not verdict.passed and verdict.score == 0.0 and verdict.answer is None


@pytest.mark.parametrize("text,letter", [
    ("<answer>D) 4 mol</answer>", "D"), ("<answer>B. because 3 m/s</answer>", "B"), ("<answer>A. It is A</answer>", "A"),
    ("<answer>B (E is not an option)</answer>", "B"),
])
def test_mc_letter_still_reads_an_answer_with_its_option_text(text, letter):
    assert extract_letter(text, ["A", "B", "C", "D"]) == letter


def _mc(reference, text, choice, labels="ABCD"):
    """The verdict on ``text`` where option ``reference`` reads ``choice`` (the others "x1", "x2", ...)."""
    choices = [f"x{i}" for i in range(len(labels))]
    choices[labels.index(reference)] = choice
    problem = Problem(id="s", prompt="q", reference=reference, metadata={"labels": list(labels), "choices": choices})
    return MCLetterVerifier().verify(problem, rollout(text))


@pytest.mark.parametrize("reference,text,choice,labels", [
    ("B", "<answer>B) 5 A</answer>", "5 A", "ABCD"),  # 5 amperes, copied from the prompt's "B) 5 A"
    ("B", "<answer>B (5 A)</answer>", "5 A", "ABCD"),
    ("A", "<answer>A) 2.0 C</answer>", "2.0 C", "ABCD"),  # coulombs
    ("A", "<answer>A. Vitamin C</answer>", "vitamin C", "ABCD"),
    ("C", "<answer>C. Hepatitis B</answer>", "Hepatitis B", "ABCD"),
    ("C", "<answer>C) I and III only</answer>", "I and III only", "ABCDEFGHIJ"),
    ("C", "<answer>C) 4 F</answer>", "4 F", "ABCDEFGHIJ"),  # farads
])
def test_mc_letter_does_not_read_the_chosen_options_own_text_as_another_option(reference, text, choice, labels):
    verdict = _mc(reference, text, choice, labels)
    assert verdict.passed and verdict.answer == reference


@pytest.mark.parametrize("text", [
    "<answer>B) 5 A or C</answer>", "<answer>B) 5 A, or D</answer>", "<answer>A. 5 A or B</answer>",
])
def test_mc_letter_still_refuses_a_hedge_after_the_options_own_text(text):
    verdict = _mc(text[8], text, "5 A")
    assert not verdict.passed and verdict.answer is None


@pytest.mark.parametrize("text,letter", [
    ("<answer>**A**</answer>", "A"), ("<answer>**B)** 4 mol</answer>", "B"), ("<answer>`C`</answer>", "C"),
    ("<answer>[B]</answer>", "B"), ("<answer>'D'</answer>", "D"), ("<answer>$\\boxed{B}$</answer>", "B"),
    ("<answer>Answer: A</answer>", "A"), ("<answer>Option B</answer>", "B"), ("<answer>The answer is (c)</answer>", "C"),
    ("<answer>B, 4 mol</answer>", "B"), ("<answer>A) because B's premise is false</answer>", "A"),
    ("<answer>B. a ball</answer>", "B"), ("<answer>C. 3 m/s</answer>", "C"), ("<answer>A. x or y</answer>", "A"),
    ("<answer>D. a color or a sound</answer>", "D"),
    # a symbol in the other case, even after "or", is prose: reading it as an option refused right answers
    ("<answer>A. the speed of light, or c</answer>", "A"), ("<answer>B. its acceleration, or a.</answer>", "B"),
])
def test_mc_letter_reads_a_letter_in_markdown_quotes_or_after_answer_or_option(text, letter):
    assert extract_letter(text, ["A", "B", "C", "D"]) == letter


@pytest.mark.parametrize("text", [
    "<answer>a or b</answer>", "<answer>a b c d</answer>", "<answer>(a) (b)</answer>", "<answer>a. no wait, c</answer>",
    "<answer>Answer: A or B</answer>", "<answer>**A** or **B**</answer>", "<answer>A, B</answer>",
])
def test_mc_letter_refuses_a_lowercase_or_decorated_hedge(text):
    assert extract_letter(text, ["A", "B", "C", "D"]) is None


def test_mc_letter_reads_many_unclosed_tags_in_one_pass():
    # re.findall retried from each unclosed <answer>: minutes on this; the result is what matters here.
    verdict = _mc("B", "<answer>B</answer>" + "<answer>" * 50_000, "x")
    assert verdict.passed and verdict.details["tagged"] is True
    assert extract_letter("<answer>" * 50_000, ["A", "B"]) is None


def test_math_answer_tags_are_read_in_one_pass():
    # the same pairing as mc_letter's: re.findall retried from each unclosed <answer> (8,000: 6.6 s)
    assert extract_final("<answer>5</answer>" + "<answer>" * 50_000) == ("5", "answer_tag")
    assert extract_final("<ANSWER> 7 </answer> <answer>8</answer><answer>") == ("8", "answer_tag")
    assert extract_final("<answer> </answer> so 9") == ("9", "last_number")


def test_a_hostile_answer_graded_off_the_main_thread_is_cut_off_and_grading_goes_on():
    """Grading runs on a helper thread under rollout.overlap_grading, where math-verify's alarm
    cannot fire: before, this answer held the thread (and the GIL) for minutes. Now the child
    judge is killed, the answer fails, and the next answer is judged by a new child."""
    import threading

    verifier, results = MathAnswerVerifier(), {}

    def grade():
        results["hostile"] = verifier.verify(Problem(id="p", prompt="q", reference="5"), rollout("\\boxed{9^{9^{9^{9}}}}"))
        results["next"] = verifier.verify(Problem(id="q", prompt="q", reference="\\frac{1}{2}"), rollout("\\boxed{0.5}"))

    worker = threading.Thread(target=grade, daemon=True)
    worker.start()
    worker.join(300)
    assert not worker.is_alive()
    assert results["hostile"].passed is False and results["next"].passed is True


def test_a_judge_process_that_died_is_replaced():
    from distil_tasks.judge import ChildJudge

    judge = ChildJudge(timeout_s=5)
    try:
        assert judge.judge("0.5", "\\frac{1}{2}") is True
        first = judge.process
        first.kill()
        first.wait()
        assert judge.judge("0.5", "\\frac{1}{2}") is True  # a new child
        assert judge.process is not first and first.poll() is not None
    finally:
        judge.stop()
