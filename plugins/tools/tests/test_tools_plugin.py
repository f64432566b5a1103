"""The installed plugin: found through its entry point, built by name as a config would."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from tools_testlib import FAILED, PROBLEM, isolating_backend, rollout

from distil_core import ContextTemplate
from distil_core import ConfigError
from distil_core import PluginHost
from distil_core import FeedbackSource, resolve, resolve_all


@pytest.fixture(scope="module")
def host():
    return PluginHost(load_entrypoints=True, allow=["tools"])


def test_entry_point_registers_the_feedback_source_and_the_command(host):
    info = host.plugins["tools"]
    assert info.error is None and info.distribution == "distil-tools" and info.version == "0.1.0"
    assert ("feedback_source", "tools") in info.registered and ("command", "tools") in info.registered


def test_built_by_name_it_runs_the_calls_of_a_failed_rollout(host):
    source = host.build("feedback_source", "tools", {
        "tools": ["calculator", "python"], "max_calls": 2, "max_chars": 200,
        "tool_options": {"python": {"backend": isolating_backend(), "timeout_s": 5}},
    })
    assert isinstance(source, FeedbackSource)
    text = ('12 * (3 + 4) is <tool name="calculator">12 * (3 + 4)</tool>.\n'
            '```tool\n{"name": "python", "input": "print(12 * (3 + 4))"}\n```\n'
            '<tool name="calculator">84 + 1</tool>')
    items = resolve(source.feedback(PROBLEM, rollout(text), FAILED, []))
    assert [i.text for i in items] == [
        "Tool calculator(12 * (3 + 4)) → 84",
        "Tool python(print(12 * (3 + 4))) → 84",
        "1 more tool call was not run (at most 2 per response).",
    ]
    rendered = ContextTemplate().render(PROBLEM.user_text(), items[:1], None)
    assert rendered == ("What is 12 * (3 + 4)?\nFeedback on an earlier unsuccessful attempt: "
                        "Tool calculator(12 * (3 + 4)) → 84\nSolve the original question correctly.")


def test_the_engine_resolves_many_rollouts_at_once_in_order(host):
    """The trainer hands every rollout's coroutine to resolve_all; each gets its own calls' outputs."""
    source = host.build("feedback_source", "tools", {"tools": ["calculator"]})
    rollouts = [rollout(f'<tool name="calculator">{i} * 10</tool>') for i in range(6)] + [rollout("no call")]
    results = resolve_all([source.feedback(PROBLEM, r, FAILED, []) for r in rollouts])
    assert [[i.text for i in items] for items in results] == [[f"Tool calculator({i} * 10) → {i * 10}"] for i in range(6)] + [[]]


@pytest.mark.parametrize("options, message", [
    ({"max_call": 2}, "Unknown option 'max_call' for feedback source 'tools'.*Did you mean 'max_calls'"),
    ({"tools": ["calculater"]}, "No tool named 'calculater' is registered. Did you mean 'calculator'?"),
    ({"tools": ["calculator"], "tool_options": {"python": {}}}, "tool_options names 'python', which is not among the tools in use"),
    ({"max_calls": 0}, "max_calls must be a whole number ≥ 1"),
    ({"tool_options": {"sympy": {"timeout_s": -1}}}, "tool 'sympy': sympy tool: timeout_s must be positive"),
    ({"max_calls": True}, r"max_calls must be a whole number ≥ 1 \(got True\)"),
    ({"max_chars": True}, r"max_chars must be a whole number ≥ 40 \(got True\)"),
    ({"tools": 5}, r"tools must be a list of tool names, e.g. \[calculator, sympy\] \(got 5\)"),
    ({"tools": ["calculator", 5]}, r"tools must be a list of tool names"),
    ({"tool_options": ["python"]}, r"tool_options must be a mapping from tool names to their options, .* \(got \['python'\]\)"),
    ({"tool_options": "python"}, r"tool_options must be a mapping from tool names to their options, .* \(got 'python'\)"),
    ({"tool_options": {"python": [1]}}, r"tool_options.python must be a mapping of option names to values \(got \[1\]\)"),
    ({"tool_options": {"pyhton": {"timeout_s": 5}}},
     "tool_options names 'pyhton', which is not among the tools in use. Did you mean 'python'\\? Valid: calculator, python, sympy."),
    ({"tool_options": {"python": {"timeout_s": float("nan")}}}, r"tool 'python': python tool: timeout_s must be positive and finite, in seconds \(got nan\)"),
    ({"tool_options": {"python": {"timeout_s": float("inf")}}}, r"python tool: timeout_s must be positive and finite"),
    ({"tool_options": {"sympy": {"timeout_s": float("nan")}}}, r"tool 'sympy': sympy tool: timeout_s must be positive and finite, in seconds \(got nan\)"),
    ({"tool_options": {"sympy": {"timeout_s": float("inf")}}}, r"sympy tool: timeout_s must be positive and finite"),
    ({"tool_options": {"sympy": {"timeout_s": True}}}, r"sympy tool: timeout_s must be positive and finite"),
])
def test_bad_options_are_config_errors(host, options, message):
    with pytest.raises(ConfigError, match=message):
        host.build("feedback_source", "tools", options)


def _distil():
    return [shutil.which("distil")] if shutil.which("distil") else [sys.executable, "-m", "distil_core.cli"]


def test_distil_tools_lists_the_tools_and_runs_one():
    env = {k: v for k, v in os.environ.items() if k not in ("DISTIL_NO_ENTRYPOINTS", "DISTIL_PLUGINS")}
    listed = subprocess.run(_distil() + ["tools", "--json"], env=env, capture_output=True, text=True, check=True).stdout
    tools = {t["name"]: t for t in json.loads(listed)["tools"]}
    assert {"calculator", "python", "sympy"} <= set(tools)
    assert tools["calculator"]["plugin"] == "distil_tools.builtin"
    ran = subprocess.run(_distil() + ["tools", "calculator", "2 ** 10"], env=env, capture_output=True, text=True)
    assert (ran.returncode, ran.stdout) == (0, "1024\n")
    refused = subprocess.run(_distil() + ["tools", "calculator", "__import__('os')"], env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "unknown function '__import__'" in refused.stdout
