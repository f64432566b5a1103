"""What a problem's reference may hold, and how the code is found in a response (``spec.py``):
no sandbox needed."""

from __future__ import annotations

import random
import re
import time

import pytest

from distil_code_exec import CodeTests, extract_code, spec

# The pattern extract_code used before its linear scan: the reference for what a fenced block is.
BACKTRACKING_FENCE = re.compile(
    r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)", re.M | re.S)


def test_an_entry_point_is_read_as_python_reads_names():
    """Python folds every identifier to NFKC (``def \ufb01nd`` defines ``find``): the name a
    problem gives is looked up in that form, or no solution could define it."""
    tests = CodeTests.from_reference({"entry_point": "\ufb01nd", "calls": [{"args": [1], "expected": 2}]})
    assert tests.entry_point == "find"
    with pytest.raises(ValueError, match="must be a Python function name"):
        CodeTests.from_reference({"entry_point": "no-name", "calls": [{"args": [1], "expected": 2}]})


@pytest.mark.parametrize("reference,message", [
    ({"asserts": ["assert add(1, 2) == 3", "return add(1, 2) == 3"]},
     r"asserts: .*assert 1 is not valid Python: 'return' outside function"),
    ({"asserts": ["nonlocal x\nassert x"]}, r"assert 0 is not valid Python: nonlocal declaration not allowed at module level"),
    ({"asserts": ["assert add(1, 2) == 3"], "setup": "nonlocal x"}, r"setup: .*not valid Python: nonlocal declaration"),
    ({"asserts": ["assert (await add(1, 2)) == 3"]}, r"assert 0 is not valid Python: 'await' outside function"),
    ({"asserts": ["assert add(1, 2) == 3 # \0"]}, r"assert 0 is not valid Python"),
])
def test_tests_that_parse_but_do_not_compile_are_the_problems_mistake(reference, message):
    """Such a test would fail as a runtime error of every solution graded against it."""
    with pytest.raises(ValueError, match=message):
        CodeTests.from_reference(reference, problem_id="p7")


def test_extract_code_finds_the_blocks_the_backtracking_pattern_found():
    rng = random.Random(7)
    alphabet = ["`", "`", "`", "~", "~", " ", "\t", "\n", "\n", "p", "y", "+", "\r", "\u00e9"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        expected = [(m.group(2), m.group(3)) for m in BACKTRACKING_FENCE.finditer(text)]
        assert spec.fenced_blocks(text) == expected, repr(text)
    response = "Here:\n```py\nx = 1\n```\n~~~~\nuntagged\n~~~~\n````python\ndef f(): pass\n  ````  \nbye"
    assert extract_code(response) == "def f(): pass\n"


@pytest.mark.parametrize("text", ["`" * 100_000, "~" * 100_000, "```" + "a" * 100_000, "```\n" + "`" * 100_000],
                         ids=["backticks", "tildes", "long-tag", "long-body-line"])
def test_extract_code_takes_linear_time_on_a_long_line(text):
    """An untrusted response of one long line of backticks took seconds (quadratic backtracking),
    on the trainer's host, outside any sandbox time limit."""
    started = time.perf_counter()
    extract_code(text)
    assert time.perf_counter() - started < 0.5


def test_lone_surrogates_in_a_response_become_replacement_characters():
    """Half of an emoji (a client cut the text between its two UTF-16 halves) cannot be written
    as UTF-8 source; a whole pair written as two code points is joined."""
    code = extract_code("```python\ndef add(a, b):\n    return a + b  # \ud83d\n```")
    assert code == "def add(a, b):\n    return a + b  # \ufffd\n"
    assert extract_code("print('\ud83d\ude00')") == "print('\U0001f600')"
    code.encode("utf-8")


@pytest.mark.parametrize("field", ["stdin", "stdout"])
def test_a_lone_surrogate_in_a_whole_program_test_is_the_problems_mistake(field):
    """A program's input and output travel as UTF-8, which cannot hold half of a UTF-16 pair.
    Before: accepted, then every solution failed with "the grading run was cut short"."""
    case = {"stdin": "1\n", "stdout": "ok"}
    case[field] = "x\ud800\n"
    with pytest.raises(ValueError) as caught:
        CodeTests.from_reference([{"stdin": "", "stdout": "fine"}, case], problem_id="p8")
    assert str(caught.value) == (f"problem p8: invalid code tests in reference: io.1.{field}: Value error, holds a lone "
                                 "surrogate (U+D800) at character 1, which is not text UTF-8 can encode; give the test "
                                 "as text without one")
