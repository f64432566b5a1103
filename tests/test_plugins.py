"""The plugin host, checked against docs/plugins.md.

Third-party plugins here are real distributions: a module plus a ``*.dist-info`` directory
with an ``entry_points.txt``, put on ``sys.path`` exactly as pip would leave them, so the
host finds them through ``importlib.metadata`` like any installed plugin.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from distil_core.errors import ConfigError, PluginError
from distil_core.hookspecs import hookimpl
from distil_core.plugin_host import PluginHost, get_host
from distil_core.types import Problem, Rollout, Verdict

BUILTIN = "distil_core.builtin"

TOY_MODULE = '''
"""A third-party plugin as a distribution ships it: one module, hooks at top level."""
from distil_core.hookspecs import hookimpl
from distil_core.types import Feedback, Verdict


class ContainsVerifier:
    """Passes when the reference appears anywhere in the response."""

    def __init__(self, ignore_case: bool = False):
        self.ignore_case = ignore_case

    def verify(self, problem, rollout):
        text, reference = rollout.response_text, str(problem.reference)
        if self.ignore_case:
            text, reference = text.lower(), reference.lower()
        passed = reference in text
        return Verdict(score=float(passed), passed=passed)


class LengthFeedback:
    def feedback(self, problem, rollout, verdict, group=()):
        return [Feedback(source="toy_length", kind="critique",
                         text=f"Your response has {len(rollout.response_text)} characters.")]


@hookimpl
def register_verifiers(register):
    register("toy_contains", ContainsVerifier)


@hookimpl
def register_feedback_sources(register):
    register("toy_length", LengthFeedback, description="How long the response is.")
'''

BROKEN_MODULE = '''
raise ImportError("broken_distil_plugin needs the package 'frobnicate'")
'''

TYPO_MODULE = '''
from distil_core.hookspecs import hookimpl


@hookimpl
def register_verifers(register):
    register("typo_verifier", object)
'''

# entry-point name -> (distribution, version, module, source)
DISTRIBUTIONS = {
    "toy": ("toy-distil-plugin", "1.2.3", "toy_distil_plugin", TOY_MODULE),
    "broken": ("broken-distil-plugin", "0.1", "broken_distil_plugin", BROKEN_MODULE),
    "typo": ("typo-distil-plugin", "0.2", "typo_distil_plugin", TYPO_MODULE),
}


def write_distribution(root, entry_name, dist, version, module, source):
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[distil]\n{entry_name} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path holding three installed plugins: toy (good), broken, typo."""
    for entry_name, (dist, version, module, source) in DISTRIBUTIONS.items():
        write_distribution(tmp_path, entry_name, dist, version, module, source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for _, _, module, _ in DISTRIBUTIONS.values():
        sys.modules.pop(module, None)


def make_problem(reference="ABC"):
    return Problem(id="p0", prompt="say abc", reference=reference)


def make_rollout(text):
    return Rollout(problem_id="p0", group_index=0, response_text=text, response_ids=[1, 2, 3])


# -- built-ins ---------------------------------------------------------------------------------


def test_builtins_register_through_the_hooks():
    host = PluginHost(load_entrypoints=False)

    expected = {
        "task": ["column_add", "digits", "ring"],
        "verifier": ["exact_match"],
        "feedback_source": ["answer_check"],
        "expert": ["hf", "self"],
    }
    for kind, names in expected.items():
        assert host.names(kind) == names
        for name in names:
            assert host.get(kind, name).plugin == BUILTIN
    info = host.plugins[BUILTIN]
    assert info.error is None
    assert info.distribution == "distil-toolkit"
    assert sorted(info.registered) == sorted((k, n) for k, names in expected.items() for n in names)
    # The built-in module is an ordinary pluggy plugin: its hook implementations are what ran.
    impl_plugins = [impl.plugin_name for impl in host.pm.hook.register_verifiers.get_hookimpls()]
    assert impl_plugins == [BUILTIN]


def test_registration_description_defaults_to_the_factory_docstring():
    host = PluginHost(load_entrypoints=False)

    assert host.get("verifier", "exact_match").description.startswith("Passes when the extracted answer")
    assert host.get("expert", "self").description == "The policy itself, with feedback in its context."


# -- entry points ------------------------------------------------------------------------------


def test_entry_point_plugin_loads_from_an_installed_distribution(site):
    host = PluginHost(load_entrypoints=True)

    toy = host.plugins["toy"]
    assert toy.error is None
    assert (toy.distribution, toy.version) == ("toy-distil-plugin", "1.2.3")
    assert toy.registered == [("verifier", "toy_contains"), ("feedback_source", "toy_length")]
    assert host.get("verifier", "toy_contains").plugin == "toy"
    assert host.get("feedback_source", "toy_length").description == "How long the response is."
    assert toy.as_dict()["registered"] == {
        "verifier": ["toy_contains"],
        "feedback_source": ["toy_length"],
        "expert": [],
        "task": [],
        "command": [],
    }

    verifier = host.build("verifier", "toy_contains", {"ignore_case": True})
    verdict = verifier.verify(make_problem("ABC"), make_rollout("it is abc"))
    assert isinstance(verdict, Verdict) and verdict.passed and verdict.score == 1.0
    strict = host.build("verifier", "toy_contains")
    assert not strict.verify(make_problem("ABC"), make_rollout("it is abc")).passed

    source = host.build("feedback_source", "toy_length")
    (item,) = source.feedback(make_problem(), make_rollout("abcd"), verdict, [])
    assert item.text == "Your response has 4 characters."


def test_broken_plugins_are_reported_by_name_and_the_rest_still_load(site):
    host = PluginHost(load_entrypoints=True)

    errors = host.errors()
    assert set(errors) == {"broken", "typo"}
    assert "ImportError" in errors["broken"] and "frobnicate" in errors["broken"]
    assert "register_verifers" in errors["typo"]
    assert "Did you mean 'register_verifiers'?" in errors["typo"]
    # The misspelt plugin contributes nothing, not even through its other hooks.
    assert host.plugins["typo"].registered == []
    assert "typo_verifier" not in host.names("verifier")
    assert host.pm.get_plugin("typo") is None

    assert host.plugins["toy"].error is None
    assert "toy_contains" in host.names("verifier")
    assert host.get("verifier", "exact_match").plugin == BUILTIN


def test_unknown_component_name_mentions_plugins_that_failed_to_load(site):
    host = PluginHost(load_entrypoints=True)

    with pytest.raises(ConfigError, match="plugins that failed to load: broken, typo"):
        host.get("verifier", "frobnicate_verifier")


def test_allow_list_selects_entry_points(site, monkeypatch):
    monkeypatch.setenv("DISTIL_PLUGINS", "toy")
    assert set(PluginHost(load_entrypoints=True).plugins) == {BUILTIN, "toy"}

    monkeypatch.setenv("DISTIL_PLUGINS", " toy , broken ")
    assert set(PluginHost(load_entrypoints=True).plugins) == {BUILTIN, "toy", "broken"}

    monkeypatch.setenv("DISTIL_PLUGINS", "")
    host = PluginHost(load_entrypoints=True)
    assert set(host.plugins) == {BUILTIN}
    assert "exact_match" in host.names("verifier")

    monkeypatch.delenv("DISTIL_PLUGINS")
    # Unset: every installed entry point loads (the toolkit's own plugins may be installed too).
    assert set(PluginHost(load_entrypoints=True).plugins) >= {BUILTIN, "toy", "broken", "typo"}


def test_allow_argument_overrides_the_environment(site, monkeypatch):
    monkeypatch.setenv("DISTIL_PLUGINS", "")

    assert set(PluginHost(load_entrypoints=True, allow=["typo"]).plugins) == {BUILTIN, "typo"}


def test_no_entrypoints_env_keeps_only_the_builtins(site, monkeypatch):
    monkeypatch.setenv("DISTIL_NO_ENTRYPOINTS", "1")
    assert set(PluginHost().plugins) == {BUILTIN}
    assert set(get_host().plugins) == {BUILTIN}

    monkeypatch.delenv("DISTIL_NO_ENTRYPOINTS")
    assert "toy" in PluginHost().plugins
    # An explicit argument wins over the environment either way.
    monkeypatch.setenv("DISTIL_NO_ENTRYPOINTS", "1")
    assert "toy" in PluginHost(load_entrypoints=True).plugins


# -- in-process plugins ------------------------------------------------------------------------


class ShoutVerifier:
    """Passes when the response is all upper case."""

    def __init__(self, runtime=None, min_length: int = 1):
        self.runtime, self.min_length = runtime, min_length

    def verify(self, problem, rollout):
        text = rollout.response_text
        passed = len(text) >= self.min_length and text.isupper()
        return Verdict(score=float(passed), passed=passed)


class ShoutPlugin:
    __name__ = "shout"

    @hookimpl
    def register_verifiers(self, register):
        register("shout", ShoutVerifier)


@pytest.fixture
def shout_plugin():
    """Registers ShoutPlugin on the process-wide host for one test, whatever the test does."""
    host = get_host()
    host.register_plugin(ShoutPlugin(), "shout", version="0.0.1")
    try:
        yield host
    finally:
        host.unregister_plugin("shout")


def test_register_plugin_in_process(shout_plugin):
    host = shout_plugin

    assert host.plugins["shout"].registered == [("verifier", "shout")]
    assert host.plugins["shout"].version == "0.0.1"
    assert host.get("verifier", "shout").plugin == "shout"
    runtime = object()
    verifier = host.build("verifier", "shout", {"min_length": 3}, runtime=runtime)
    assert verifier.runtime is runtime and verifier.min_length == 3
    assert verifier.verify(make_problem(), make_rollout("ABC")).passed
    assert not verifier.verify(make_problem(), make_rollout("AB")).passed


def test_unregister_plugin_removes_everything_it_registered():
    host = PluginHost(load_entrypoints=False)
    host.register_plugin(ShoutPlugin(), "shout")

    host.unregister_plugin("shout")

    assert "shout" not in host.plugins
    assert "shout" not in host.names("verifier")
    assert host.pm.get_plugin("shout") is None
    assert host.plugins[BUILTIN].registered  # the built-ins are untouched
    host.register_plugin(ShoutPlugin(), "shout")  # and the name is free again
    assert "shout" in host.names("verifier")


def test_register_plugin_refuses_a_name_already_in_use(shout_plugin):
    with pytest.raises(PluginError, match="a plugin named 'shout' is already registered"):
        shout_plugin.register_plugin(ShoutPlugin(), "shout")

    assert shout_plugin.plugins["shout"].error is None
    assert shout_plugin.plugins["shout"].registered == [("verifier", "shout")]


def test_register_plugin_rejects_misspelt_hooks():
    class Misspelt:
        @hookimpl
        def register_feedback_source(self, register):
            register("never", object)

    host = PluginHost(load_entrypoints=False)
    with pytest.raises(PluginError, match="Did you mean 'register_feedback_sources'"):
        host.register_plugin(Misspelt(), "misspelt")

    assert "misspelt" not in host.plugins
    assert "never" not in host.names("feedback_source")


# -- duplicate names ---------------------------------------------------------------------------


class GreedyPlugin:
    """Registers a name of its own, then one the built-ins already use."""

    @hookimpl
    def register_verifiers(self, register):
        register("greedy", ShoutVerifier)
        register("exact_match", ShoutVerifier)


def test_duplicate_name_is_rejected_naming_the_first_plugin():
    host = PluginHost(load_entrypoints=False)
    builtin_factory = host.get("verifier", "exact_match").factory

    with pytest.raises(PluginError, match="verifier 'exact_match' is already registered by plugin 'distil_core.builtin'"):
        host.register_plugin(GreedyPlugin(), "greedy")

    reg = host.get("verifier", "exact_match")
    assert reg.plugin == BUILTIN and reg.factory is builtin_factory
    # A plugin that failed leaves nothing half-registered behind.
    assert "greedy" not in host.plugins
    assert "greedy" not in host.names("verifier")


def test_duplicate_between_two_third_party_plugins():
    class First:
        @hookimpl
        def register_experts(self, register):
            register("oracle", ShoutVerifier)

    class Second:
        @hookimpl
        def register_experts(self, register):
            register("oracle", ShoutVerifier)

    host = PluginHost(load_entrypoints=False)
    host.register_plugin(First(), "first")
    with pytest.raises(PluginError, match="expert 'oracle' is already registered by plugin 'first'"):
        host.register_plugin(Second(), "second")
    assert host.get("expert", "oracle").plugin == "first"


# -- building components -----------------------------------------------------------------------


def test_build_passes_options_to_the_factory():
    host = PluginHost(load_entrypoints=False)

    quiet = host.build("feedback_source", "answer_check", {"include_expected": False})

    assert quiet.include_expected is False
    problem, rollout = make_problem("42"), make_rollout("41")
    verdict = host.build("verifier", "exact_match").verify(problem, rollout)
    (item,) = quiet.feedback(problem, rollout, verdict, [])
    assert "42" not in item.text


def test_build_rejects_an_unknown_option_with_a_suggestion():
    host = PluginHost(load_entrypoints=False)

    with pytest.raises(ConfigError) as err:
        host.build("feedback_source", "answer_check", {"include_expectd": False})

    message = str(err.value)
    assert "'include_expectd'" in message
    assert "Did you mean 'include_expected'?" in message
    assert "distil_core.builtin" in message
    assert err.value.exit_code == 2


def test_build_rejects_an_unknown_name_with_a_suggestion():
    host = PluginHost(load_entrypoints=False)

    with pytest.raises(ConfigError) as err:
        host.build("verifier", "exact_mach")

    message = str(err.value)
    assert "No verifier named 'exact_mach'" in message
    assert "Did you mean 'exact_match'?" in message
    assert "distil plugins" in message


# -- the `distil plugins` command --------------------------------------------------------------


def run_distil_plugins(site_dir, *args):
    env = {k: v for k, v in os.environ.items() if k != "DISTIL_NO_ENTRYPOINTS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site_dir), env.get("PYTHONPATH")]))
    # Only the plugins written for this test, whatever else is installed here.
    env["DISTIL_PLUGINS"] = ",".join(DISTRIBUTIONS)
    return subprocess.run(
        [sys.executable, "-m", "distil_core.cli", "plugins", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )


def test_distil_plugins_lists_versions_and_registrations(site):
    result = run_distil_plugins(site)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {BUILTIN, "toy", "broken", "typo"}
    assert rows["toy"].split()[1] == "1.2.3"
    assert "verifiers: toy_contains" in rows["toy"]
    assert "feedback sources: toy_length" in rows["toy"]
    assert "exact_match" in rows[BUILTIN] and "answer_check" in rows[BUILTIN]
    assert "FAILED" in rows["broken"] and "ImportError" in rows["broken"]
    assert "FAILED" in rows["typo"] and "register_verifiers" in rows["typo"]


def test_distil_plugins_json(site):
    result = run_distil_plugins(site, "--json")

    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert set(plugins) == {BUILTIN, "toy", "broken", "typo"}
    assert plugins["toy"] == {
        "name": "toy",
        "distribution": "toy-distil-plugin",
        "version": "1.2.3",
        "registered": {"verifier": ["toy_contains"], "feedback_source": ["toy_length"], "expert": [], "task": [], "command": []},
    }
    assert plugins[BUILTIN]["registered"]["expert"] == ["self", "hf"]
    assert "ImportError" in plugins["broken"]["error"]
    assert "register_verifiers" in plugins["typo"]["error"]
    assert "error" not in plugins["toy"]


class _GreetCommand:
    """Say hello to a run."""

    @staticmethod
    def configure(parser):
        parser.add_argument("who")
        parser.add_argument("--loud", action="store_true")

    @staticmethod
    def run(args):
        text = f"hello {args.who}"
        print(text.upper() if args.loud else text)
        return 3


class _CommandPlugin:
    @hookimpl
    def register_commands(register):
        register("greet", _GreetCommand)


class _TrainCommandPlugin:
    @hookimpl
    def register_commands(register):
        register("train", _GreetCommand)


def test_plugin_commands_become_distil_subcommands(capsys):
    from distil_core.cli.main import main

    host = get_host()
    host.register_plugin(_CommandPlugin, "greeter")
    try:
        assert main(["greet", "world", "--loud"]) == 3
        assert capsys.readouterr().out == "HELLO WORLD\n"
        with pytest.raises(SystemExit):
            main(["--help"])
        assert "[plugin greeter]" in capsys.readouterr().out
        with pytest.raises(PluginError, match="cannot register command 'train': it is built in"):
            host.register_plugin(_TrainCommandPlugin, "usurper")
    finally:
        host.unregister_plugin("greeter")
    with pytest.raises(SystemExit):
        main(["greet", "world"])  # gone with its plugin
