"""A solution that reads its task's dataset (which holds the reference solution) and runs the
canonical solution it finds there must not pass: the dataset is world-readable on the host, in
the installed ``distil_tasks`` package, so every backend has to keep it out of the sandbox."""

import json
import os

import pytest
from code_exec_testlib import grade

distil_tasks = pytest.importorskip("distil_tasks")
DATASET = os.path.join(os.path.dirname(os.path.realpath(distil_tasks.__file__)), "data", "humaneval.jsonl")
TASK = "Fixture/0"  # count_vowels
TESTS = {"asserts": ["assert count_vowels('hello') == 2", "assert count_vowels('') == 0",
                     "assert count_vowels('AEIOU xyz') == 5"], "timeout_s": 2}

COPY_THE_REFERENCE = f"""
import json
def count_vowels(text):
    return -1
try:
    for line in open({DATASET!r}):
        record = json.loads(line)
        if record["task_id"] == {TASK!r}:
            exec(record["prompt"] + record["canonical_solution"])
            print("copied the reference solution")
except OSError as exc:
    print("dataset unreadable:", exc)
"""


def test_the_dataset_is_there_to_steal_on_the_host():
    """The premise: readable by anyone on the host, with the canonical solution inside."""
    assert os.stat(DATASET).st_mode & 0o004
    with open(DATASET) as fh:
        record = next(r for r in map(json.loads, fh) if r["task_id"] == TASK)
    namespace: dict = {}
    exec(record["prompt"] + record["canonical_solution"], namespace)
    assert namespace["count_vowels"]("AEIOU xyz") == 5


@pytest.mark.parametrize("backend", ["bwrap", "docker", "process"])
def test_copying_the_reference_from_the_dataset_does_not_pass(backend):
    verdict = grade(COPY_THE_REFERENCE, TESTS, backend)
    assert not verdict.passed and verdict.score == 0.0, verdict.details["tests"]
