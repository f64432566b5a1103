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
from distil_tools import ToolFeedback
from distil_tools.options import MAX_MEMORY_MB


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
    ({"max_calls": 0}, r"^tools feedback: option max_calls must be a whole number at least 1 \(got 0, an int\)$"),
    ({"tool_options": {"sympy": {"timeout_s": -1}}},
     r"^tools feedback: option tool_options.sympy.timeout_s must be a number of seconds above 0 and at most 86400 \(got -1"),
    ({"max_calls": True}, r"option max_calls must be a whole number at least 1 \(got True, a bool\)"),
    ({"max_chars": True}, r"option max_chars must be a whole number at least 40 \(got True, a bool\)"),
    ({"tools": 5}, r"option tools must be a non-empty list of tool names, e.g. \[calculator, sympy\] \(got 5\)"),
    ({"tools": ["calculator", 5]}, r"option tools must be a non-empty list of tool names"),
    ({"tools": []}, r"option tools must be a non-empty list of tool names.*leave it out to use every registered tool"),
    ({"tool_options": ["python"]}, r"tool_options must be a mapping from tool names to their options, .* \(got \['python'\]\)"),
    ({"tool_options": "python"}, r"tool_options must be a mapping from tool names to their options, .* \(got 'python'\)"),
    ({"tool_options": {"python": [1]}}, r"tool_options.python must be a mapping of option names to values \(got \[1\]\)"),
    ({"tool_options": {"pyhton": {"timeout_s": 5}}},
     "tool_options names 'pyhton', which is not among the tools in use. Did you mean 'python'\\? Valid: calculator, python, sympy."),
    ({"tool_options": {"python": {"timeout_s": float("nan")}}},
     r"option tool_options.python.timeout_s must be a number of seconds above 0 and at most 86400 \(got nan, a float\)"),
    ({"tool_options": {"python": {"timeout_s": float("inf")}}}, r"option tool_options.python.timeout_s must be a number of seconds"),
    ({"tool_options": {"python": {"timeout_s": 10**6}}}, r"option tool_options.python.timeout_s must be .* at most 86400"),
    ({"tool_options": {"sympy": {"timeout_s": float("nan")}}}, r"option tool_options.sympy.timeout_s must be a number of seconds"),
    ({"tool_options": {"sympy": {"timeout_s": float("inf")}}}, r"option tool_options.sympy.timeout_s must be a number of seconds"),
    ({"tool_options": {"sympy": {"timeout_s": True}}}, r"option tool_options.sympy.timeout_s must be a number of seconds"),
    ({"tool_options": {"sympy": {"timeout_s": "5"}}}, r"tool_options.sympy.timeout_s .* \(got '5', a str: write it without quotes\)"),
])
def test_bad_options_are_config_errors(host, options, message):
    with pytest.raises(ConfigError, match=message):
        host.build("feedback_source", "tools", options)


@pytest.mark.parametrize("options, message", [
    ({"only_failed": "false"}, r"option only_failed must be true or false \(got 'false', a str: write it without quotes\)"),
    ({"only_failed": 0.5}, r"option only_failed must be true or false \(got 0.5, a float\)"),
    ({"only_failed": None}, r"option only_failed must be true or false \(got None"),
    ({"max_chars": "600"}, r"option max_chars must be a whole number at least 40 \(got '600', a str: write it without quotes\)"),
    ({"tool_options": {"python": {"memory_mb": "256"}}},
     r"^tools feedback: option tool_options.python.memory_mb must be a whole number of MiB from 32 to 1048576 "
     r"\(got '256', a str: write it without quotes\)$"),
    ({"tool_options": {"python": {"memory_mb": 2**44}}}, r"option tool_options.python.memory_mb must be .* from 32 to 1048576"),
    ({"tool_options": {"python": {"memory_mb": 256.0}}}, r"option tool_options.python.memory_mb must be a whole number"),
    ({"tool_options": {"python": {"backend": ["bwrap"]}}}, r"option tool_options.python.backend must be one of auto, bwrap"),
    ({"tool_options": {"sympy": {"memory_mb": 10**15}}}, r"option tool_options.sympy.memory_mb must be .* from 128 to 1048576"),
    ({"tool_options": {"sympy": {"memory_mb": "x"}}}, r"option tool_options.sympy.memory_mb must be .* \(got 'x', a str\)$"),
    ({"tool_options": {"sympy": {"workers": "2"}}}, r"option tool_options.sympy.workers must be a whole number from 1 to 64"),
    ({"tool_options": {"sympy": {"workers": 10**9}}}, r"option tool_options.sympy.workers must be a whole number from 1 to 64"),
    ({"tool_options": {"sympy": {"isolate": "false"}}},
     r"option tool_options.sympy.isolate must be true or false \(got 'false', a str: write it without quotes\)"),
])
def test_every_option_is_checked_at_build_naming_it_where_the_config_sets_it(host, options, message):
    """A value YAML did not mean (a quoted number or boolean, a limit no sandbox can set) stops
    the run at build with the option's path and what it accepts, instead of counting ``"false"``
    as true or failing every call with an error the expert reads as feedback."""
    with pytest.raises(ConfigError, match=message):
        host.build("feedback_source", "tools", options)


def test_the_largest_memory_limits_accepted_still_run():
    """The ceiling of memory_mb is a limit the sandbox and the sympy worker can set."""
    source = ToolFeedback(tools=["python", "sympy"], tool_options={
        "python": {"memory_mb": MAX_MEMORY_MB, "timeout_s": 20}, "sympy": {"memory_mb": MAX_MEMORY_MB, "timeout_s": 30}})
    try:
        items = source.run_calls('<tool name="python">print(6 * 7)</tool><tool name="sympy">solve: x**2 = 4</tool>')
        assert [i.text for i in items] == ["Tool python(print(6 * 7)) → 42", "Tool sympy(solve: x**2 = 4) → x = -2 or x = 2"]
    finally:
        source.tools["sympy"].close()


def test_options_that_change_how_calls_run_share_one_tiny_base_and_the_others_do_not(host):
    """The tiny base is pretrained on the run's feedback: the deadline, the bound and the built-in
    tools' backend, limits and workers change how calls run, not that feedback, so they key the
    same base; the options that change the feedback's text key another."""
    from distil_core.config import load_config
    from distil_core.training.runtime import tiny_base_key

    def path(options):
        config = load_config(None, [f"feedback=[answer_check, {{name: tools, options: {options}}}]"])
        return tiny_base_key(config, host.build("task", config.task.name, config.task.options), host)[0]

    plain = path("{tools: [calculator, python, sympy]}")
    assert path("{tools: [calculator, python, sympy], call_timeout_s: 120, max_parallel: 4, tool_options: {"
                "python: {backend: process, timeout_s: 5, memory_mb: 512}, "
                "sympy: {timeout_s: 20, memory_mb: 2048, workers: 4, isolate: false}}}") == plain
    for changed in ("max_calls: 2", "max_chars: 100", "only_failed: false"):
        assert path(f"{{tools: [calculator, python, sympy], {changed}}}") != plain, changed
    assert path("{tools: [calculator]}") != plain


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
