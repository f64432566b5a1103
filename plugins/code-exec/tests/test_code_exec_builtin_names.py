"""Builtin names in assert tests, on bwrap and on the process backend.

A test's builtin names are always Python's builtins: a solution that rebinds ``len``,
``sorted`` or ``abs`` changes what its own functions see, never what the test checks with.
The other side of that rule: a test that uses no name of the solution (``assert pow(2, 3) == 8``
for a problem asking for ``pow``) checks Python's ``pow``, so it is graded as the problem's
error for every solution instead of passing for every solution, even one that defines nothing.
"""

import pytest
from code_exec_testlib import grade, problem, rollout, verifier

from distil_code_exec import CodeExecFeedback

# Every name a test below uses with a fake meaning, rebound at the solution's top level, and
# ``wrong`` answering [0]: each test passes with the fake builtin, none with the real one.
REBINDS = """
len = lambda x: 2
def sorted(x, **kwargs):
    return [1, 2]
abs = lambda x: 0
round = lambda *args, **kwargs: 3
isinstance = lambda *args: True
all = any = lambda x: True
set = lambda *args: {1}
list = lambda *args: [1]
str = lambda *args: "1"
int = float = lambda *args: 1
sum = lambda *args: 6
print = lambda *args, **kwargs: 5
eval = lambda *args, **kwargs: 2
close = lambda a, b: True
class math:
    isclose = staticmethod(lambda *args, **kwargs: True)
def wrong(x):
    return [0]
def own(x):
    return len(x)
"""

FAKE_WOULD_PASS = [
    "assert len(wrong([1, 2, 3])) == 2",
    "assert sorted(wrong([2, 1])) == [1, 2]",
    "assert abs(wrong([1])[0] - 3) < 1e-9",
    "assert round(wrong([1])[0] + 0.4) == 3",
    "assert isinstance(wrong([1]), str)",
    "assert all(wrong([1]))",
    "assert any(wrong([1]))",
    "assert set(wrong([1])) == {1}",
    "assert list(wrong([1])) == [1]",
    "assert str(wrong([1])) == '1'",
    "assert int(wrong([1])[0]) == 1",
    "assert float(wrong([1])[0]) == 1",
    "assert sum(wrong([1])) == 6",
    "assert print(wrong([1])) == 5",
    "assert eval('x + 1', {'x': wrong([1])[0]}) == 2",
    "assert math.isclose(wrong([1])[0], 3.0)",
    "assert close(wrong([1])[0], 3.0)",
]
REBIND_PROBLEM = {
    "asserts": FAKE_WOULD_PASS + ["assert own([1, 2, 3]) == 2", "assert close(own([1, 2, 3]), 2.0)"],
    "setup": "import math\ndef close(a, b):\n    return abs(a - b) < 1e-9",
    "timeout_s": 2,
}

NOT_THE_SOLUTIONS = "in a test, pow always means Python's builtin, never the solution's"


@pytest.fixture(params=["bwrap", "process"])
def backend(request):
    verifier(request.param)  # skips when the backend is unavailable here
    return request.param


def test_a_solution_that_rebinds_builtins_does_not_change_what_the_test_checks(backend):
    """The wrong solution's fakes would pass every test in FAKE_WOULD_PASS; the test sees the
    real builtins (and the setup's ``math`` and ``close``), so each fails, showing the real value
    where it compares. The solution's own ``own`` still sees its ``len``, and a setup helper
    that shares a name with one of the solution's keeps working."""
    verdict = grade(REBINDS, REBIND_PROBLEM, backend)
    rows = verdict.details["tests"]
    fake = rows[:len(FAKE_WOULD_PASS)]
    assert [row["passed"] for row in fake] == [False] * len(fake), [(r["input"], r["status"], r["error"]) for r in fake]
    assert all(row["status"] == "failed" for row in fake), [(r["input"], r["status"], r["error"]) for r in fake]
    by_test = {row["input"]: row for row in rows}
    assert by_test["assert len(wrong([1, 2, 3])) == 2"]["actual"] == "1"
    assert by_test["assert sorted(wrong([2, 1])) == [1, 2]"]["actual"] == "[0]"
    assert by_test["assert str(wrong([1])) == '1'"]["actual"] == "'[0]'"
    assert by_test["assert print(wrong([1])) == 5"]["actual"] == "None"
    assert [row["passed"] for row in rows[len(FAKE_WOULD_PASS):]] == [True, True]
    assert verdict.passed is False and verdict.score == pytest.approx(2 / len(rows))


@pytest.mark.parametrize("code", ["def pow(a, b):\n    return a ** b", "def pow(a, b):\n    return 0", "x = 1"],
                         ids=["right", "wrong", "undefined"])
def test_an_assert_that_calls_only_a_builtin_is_the_problems_error_for_every_solution(code, backend):
    """Before, ``assert pow(2, 3) == 8`` checked Python's ``pow`` and passed for all three."""
    verdict = grade(code, {"asserts": ["assert pow(2, 3) == 8"], "timeout_s": 1}, backend)
    [row] = verdict.details["tests"]
    assert not verdict.passed and verdict.score == 0.0
    assert row["status"] == "error" and NOT_THE_SOLUTIONS in row["error"], row
    assert "calls and an entry_point" in row["error"]


def test_a_check_helper_given_a_builtin_is_the_problems_error(backend):
    """HumanEval's ``check(candidate)`` form, for an entry point named like a builtin."""
    reference = {"asserts": ["check(pow)"], "setup": "def check(candidate):\n    assert candidate(2, 3) == 8",
                 "timeout_s": 1}
    verdict = grade("def pow(a, b):\n    return 0", reference, backend)
    [row] = verdict.details["tests"]
    assert not verdict.passed and row["status"] == "error" and NOT_THE_SOLUTIONS in row["error"], row


def test_only_the_tests_that_use_no_solution_name_are_errors_and_the_feedback_says_why(backend):
    reference = {"asserts": ["assert add(1, 2) == 3", "assert 1 + 1 == 2", "assert max(len('ab'), 1) == 2"],
                 "timeout_s": 1}
    code = "def add(a, b):\n    return a + b"
    verdict = grade(code, reference, backend)
    rows = verdict.details["tests"]
    assert [row["status"] for row in rows] == ["passed", "error", "error"]
    assert verdict.score == pytest.approx(1 / 3) and not verdict.passed
    assert "the problem's test uses no name of the solution" in rows[1]["error"]
    assert "in a test, len, max always mean Python's builtins" in rows[2]["error"]
    [item] = CodeExecFeedback().feedback(problem(reference), rollout(code), verdict, [])
    assert "Test 2 raised an error." in item.text and "uses no name of the solution" in item.text


def test_a_function_named_like_a_builtin_is_graded_with_calls(backend):
    """What the error advises: a call test reaches the solution's ``pow`` by its entry point."""
    reference = {"entry_point": "pow", "calls": [{"args": [2, 3], "expected": 8}], "timeout_s": 1}
    assert grade("def pow(a, b):\n    return a ** b", reference, backend).passed
    wrong = grade("def pow(a, b):\n    return 0", reference, backend)
    assert not wrong.passed and wrong.details["tests"][0]["actual"] == "0"
    missing = grade("x = 1", reference, backend)
    assert not missing.passed and "does not define 'pow'" in missing.details["tests"][0]["error"]
