"""The plugin is found through its installed entry point and builds by name, as a config would."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from code_exec_testlib import ADD_CALLS, problem, rollout

from distil_core import ConfigError
from distil_core import PluginHost
from distil_core import FeedbackSource, Verifier, resolve


@pytest.fixture(scope="module")
def host():
    return PluginHost(load_entrypoints=True, allow=["code_exec"])


def test_entry_point_registers_verifier_and_feedback_source(host):
    info = host.plugins["code_exec"]
    assert info.error is None and info.distribution == "distil-code-exec"
    assert ("verifier", "code_exec") in info.registered and ("feedback_source", "code_exec") in info.registered
    assert host.get("verifier", "code_exec").plugin == "code_exec"
    assert host.get("feedback_source", "code_exec").plugin == "code_exec"


def test_distil_plugins_lists_it():
    env = {k: v for k, v in os.environ.items() if k not in ("DISTIL_NO_ENTRYPOINTS", "DISTIL_PLUGINS")}
    distil = [shutil.which("distil")] if shutil.which("distil") else [sys.executable, "-m", "distil_core.cli"]
    table = subprocess.run(distil + ["plugins"], env=env, capture_output=True, text=True, check=True).stdout
    [row] = [line for line in table.splitlines() if line.startswith("code_exec ")]
    assert row.split()[1] == "0.1.0" and row.endswith("verifiers: code_exec; feedback sources: code_exec")
    listed = subprocess.run(distil + ["plugins", "--json"], env=env, capture_output=True, text=True, check=True).stdout
    [entry] = [p for p in json.loads(listed) if p["name"] == "code_exec"]
    assert entry["distribution"] == "distil-code-exec" and "error" not in entry


def test_built_by_name_it_grades_and_explains(host):
    verifier = host.build("verifier", "code_exec", {"backend": "bwrap", "memory_mb": 256, "timeout_s": 20})
    source = host.build("feedback_source", "code_exec", {"max_failures": 1, "max_chars": 600})
    assert isinstance(verifier, Verifier) and isinstance(source, FeedbackSource)
    good, bad = rollout("def add(a, b):\n    return a + b"), rollout("def add(a, b):\n    return b + 1")
    passed = resolve(verifier.verify(problem(ADD_CALLS), good))
    failed = resolve(verifier.verify(problem(ADD_CALLS), bad))
    assert passed.passed and not failed.passed and failed.score == 0.5
    [item] = source.feedback(problem(ADD_CALLS), bad, failed, [(good, passed), (bad, failed)])
    assert "Test 2: add(-4, 4)\n  expected: 0\n  returned: 5" in item.text
    verifier.close()


def test_misspelt_option_is_reported(host):
    with pytest.raises(ConfigError, match="Did you mean 'memory_mb'"):
        host.build("verifier", "code_exec", {"memroy_mb": 256})
