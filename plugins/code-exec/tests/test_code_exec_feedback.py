"""The code_exec feedback source turns a failed run into a compact execution trace."""

from code_exec_testlib import ADD_ASSERTS, ADD_CALLS, ADD_IO, grade, problem, rollout

from distil_code_exec import CodeExecFeedback
from distil_code_exec.feedback import trim_traceback, truncate
from distil_core import Verdict


def trace_for(code, reference, **options):
    verdict = grade(code, reference)
    items = CodeExecFeedback(**options).feedback(problem(reference), rollout(code), verdict, [])
    return verdict, items


def test_nothing_for_a_passing_rollout():
    verdict, items = trace_for("def add(a, b):\n    return a + b", ADD_CALLS)
    assert verdict.passed and items == []


def test_syntax_error_shows_the_offending_line():
    _, [item] = trace_for("def add(a, b)\n    return a + b\n", ADD_ASSERTS)
    assert item.source == "code_exec" and item.kind == "execution_trace"
    assert "does not compile" in item.text
    assert 'File "solution.py", line 1' in item.text and "def add(a, b)" in item.text
    assert "SyntaxError" in item.text
    assert item.data["first_error"]["stage"] == "compile"


def test_runtime_error_gives_the_traceback_without_harness_frames():
    code = """
    def helper(values):
        return values[10]
    def add(a, b):
        return helper([a, b])
    """
    _, [item] = trace_for(code, ADD_ASSERTS)
    text = item.text
    assert "Test 1 raised an error." in text and "Input: assert add(1, 2) == 3" in text
    assert 'File "solution.py", line 4, in add' in text and 'File "solution.py", line 2, in helper' in text
    assert "IndexError: list index out of range" in text
    for internal in ("harness", "distil_child", "Grader", "Session", "<test"):
        assert internal not in text


def test_runtime_error_of_a_whole_program():
    _, [item] = trace_for("a, b = input().split()\nprint(int(a) + int(b) + undefined)", ADD_IO)
    assert "NameError: name 'undefined' is not defined" in item.text
    assert 'File "solution.py", line 2, in <module>' in item.text


def test_infinite_loop_gives_timeout_feedback():
    _, [item] = trace_for("def add(a, b):\n    while True:\n        pass", dict(ADD_CALLS, calls=ADD_CALLS["calls"][:1]))
    assert "Test 1 timed out after 1 s" in item.text and "infinite loop" in item.text
    assert "Input: add(1, 2)" in item.text


def test_a_value_that_is_not_a_literal_is_explained():
    _, [item] = trace_for("class Box:\n    pass\ndef add(a, b):\n    return Box()", ADD_CALLS)
    assert "Test 1 got a value from the code that cannot be checked." in item.text
    assert "add(...) gave a Box value" in item.text and "only literal values" in item.text


def test_failing_tests_show_input_expected_and_actual():
    code = "def add(a, b):\n    print('debug', a, b)\n    return a * b"
    _, [item] = trace_for(code, ADD_CALLS)
    assert item.text.splitlines()[0] == "2 of 2 tests failed."
    assert "Test 1: add(1, 2)\n  expected: 3\n  returned: 2\n  printed: debug 1 2" in item.text
    assert "Test 2: add(-4, 4)\n  expected: 0\n  returned: -16" in item.text
    assert item.data["failing"] == [0, 1]


def test_failing_asserts_and_programs_show_both_sides():
    _, [item] = trace_for("def add(a, b):\n    return a - b", ADD_ASSERTS)
    assert "Test 1: assert add(1, 2) == 3\n  expected (right side): 3\n  actual (left side):    -1" in item.text
    _, [item] = trace_for("print(7)", ADD_IO)
    assert "Test 1 with input '1 2\\n':\n  expected output: 3\n  actual output:   7" in item.text


def test_at_most_max_failures_tests_and_max_chars():
    reference = {"entry_point": "f", "calls": [{"args": [i], "expected": i} for i in range(10)]}
    _, [item] = trace_for("def f(x):\n    return 'x' * 1000", reference, max_failures=2)
    assert item.text.count("Test ") == 2 and "8 more failing tests not shown" in item.text
    assert len(item.text) <= 1200 and item.text.endswith("[feedback truncated]") is False
    _, [small] = trace_for("def f(x):\n    return 'x' * 1000", reference, max_chars=200)
    assert len(small.text) <= 200 and small.text.endswith("... [feedback truncated]")


def test_reuses_the_verdicts_details_without_running_code():
    details = {
        "grader": "code_exec", "kind": "call", "passed_count": 0, "total": 1, "first_error": None,
        "tests": [{"index": 0, "kind": "call", "passed": False, "status": "failed", "input": "add(1, 2)",
                   "expected": 3, "actual": "5", "error": None, "stdout": "", "stderr": ""}],
    }
    source = CodeExecFeedback()
    [item] = source.feedback(problem(ADD_CALLS), rollout("this is not even code"), Verdict(score=0.0, passed=False, details=details), [])
    assert "expected: 3\n  returned: 5" in item.text
    assert source._verifier is None  # nothing was run


def test_grades_the_rollout_itself_when_the_verdict_came_from_elsewhere():
    source = CodeExecFeedback(backend="bwrap")
    [item] = source.feedback(problem(ADD_CALLS), rollout("def add(a, b):\n    return 0"), Verdict(score=0.0, passed=False), [])
    assert "returned: 0" in item.text
    # the grader it made for itself is closed with it (the trainer closes its feedback sources
    # when a run ends), and grading again makes a new one
    assert source._verifier is not None
    source.close()
    assert source._verifier is None
    [again] = source.feedback(problem(ADD_CALLS), rollout("def add(a, b):\n    return 0"), Verdict(score=0.0, passed=False), [])
    assert again.text == item.text
    source.close()


def test_trim_traceback_keeps_only_the_solutions_innermost_frames():
    trace = "\n".join(
        ["Traceback (most recent call last):", '  File "/work/main.py", line 9, in run', "    grade()"]
        + [f'  File "solution.py", line {n}, in f\n    return f(x - 1)' for n in range(10)]
        + ["RecursionError: maximum recursion depth exceeded"]
    )
    trimmed = trim_traceback(trace, frames=3)
    assert "main.py" not in trimmed and "... 7 earlier frames ..." in trimmed
    assert trimmed.count('File "solution.py"') == 3 and trimmed.endswith("RecursionError: maximum recursion depth exceeded")
    assert truncate("x" * 50, 40).endswith("[feedback truncated]") and len(truncate("x" * 50, 40)) == 40
