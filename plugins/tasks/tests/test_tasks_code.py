"""The code suite through the code-execution plugin's sandbox: fixtures' own solutions pass,
procedural one-liners pass, and mistakes come back as execution-trace feedback."""

import random

import distil_sandbox
import pytest
from distil_code_exec import CodeExecFeedback, CodeExecVerifier

from distil_tasks import CodeTask

from tasks_testlib import fixture, rollout, write_jsonl


@pytest.fixture(scope="module")
def verifier():
    reason = distil_sandbox.available_backends().get("bwrap")
    backend = "bwrap" if not reason else "auto"
    v = CodeExecVerifier(backend=backend, workers=2)
    yield v
    v.close()


@pytest.mark.parametrize("fmt", ["humaneval", "mbpp", "livecodebench"])
def test_fixture_solutions_pass_and_a_stub_fails(verifier, fmt):
    task = CodeTask(path=fixture(fmt), format=fmt)
    problems = task.problems("train") + task.problems("test")
    with_solution = [p for p in problems if p.metadata.get("solution")]
    assert with_solution
    pairs = [(p, rollout(f"```python\n{p.metadata['solution']}\n```")) for p in with_solution]
    pairs += [(p, rollout("def unrelated():\n    return 0\n")) for p in problems]
    verdicts = verifier.verify_many(pairs)
    good, bad = verdicts[: len(with_solution)], verdicts[len(with_solution):]
    assert all(v.passed for v in good), [v.details.get("first_error") for v in good]
    assert not any(v.passed for v in bad)


def test_the_sanitized_mbpp_loads_and_its_imports_run_before_its_asserts(verifier, tmp_path):
    """The sanitized MBPP keeps the description under prompt (the original: text) and lists the
    imports its asserts use in test_imports: without them a right solution failed every test
    (NameError on math), exactly as a wrong one."""
    record = {"source_file": "Benchmark Questions Verification V2.ipynb", "task_id": 7,
              "prompt": "Write a function for the area of a circle of radius r.",
              "code": "import math\ndef area(r):\n    return math.pi * r * r",
              "test_imports": ["import math"],
              "test_list": ["assert math.isclose(area(1), 3.14159, rel_tol=1e-4)",
                            "assert math.isclose(area(2), 12.56637, rel_tol=1e-4)"]}
    path = write_jsonl(tmp_path / "mbpp.jsonl", [dict(record, task_id=i, prompt=f"{record['prompt']} ({i})") for i in range(5)])
    task = CodeTask(path=path, format="mbpp")
    [problem, *_] = task.problems("train") + task.problems("test")
    assert problem.prompt.startswith("Write a function for the area of a circle of radius r. (")
    assert "assert math.isclose(area(1)" in problem.prompt
    right, wrong = (rollout(f"```python\n{code}\n```") for code in
                    (record["code"], "def area(r):\n    return 3 * r * r"))
    good, bad = verifier.verify_many([(problem, right), (problem, wrong)])
    assert good.passed, good.details.get("first_error")
    assert not bad.passed and bad.score == 0.0
    # the original release's text wins where a record has both
    both = write_jsonl(tmp_path / "both.jsonl", [dict(record, task_id=i, text=f"Original ({i})") for i in range(5)])
    assert all(p.prompt.startswith("Original (") for p in CodeTask(path=both, format="mbpp").problems("train"))


def test_procedural_solutions_pass_and_mistakes_get_execution_traces(verifier):
    task = CodeTask(train_size=20, test_size=4, seed=5)
    problems = task.problems("test")
    rng = random.Random(0)
    wrong = [task.wrong_answer(p, rng) for p in problems]
    verdicts = verifier.verify_many([(p, rollout(p.metadata["solution"])) for p in problems]
                                    + [(p, rollout(w)) for p, w in zip(problems, wrong)])
    assert all(v.passed for v in verdicts[: len(problems)])
    source = CodeExecFeedback(max_failures=1)
    for p, w, v in zip(problems, wrong, verdicts[len(problems):]):
        if v.passed:  # a mistake the four tests cannot see (x % 9 vs x % 8 on small x, say)
            continue
        [fb] = source.feedback(p, rollout(w), v)
        assert fb.kind == "execution_trace" and "tests failed" in fb.text
        assert "f(" in fb.text or "does not compile" in fb.text or "error" in fb.text.lower()
