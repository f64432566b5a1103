"""The example plugin's own tests, with distil-toolkit's pytest fixtures (docs/plugins.md)."""

import pytest
from distil_core import ConfigError
from distil_core.testing import problem, rollout, verdict

import distil_length


@pytest.fixture
def host(plugin_host):
    plugin_host.register_plugin(distil_length, "length")
    return plugin_host


def test_the_critic_speaks_on_failures_only(host):
    critic = host.build("feedback_source", "length_critic", {"min_gap": 1})
    [item] = critic.feedback(problem("01234"), rollout("0123"), verdict(False), [])
    assert item.text == "Your answer is 1 characters shorter than the correct one."
    assert critic.feedback(problem("01234"), rollout("01234"), verdict(True), []) == []


def test_a_misspelt_option_is_refused_with_the_fix(host):
    with pytest.raises(ConfigError, match="Did you mean 'min_gap'"):
        host.build("feedback_source", "length_critic", {"min_gpa": 2})


def test_the_function_expert_rewrites_by_name(host):
    expert = host.build("expert", "function", {"function": "distil_length:sort_digits"})
    assert distil_length.sort_digits("sort 31402\nFeedback: ...", "") == "01234"
    assert expert.capability.access == "text"
