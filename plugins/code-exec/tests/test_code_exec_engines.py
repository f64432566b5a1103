"""The code_exec verifier on several engines (option ``engines``): one verdict per rollout, even
when a Docker engine dies in the middle of a step."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import yaml
from code_exec_testlib import ADD_CALLS, problem, rollout

from distil_code_exec import CodeExecVerifier
from distil_core import PluginHost

SANDBOX_TESTS = Path(__file__).resolve().parents[3] / "sandbox" / "tests"  # the second dockerd's helpers


def sandbox_testlib():
    if not (SANDBOX_TESTS / "sandbox_docker_testlib.py").exists():
        pytest.skip(f"the sandbox test helpers are not at {SANDBOX_TESTS} (run from a checkout)")
    sys.path.insert(0, str(SANDBOX_TESTS))
    import sandbox_docker_testlib

    return sandbox_docker_testlib


def square(i: int):
    """Problem ``i``: f(i) must return i*i; its expected value names the problem in the verdict."""
    return problem({"entry_point": "f", "calls": [{"args": [i], "expected": i * i}], "timeout_s": 5}, pid=f"sq{i}")


SLOW_RIGHT = "import time\ndef f(x):\n    time.sleep(0.5)\n    return x * x\n# {i}"
SLOW_WRONG = "import time\ndef f(x):\n    time.sleep(0.5)\n    return x * x + 1\n# {i}"


def test_bad_engine_options_are_refused_with_what_to_write():
    with pytest.raises(ValueError, match=r"code_exec: engine 'dokcer': unknown engine kind 'dokcer'.*write"):
        CodeExecVerifier(engines=["dokcer"])
    with pytest.raises(ValueError, match=r"code_exec: give either backend \('bwrap'\) or engines, not both"):
        CodeExecVerifier(backend="bwrap", engines=["bwrap"])
    with pytest.raises(ValueError, match="code_exec: max_pending bounds the queue of an engine pool; give engines"):
        CodeExecVerifier(backend="process", max_pending=4)


def test_the_documented_yaml_builds_a_verifier_that_grades_on_local_engines():
    import distil_sandbox

    missing = {n: why for n, why in distil_sandbox.available_backends().items() if n in ("bwrap", "process") and why}
    if missing:
        pytest.skip(f"local sandboxes unavailable here: {missing}")
    options = yaml.safe_load("""
        engines: ["bwrap*2", "process*1"]
        workers: 2
        max_pending: 8
        memory_mb: 256
    """)
    verifier = PluginHost(load_entrypoints=True, allow=["code_exec"]).build("verifier", "code_exec", options)
    try:
        pairs = [(problem(ADD_CALLS), rollout(f"def add(a, b):\n    return a + b  # {i}" if i % 2 else
                                              f"def add(a, b):\n    return a - b  # {i}")) for i in range(10)]
        verdicts = verifier.verify_many(pairs)
        assert [v.passed for v in verdicts] == [i % 2 == 1 for i in range(10)]
        stats = verifier.stats
        assert stats["jobs"] == 10 and set(stats["engines"]) == {"bwrap", "process"}
    finally:
        verifier.close()


def test_n_rollouts_get_exactly_n_correct_verdicts_when_an_engine_dies_mid_step():
    lib = sandbox_testlib()
    lib.backend_or_skip("docker")
    spare = lib.spare_dockerd_or_skip()
    verifier = CodeExecVerifier(engines=["docker*2", f"{spare.spec}*2"], memory_mb=256)
    try:
        count = 16
        pairs = [(square(i), rollout((SLOW_WRONG if i % 3 == 0 else SLOW_RIGHT).format(i=i))) for i in range(count)]
        verdicts: list = []
        step = threading.Thread(target=lambda: verdicts.extend(verifier.verify_many(pairs)))
        step.start()
        lib.wait_until(lambda: verifier.stats.get("engines", {}).get(spare.spec, {}).get("busy") == 2,
                       "two grading runs on the spare engine")
        spare.kill()
        step.join(180)
        assert not step.is_alive(), "the step's grading hung"
        stats = verifier.stats
    finally:
        verifier.close()
        spare.stop()
    assert len(verdicts) == count
    assert [v.passed for v in verdicts] == [i % 3 != 0 for i in range(count)]
    assert [v.details["tests"][0]["expected"] for v in verdicts] == [i * i for i in range(count)]
    assert not [v.details["infrastructure_error"] for v in verdicts if "infrastructure_error" in v.details]
    assert stats["jobs"] == count and stats["failed"] == 0  # one grading run per rollout reached its end
    assert stats["engine_failures"] == 1 and stats["requeued"] >= 1
