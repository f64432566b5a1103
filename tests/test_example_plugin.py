"""The plugin in docs/example-plugin, installed into a fresh environment, tested with its own
tests (through distil-toolkit's pytest fixtures) and used to train."""

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from distil_core.testing import FAST_RUN

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "example-plugin"


@pytest.mark.slow
def test_example_plugin_installs_into_a_fresh_environment_and_trains(tmp_path, tiny_base_cache):
    env_dir = tmp_path / "venv"
    # A new environment that sees the toolkit (installed in the base interpreter) but not the plugin.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", str(EXAMPLE)] if _pip_has_python_option() else
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(EXAMPLE)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("DISTIL_NO_ENTRYPOINTS", "DISTIL_PLUGINS")}
    env.update(HF_HUB_OFFLINE="1")

    # The plugin's own tests, as its author runs them: the installed package, the fixtures of
    # distil-toolkit's pytest plugin, isolation from its pyproject.toml.
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("distil_length", "build", "*.egg-info"))
    own = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=project, env=env,
                         capture_output=True, text=True, timeout=300)
    assert own.returncode == 0 and "3 passed" in own.stdout, own.stdout + own.stderr

    listed = subprocess.run([python, "-m", "distil_core.cli", "plugins", "--json"], env=env,
                            capture_output=True, text=True, check=True)
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["length"]["distribution"] == "distil-length"
    assert plugins["length"]["registered"]["feedback_source"] == ["length_critic"]
    assert plugins["length"]["registered"]["expert"] == ["function"]
    base = subprocess.run([sys.executable, "-m", "distil_core.cli", "plugins", "--json"], env=env,
                          capture_output=True, text=True, check=True)
    assert "length" not in {p["name"] for p in json.loads(base.stdout)}  # only the new environment has it

    run = tmp_path / "run"
    sets = []
    for item in FAST_RUN + ["train.steps=2", "feedback=[answer_check, {name: length_critic, options: {min_gap: 1}}]",
                            "expert={name: function, options: {function: 'distil_length:sort_digits'}}"]:
        sets += ["--set", item]
    trained = subprocess.run([python, "-m", "distil_core.cli", "train", "--quiet", "--output-dir", str(run), *sets],
                             env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["expert_access"] == "text" and r["signal_rollouts"] > 0 for r in rows)
    provenance = [json.loads(line) for line in (run / "provenance.jsonl").read_text().splitlines()]
    assert any({"source": "length_critic", "kind": "critique"} in r["feedback"] for r in provenance)


def _pip_has_python_option() -> bool:
    out = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout
    major, minor = (int(x) for x in out.split()[1].split(".")[:2])
    return (major, minor) >= (22, 3)


def test_docs_plugins_md_shows_the_example_plugin_as_it_is():
    """Step 1, 2 and 5 of docs/plugins.md are the example's files, so the walkthrough cannot drift."""
    guide = (EXAMPLE.parent / "plugins.md").read_text()
    module = (EXAMPLE / "distil_length" / "__init__.py").read_text().split('"""\n\n', 1)[1]
    pyproject = "[project]" + (EXAMPLE / "pyproject.toml").read_text().split("[project]", 1)[1]
    tests = (EXAMPLE / "tests" / "test_length.py").read_text()
    for text in (module, pyproject, tests):
        assert f"\n{text.rstrip()}\n```" in guide
    assert "distil_length:sort_digits" in guide and "def sort_digits(" in module
