"""Every option of the verifier and the feedback source is checked when a config builds them, as
``distil train`` does: a bad one stops the run before it starts, with one line naming the option
and what it accepts, never at the first grading step (which would stop training) and never by
silently meaning something else (``workers: 0`` meant the default, ``max_output_bytes: 0`` failed
every whole-program solution)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from distil_core import ConfigError, PluginHost
from distil_core.training.runtime import build_component

ONE_CPU = "one per CPU, at most 32"
VERIFIER = [
    ({"memory_mb": -1}, "memory_mb must be a whole number of at least 1 (got -1)"),
    ({"memory_mb": 0}, "memory_mb must be a whole number of at least 1 (got 0)"),
    ({"memory_mb": "512"}, "memory_mb must be a whole number of at least 1 (got '512', a str: write it without quotes)"),
    ({"memory_mb": 1.5}, "memory_mb must be a whole number of at least 1 (got 1.5)"),
    ({"memory_mb": 1 << 44}, "memory_mb must be at most 1073741824 (1 PiB), not 17592186044416"),
    ({"max_output_bytes": 0}, "max_output_bytes must be a whole number of at least 1 (got 0)"),
    ({"max_output_bytes": -1}, "max_output_bytes must be a whole number of at least 1 (got -1)"),
    ({"workers": 0}, f"workers must be a whole number of at least 1 (or null: {ONE_CPU}) (got 0)"),
    ({"workers": 2.5}, f"workers must be a whole number of at least 1 (or null: {ONE_CPU}) (got 2.5)"),
    ({"workers": True}, f"workers must be a whole number of at least 1 (or null: {ONE_CPU}) (got True)"),
    ({"batch_size": "8"}, "batch_size must be a whole number of at least 1 (got '8', a str: write it without quotes)"),
    ({"cache_size": -1}, "cache_size must be a whole number of at least 0 (got -1)"),
    ({"max_pending": 0, "engines": ["bwrap"]},
     "max_pending must be a whole number of at least 1 (or null: twice all workers) (got 0)"),
    ({"max_pending": -1, "engines": ["bwrap"]},
     "max_pending must be a whole number of at least 1 (or null: twice all workers) (got -1)"),
    ({"batch": "no"}, "batch must be true or false (got 'no')"),
    ({"sessions": 1}, "sessions must be true or false (got 1)"),
    ({"backend": "bwarp"}, "backend must be one of auto, bwrap, docker, process (got 'bwarp')"),
    ({"timeout_s": "10"}, "timeout_s must be a number of seconds above 0 and at most 86400 (or null: the tests' "
                          "limits summed) (got '10', a str: write it without quotes)"),
]
FEEDBACK = [
    ({"backend": "nope"}, "backend must be one of auto, bwrap, docker, process (got 'nope')"),
    ({"max_failures": "3"}, "max_failures must be a whole number of at least 1 (got '3', a str: write it without quotes)"),
    ({"max_chars": 79}, "max_chars must be a whole number of at least 80 (got 79)"),
    ({"show_expected": "false"}, "show_expected must be true or false (got 'false')"),
]


@pytest.fixture(scope="module")
def host():
    return PluginHost(load_entrypoints=True, allow=["code_exec"])


@pytest.mark.parametrize("options,message", VERIFIER, ids=[str(o) for o, _ in VERIFIER])
def test_a_bad_verifier_option_is_refused_when_built(host, options, message):
    with pytest.raises(ConfigError) as caught:
        build_component(host, "verifier", "code_exec", options)
    assert str(caught.value) == f"verifier 'code_exec': code_exec: {message}"


@pytest.mark.parametrize("options,message", FEEDBACK, ids=[str(o) for o, _ in FEEDBACK])
def test_a_bad_feedback_option_is_refused_when_built(host, options, message):
    with pytest.raises(ConfigError) as caught:
        build_component(host, "feedback_source", "code_exec", options)
    assert str(caught.value) == f"feedback source 'code_exec': code_exec feedback: {message}"


def test_good_options_build(host):
    verifier = build_component(host, "verifier", "code_exec", {"backend": "process", "workers": 1, "memory_mb": 256,
                                                                "max_output_bytes": 1, "cache_size": 0})
    verifier.close()
    build_component(host, "feedback_source", "code_exec", {"backend": "docker", "show_expected": False})


def test_a_backend_that_cannot_run_here_stops_distil_train_with_one_line(tmp_path):
    """Before: BackendUnavailable is a RuntimeError, and ``distil train`` ended in a traceback."""
    config = tmp_path / "code.yaml"
    config.write_text("task: {name: code}\nverifier: {name: code_exec, options: {backend: docker}}\n"
                      "feedback: [code_exec]\ntrain: {steps: 1}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DISTIL_NO_ENTRYPOINTS", "DISTIL_PLUGINS")}
    env["DOCKER_HOST"] = f"unix://{tmp_path}/no-engine.sock"
    distil = [shutil.which("distil")] if shutil.which("distil") else [sys.executable, "-m", "distil_core.cli"]
    done = subprocess.run(distil + ["train", str(config), "--output-dir", str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: code_exec: sandbox backend 'docker' is unavailable: cannot reach the Docker "
                                  f"engine at unix://{tmp_path}/no-engine.sock"), done.stderr
    assert "or choose another backend (auto, bwrap, docker, process)" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
