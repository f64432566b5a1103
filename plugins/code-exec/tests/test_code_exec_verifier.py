"""The code_exec verifier grades the three test styles in the real sandbox (bwrap)."""

import time

import pytest
from code_exec_testlib import ADD_ASSERTS, ADD_CALLS, ADD_IO, grade, problem, rollout, verifier
from distil_core import resolve_all

from distil_code_exec import CodeExecVerifier

ADD = """
def add(a, b):
    return a + b
"""
ADD_WRONG = """
def add(a, b):
    print("adding", a, b)
    return abs(a) + b
"""
ADD_PROGRAM = """
a, b = map(int, input().split())
print(a + b)
"""


@pytest.mark.parametrize("reference", [ADD_CALLS, ADD_ASSERTS], ids=["calls", "asserts"])
def test_correct_function_passes(reference):
    verdict = grade(ADD, reference)
    assert verdict.passed and verdict.score == 1.0
    assert [t["status"] for t in verdict.details["tests"]] == ["passed", "passed"]
    assert verdict.details["backend"] == "bwrap"
    assert verdict.details["first_error"] is None


def test_correct_program_passes():
    verdict = grade(ADD_PROGRAM, ADD_IO)
    assert verdict.passed, verdict.details
    assert verdict.details["tests"][0]["actual"] == "3\n"


def test_bare_code_without_fence_is_graded():
    verdict = verifier().grade(problem(ADD_CALLS), rollout(ADD, fenced=False))
    assert verdict.passed


def test_wrong_function_fails_with_per_test_details():
    verdict = grade(ADD_WRONG, ADD_CALLS)
    assert not verdict.passed and verdict.score == 0.5
    first, second = verdict.details["tests"]
    assert first["passed"] and first["actual"] == "3"
    assert second == {**second, "index": 1, "kind": "call", "passed": False, "status": "failed",
                      "input": "add(-4, 4)", "expected": 0, "actual": "8", "stdout": "adding -4 4\n"}


def test_wrong_assert_reports_both_sides():
    verdict = grade(ADD_WRONG, {"asserts": ["assert add(-2, 2) == 0", "assert add(2, 0) == 2"]})
    assert verdict.score == 0.5
    failed = verdict.details["tests"][0]
    assert failed["status"] == "failed" and failed["actual"] == "4" and failed["expected"] == "0"
    assert failed["input"] == "assert add(-2, 2) == 0"


def test_wrong_program_fails_with_output():
    verdict = grade("print(42)", ADD_IO)
    assert verdict.score == 0.0
    row = verdict.details["tests"][1]
    assert row["input"] == "-4 4\n" and row["expected"] == "0" and row["actual"] == "42\n"


def test_io_comparison_ignores_surrounding_whitespace_only():
    reference = [{"stdin": "", "stdout": "1 2\n3\n"}]
    assert grade("print('  1 2  ')\nprint('3')\nprint()", reference).passed
    assert not grade("print('1  2')\nprint('3')", reference).passed


def test_asserts_may_use_several_functions_setup_and_expected_exceptions():
    code = """
    import math
    def area(r):
        return math.pi * r * r
    def check(x):
        if x < 0:
            raise ValueError("negative")
        return x
    LIMIT = 10
    """
    reference = {
        "setup": "import math\ndef close(a, b):\n    return abs(a - b) < 1e-9",
        "asserts": [
            "assert close(area(1), math.pi) and check(3) == 3",
            "try:\n    check(-1)\nexcept ValueError:\n    pass\nelse:\n    assert False",
            "assert LIMIT == 10",
            "assert [check(i) for i in range(3)] == [0, 1, 2]",
        ],
    }
    verdict = grade(code, reference)
    assert verdict.passed, verdict.details["tests"]


def test_literal_values_of_every_kind_cross():
    code = """
    def f(kind):
        return {"tuple": (1, "a"), "set": {1, 2}, "empty": set(), "inf": float("inf"), "neg": -2.5,
                "bytes": b"\\x00", "complex": 1 - 2j, "nested": {"k": [None, True, (3,)]},
                "frozen": frozenset({1}), "big": 10 ** 50}[kind]
    """
    asserts = [
        "assert f('tuple') == (1, 'a')", "assert f('set') == {1, 2}", "assert f('empty') == set()",
        "assert f('inf') == float('inf')", "assert f('neg') == -2.5", "assert f('bytes') == b'\\x00'",
        "assert f('complex') == 1 - 2j", "assert f('nested') == {'k': [None, True, (3,)]}",
        "assert f('frozen') == frozenset({1})", "assert f('big') == 10 ** 50",
    ]
    verdict = grade(code, {"asserts": asserts})
    assert verdict.passed, [t for t in verdict.details["tests"] if not t["passed"]]


def test_call_tests_treat_tuples_as_lists_and_honour_rel_tol():
    code = "def f(x):\n    return (x, x / 3)"
    assert grade(code, {"entry_point": "f", "calls": [{"args": [1], "expected": [1, 0.3333333333333333]}]}).passed
    loose = {"entry_point": "f", "calls": [{"args": [1], "expected": [1, 0.333333]}], "rel_tol": 1e-5}
    assert grade(code, loose).passed
    assert not grade(code, dict(loose, rel_tol=0.0)).passed


def test_text_round_trips_whatever_the_solution_prints():
    code = "import sys\ndef f(s):\n    sys.stdout.buffer.write(b'\\xff\\xfe bad bytes\\n')\n    return s + ' \u2713'"
    verdict = grade(code, {"entry_point": "f", "calls": [{"args": ["h\u00e9llo"], "expected": "h\u00e9llo \u2713"}]})
    assert verdict.passed, verdict.details["tests"]
    assert "bad bytes" in verdict.details["tests"][0]["stdout"]


def test_kwargs_reach_the_function():
    reference = {"entry_point": "greet", "calls": [{"args": ["Ann"], "kwargs": {"punct": "!"}, "expected": "hi Ann!"}]}
    assert grade("def greet(name, punct='.'):\n    return f'hi {name}{punct}'", reference).passed


def test_runtime_error_is_reported_with_the_solutions_frames_only():
    code = """
    def helper(x):
        return 10 // x
    def add(a, b):
        return helper(a - a)
    """
    verdict = grade(code, ADD_CALLS)
    error = verdict.details["first_error"]
    assert error["stage"] == "runtime" and error["test_index"] == 0
    assert "ZeroDivisionError" in error["message"]
    assert 'File "solution.py", line 2, in helper' in error["traceback"]
    assert "harness" not in error["traceback"] and "distil_child" not in error["traceback"]


def test_syntax_error_fails_every_test_and_names_the_line():
    verdict = grade("def add(a, b)\n    return a + b\n", ADD_ASSERTS)
    assert verdict.score == 0.0
    error = verdict.details["first_error"]
    assert error["stage"] == "compile" and "line 1" in error["message"]
    assert "def add(a, b)" in error["traceback"]
    assert {t["status"] for t in verdict.details["tests"]} == {"not_run"}


def test_error_while_loading_is_the_first_error():
    verdict = grade("import does_not_exist\ndef add(a, b):\n    return a + b", ADD_CALLS)
    error = verdict.details["first_error"]
    assert error["stage"] == "import" and "ModuleNotFoundError" in error["message"]
    assert 'File "solution.py", line 1' in error["traceback"]


def test_missing_function_is_named():
    verdict = grade("def plus(a, b):\n    return a + b", ADD_ASSERTS)
    assert verdict.score == 0.0
    assert "does not define 'add'" in verdict.details["tests"][0]["error"]


def test_slow_test_times_out_and_the_next_one_still_runs():
    code = """
    def add(a, b):
        while a == 1:
            pass
        return a + b
    """
    verdict = grade(code, ADD_CALLS)
    first, second = verdict.details["tests"]
    assert first["status"] == "timeout" and "timed out after 1 s" in first["error"]
    assert second["passed"]
    assert verdict.details["first_error"]["stage"] == "timeout"


def test_a_value_slow_to_read_back_times_out_its_test_alone():
    """A returned value whose repr is a set literal of numbers that share one hash is quadratic
    to read back. Read in one C call it outlasted the test's alarm and the whole run was cut
    (every test "missing"); read item by item, its own test times out and the next one runs."""
    code = """
    M = (1 << 61) - 1
    TEXT = "{" + ", ".join(str(k * M) for k in range(50_000)) + "}"
    class Colliding:
        def __repr__(self):
            return TEXT
    def add(a, b):
        return Colliding() if a == 1 else a + b
    """
    verdict = grade(code, ADD_CALLS)
    first, second = verdict.details["tests"]
    assert first["status"] == "timeout" and "timed out after 1 s" in first["error"], first
    assert second["passed"], second


def test_loading_the_code_again_after_a_timeout_is_not_charged_to_the_next_test():
    """After a test times out, the code is loaded in a new process before the next test; that
    load (here 1.2 s, past the 1 s a test may take) has a limit of its own, as the first had."""
    code = """
    import time
    time.sleep(1.2)
    def add(a, b):
        while a == 1:
            pass
        return a + b
    """
    reference = dict(ADD_CALLS, calls=[{"args": [1, 2], "expected": 3}, *ADD_CALLS["calls"], {"args": [5, 5], "expected": 10}])
    rows = grade(code, reference).details["tests"]
    assert [row["status"] for row in rows] == ["timeout", "timeout", "passed", "passed"], rows


def test_a_lone_surrogate_in_a_response_is_graded_not_raised():
    """Half of an emoji in the response (a client cut it) cannot go to the sandbox as UTF-8: it
    is graded as U+FFFD, alone and in a step's batch, where it must not stop the others."""
    graded = CodeExecVerifier(backend="bwrap", cache_size=0, workers=2)
    cut = rollout(ADD + "# \ud83d")
    try:
        assert graded.grade(problem(ADD_CALLS), cut).passed
        verdicts = graded.verify_batch([problem(ADD_CALLS)] * 3, [cut, rollout(ADD), rollout(ADD_WRONG)])
    finally:
        graded.close()
    assert [v.passed for v in verdicts] == [True, True, False]


def test_an_entry_point_not_in_nfkc_form_can_pass():
    verdict = grade("def \ufb01nd(x):\n    return x + 1", {"entry_point": "\ufb01nd", "calls": [{"args": [1], "expected": 2}]})
    assert verdict.passed, verdict.details["tests"]


def test_program_that_prints_too_much_fails():
    started = time.monotonic()
    verdict = grade("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", ADD_IO)
    row = verdict.details["tests"][0]
    assert not verdict.passed and row["status"] == "failed"
    assert row["error"] == "printed more than 1048576 bytes"
    assert len(row["stdout"]) < 2000  # excerpts only
    assert time.monotonic() - started < 2  # stopped at the limit, not at the timeout


def test_invalid_reference_names_the_bad_field():
    with pytest.raises(ValueError, match=r"problem bad: .*calls\.0\.expected: Field required"):
        verifier().grade(problem({"entry_point": "f", "calls": [{"args": [1]}]}, pid="bad"), rollout(ADD))
    with pytest.raises(ValueError, match="calls need entry_point"):
        verifier().grade(problem({"calls": [{"args": [], "expected": 1}]}), rollout(ADD))
    with pytest.raises(ValueError, match="exactly one of io, calls or asserts"):
        verifier().grade(problem({"asserts": ["assert 1"], "io": []}), rollout(ADD))
    with pytest.raises(ValueError, match=r"asserts: .*assert 0 is not valid Python"):
        verifier().grade(problem({"asserts": ["assert f(("]}), rollout(ADD))


def test_identical_code_and_tests_are_graded_once():
    graded = CodeExecVerifier(backend="bwrap")
    first = graded.grade(problem(ADD_CALLS), rollout(ADD))
    again = graded.grade(problem(ADD_CALLS), rollout(ADD))
    assert graded.counts["sandbox_runs"] == 1 and graded.counts["cache_hits"] == 1  # the second verdict came from the cache
    assert again == first and again is not first
    other = graded.grade(problem(ADD_CALLS), rollout(ADD_WRONG))
    assert graded.counts["sandbox_runs"] == 2 and graded.counts["cache_hits"] == 1 and not other.passed
    graded.close()


def test_many_rollouts_are_graded_concurrently():
    graded = CodeExecVerifier(backend="bwrap", workers=4, cache_size=0)
    pairs = [(problem(ADD_CALLS), rollout(ADD if i % 2 else ADD_WRONG + f"\n# {i}")) for i in range(8)]
    verdicts = graded.verify_many(pairs)
    assert [v.passed for v in verdicts] == [i % 2 == 1 for i in range(8)]
    # The engine's path: verify is a coroutine, resolved together.
    resolved = resolve_all([graded.verify(p, r) for p, r in pairs])
    assert [v.score for v in resolved] == [v.score for v in verdicts]
    graded.close()


MAX_CODE_BYTES = 16 << 20  # a sandbox job's file, at most


@pytest.mark.parametrize("sessions", [True, False])
def test_code_larger_than_a_grading_run_takes_gets_a_failed_verdict_saying_so(sessions):
    """Before: a response over 16 MiB made verify_batch and grade raise the sandbox's ValueError,
    which stopped training."""
    from distil_code_exec.feedback import CodeExecFeedback

    code = ADD + "#" * MAX_CODE_BYTES + "\n"
    big = CodeExecVerifier(backend="bwrap", cache_size=0, workers=1, sessions=sessions)
    try:
        verdicts = [big.verify_batch([problem(ADD_CALLS)], [rollout(code)])[0],
                    big.grade(problem(ADD_CALLS), rollout(code)),
                    *resolve_all([big.verify(problem(ADD_CALLS), rollout(code))])]
        just_fits = big.grade(problem(ADD_CALLS), rollout(ADD + "#" * (MAX_CODE_BYTES - len(ADD) - 200)))
    finally:
        big.close()
    size = len((ADD.strip() + "\n" + "#" * MAX_CODE_BYTES + "\n").encode())
    message = f"the code is {size} bytes of UTF-8, more than the {MAX_CODE_BYTES} (16 MiB) a grading run takes; it was not run"
    for verdict in verdicts:
        assert not verdict.passed and verdict.score == 0.0
        assert verdict.details["first_error"]["message"] == message
        assert [t["error"] for t in verdict.details["tests"]] == [message, message]
    [item] = CodeExecFeedback().feedback(problem(ADD_CALLS), rollout(code), verdicts[0])
    assert item.text == "The code was not run: " + message
    assert just_fits.passed, just_fits.details
