"""The plugin host, checked against docs/plugins.md.

Third-party plugins here are real distributions: a module plus a ``*.dist-info`` directory
with an ``entry_points.txt``, put on ``sys.path`` exactly as pip would leave them, so the
host finds them through ``importlib.metadata`` like any installed plugin.
"""

import json
import os
import random
import subprocess
import sys
import textwrap
import types

import pluggy
import pytest

from distil_core import ConfigError, PluginError, PluginHost, Problem, Registry, Rollout, Verdict, get_host, hookimpl

BUILTIN = "distil_core.builtin"
EXPERTS = "distil_core.models.experts"  # the built-in experts: a second default plugin
TRACKERS = "distil_core.tracking.plugin"  # the built-in experiment trackers: a third
BUILTINS = {BUILTIN, EXPERTS, TRACKERS}

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
        "task": ["column_add", "digits", "ring", "two_ways"],
        "verifier": ["exact_match", "two_ways"],
        "feedback_source": ["answer_check"],
        "expert": ["hf", "self"],
    }
    for kind, names in expected.items():
        assert host.names(kind) == names
        for name in names:
            assert host.get(kind, name).plugin == (EXPERTS if kind == "expert" else BUILTIN)
    assert set(host.plugins) == BUILTINS
    for name in BUILTINS:
        assert host.plugins[name].error is None
        assert host.plugins[name].distribution == "distil-toolkit"
    registered = host.plugins[BUILTIN].registered + host.plugins[EXPERTS].registered
    assert sorted(registered) == sorted((k, n) for k, names in expected.items() for n in names)
    # The built-in module is an ordinary pluggy plugin: its hook implementations are what ran.
    impl_plugins = [impl.plugin_name for impl in host.pm.hook.register_verifiers.get_hookimpls()]
    assert impl_plugins == [BUILTIN]


def test_registration_description_defaults_to_the_factory_docstring():
    host = PluginHost(load_entrypoints=False)

    assert host.get("verifier", "exact_match").description.startswith("Passes when the extracted answer")
    assert host.get("expert", "self").description == "The policy itself, with feedback in its context."


# -- entry points ------------------------------------------------------------------------------


def test_entry_point_plugin_loads_from_an_installed_distribution(site):
    host = PluginHost(load_entrypoints=True, allow=list(DISTRIBUTIONS))

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
        "logger": [],
        "command": [],
    }

    verifier = host.build("verifier", "toy_contains", {"ignore_case": True})
    verdict = verifier.verify(make_problem("ABC"), make_rollout("it is abc"))
    assert isinstance(verdict, Verdict) and verdict.passed and verdict.score == 1.0
    strict = host.build("verifier", "toy_contains")
    assert not strict.verify(make_problem("ABC"), make_rollout("it is abc")).passed
    with pytest.raises(ConfigError, match=r"Unknown option 'ignorecase' for verifier 'toy_contains' \(from plugin "
                       r"'toy'\)\. Did you mean 'ignore_case'\? Valid: ignore_case\. `distil plugins toy_contains` "
                       r"lists them with their defaults\."):
        host.build("verifier", "toy_contains", {"ignorecase": True})

    source = host.build("feedback_source", "toy_length")
    (item,) = source.feedback(make_problem(), make_rollout("abcd"), verdict, [])
    assert item.text == "Your response has 4 characters."


def test_broken_plugins_are_reported_by_name_and_the_rest_still_load(site):
    host = PluginHost(load_entrypoints=True, allow=list(DISTRIBUTIONS))

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
    host = PluginHost(load_entrypoints=True, allow=list(DISTRIBUTIONS))

    with pytest.raises(ConfigError, match="plugins that failed to load: broken, typo"):
        host.get("verifier", "frobnicate_verifier")


def test_allow_list_selects_entry_points(site, monkeypatch):
    monkeypatch.setenv("DISTIL_PLUGINS", "toy")
    assert set(PluginHost(load_entrypoints=True).plugins) == BUILTINS | {"toy"}

    monkeypatch.setenv("DISTIL_PLUGINS", " toy , broken ")
    assert set(PluginHost(load_entrypoints=True).plugins) == BUILTINS | {"toy", "broken"}

    monkeypatch.setenv("DISTIL_PLUGINS", "")
    host = PluginHost(load_entrypoints=True)
    assert set(host.plugins) == BUILTINS
    assert "exact_match" in host.names("verifier")

    monkeypatch.delenv("DISTIL_PLUGINS")
    # Unset: every installed entry point loads (the toolkit's own plugins may be installed too).
    assert set(PluginHost(load_entrypoints=True).plugins) >= BUILTINS | {"toy", "broken", "typo"}


def test_allow_argument_overrides_the_environment(site, monkeypatch):
    monkeypatch.setenv("DISTIL_PLUGINS", "")

    assert set(PluginHost(load_entrypoints=True, allow=["typo"]).plugins) == BUILTINS | {"typo"}


def test_no_entrypoints_env_keeps_only_the_builtins(site, monkeypatch):
    monkeypatch.setenv("DISTIL_NO_ENTRYPOINTS", "1")
    assert set(PluginHost().plugins) == BUILTINS
    assert set(get_host().plugins) == BUILTINS

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
    assert set(rows) == BUILTINS | {"toy", "broken", "typo"}
    assert rows["toy"].split()[1] == "1.2.3"
    assert "verifiers: toy_contains" in rows["toy"]
    assert "feedback sources: toy_length" in rows["toy"]
    assert "exact_match" in rows[BUILTIN] and "answer_check" in rows[BUILTIN]
    assert "FAILED" in rows["broken"] and "ImportError" in rows["broken"]
    assert "FAILED" in rows["typo"] and "register_verifiers" in rows["typo"]


def test_distil_plugins_names_each_components_options_with_their_defaults(site):
    """`distil plugins NAME...` reads the options off the factories, the toy plugin's and the core's."""
    result = run_distil_plugins(site, "toy_contains", "toy_length", "digits")

    assert result.returncode == 0, result.stderr
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in result.stdout.strip().split("\n\n")}
    assert blocks == {
        "verifier toy_contains  (plugin toy; set in verifier)": [
            "  Passes when the reference appears anywhere in the response.", "    ignore_case: false"],
        "feedback source toy_length  (plugin toy; set in feedback)": [
            "  How long the response is.", "    (no options)"],
        f"task digits  (plugin {BUILTIN}; set in task)": [
            "  Procedural digit puzzles with a fixed held-out split.", "    op: sort", "    length: 5",
            "    train_size: 5000", "    test_size: 200", "    seed: 0"],
    }


def test_distil_plugins_options_json_covers_every_configurable_component(site):
    result = run_distil_plugins(site, "--options", "--json")

    assert result.returncode == 0, result.stderr
    components = {(c["kind"], c["name"]): c for c in json.loads(result.stdout)}
    assert components[("verifier", "toy_contains")]["options"] == [{"name": "ignore_case", "default": False}]
    assert components[("expert", "hf")]["options"][0] == {"name": "path", "required": True}
    assert "runtime" not in {o["name"] for c in components.values() for o in c["options"] or []}
    assert all(o["name"] != "run_dir" for o in components[("logger", "wandb")]["options"])  # the run gives it
    assert components[("logger", "wandb")]["section"] == "train.tracker_options"
    assert not [name for kind, name in components if kind == "command"]  # run, not configured


def test_distil_plugins_names_a_misspelt_component(site):
    result = run_distil_plugins(site, "toy_contain")

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "No configurable component is named 'toy_contain'. Did you mean 'toy_contains'?" in result.stderr


def test_distil_plugins_json(site):
    result = run_distil_plugins(site, "--json")

    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert set(plugins) == BUILTINS | {"toy", "broken", "typo"}
    assert plugins["toy"] == {
        "name": "toy",
        "distribution": "toy-distil-plugin",
        "version": "1.2.3",
        "registered": {"verifier": ["toy_contains"], "feedback_source": ["toy_length"], "expert": [], "task": [], "logger": [], "command": []},
    }
    assert plugins[EXPERTS]["registered"]["expert"] == ["self", "hf"]
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
    finally:
        host.unregister_plugin("greeter")
    with pytest.raises(SystemExit):
        main(["greet", "world"])  # gone with its plugin


# -- the core version a plugin asks for --------------------------------------------------------


FUTURE_MODULE = '''
raise RuntimeError("imported although it asks for another distil-toolkit")
'''


@pytest.fixture
def future_site(tmp_path, monkeypatch):
    """Two installed plugins: one made for a later distil-toolkit, one for this one."""
    write_distribution(tmp_path, "future", "future-distil-plugin", "2.0", "future_distil_plugin", FUTURE_MODULE)
    write_distribution(tmp_path, "toy", "toy-distil-plugin", "1.2.3", "toy_distil_plugin", TOY_MODULE)
    for dist, version, requirement in (("future_distil_plugin", "2.0", "distil-toolkit>=0.2,<0.3"),
                                       ("toy_distil_plugin", "1.2.3", "distil-toolkit>=0.1,<0.2")):
        metadata_file = tmp_path / f"{dist}-{version}.dist-info" / "METADATA"
        metadata_file.write_text(metadata_file.read_text() + f"Requires-Dist: {requirement}\n"
                                 'Requires-Dist: distil-toolkit>=9; extra == "test"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("future_distil_plugin", "toy_distil_plugin"):
        sys.modules.pop(module, None)


def test_a_plugin_for_another_core_version_is_refused_by_name(future_site):
    host = PluginHost(load_entrypoints=True, allow=["future", "toy"])

    error = host.errors()["future"]
    assert error.startswith("requires distil-toolkit<0.3,>=0.2 but distil-toolkit 0.1.0 is running")
    assert "future-distil-plugin" in error
    assert host.plugins["future"].registered == []
    assert "future_distil_plugin" not in sys.modules  # refused before its code runs
    # A compatible range loads; a requirement under an extra is not the plugin's to run with.
    assert host.plugins["toy"].error is None and "toy_contains" in host.names("verifier")


def test_distil_plugins_reports_the_version_mismatch(future_site):
    env = {k: v for k, v in os.environ.items() if k != "DISTIL_NO_ENTRYPOINTS"}
    env.update(PYTHONPATH=str(future_site), DISTIL_PLUGINS="future,toy")
    result = subprocess.run([sys.executable, "-m", "distil_core.cli", "plugins"], env=env,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 0 and "Traceback" not in result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert "FAILED: requires distil-toolkit<0.3,>=0.2" in rows["future"]
    assert "verifiers: toy_contains" in rows["toy"]


# -- the contract ------------------------------------------------------------------------------


def test_the_package_root_is_the_whole_contract_and_imports_no_torch():
    code = ("import sys, distil_core; from distil_core import *; get_host().names('expert'); "
            "import distil_core.models, distil_core.testing; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

    import distil_core
    import distil_core.models

    for name in distil_core.__all__:
        assert getattr(distil_core, name) is not None
    assert distil_core.models.pad_batch.__module__ == "distil_core.models.padding"


def test_optional_methods_are_protocols_the_builtin_experts_satisfy():
    import distil_core
    from distil_core.models.experts import SelfExpert
    from distil_core.training.runtime import Runtime

    expert = SelfExpert.__new__(SelfExpert)  # the methods are what is checked, not a loaded model
    expert.access, expert.k = "dense", None
    for protocol in ("Expert", "HiddenStateExpert", "CapabilityExpert", "UpdatingExpert", "StatefulExpert"):
        assert isinstance(expert, getattr(distil_core, protocol)), protocol
    assert expert.capability.access == "dense"

    class Plain:
        def score(self, queries):
            return []

    # `capability` is optional: an expert with `score` alone is an Expert.
    assert isinstance(Plain(), distil_core.Expert) and not isinstance(Plain(), distil_core.CapabilityExpert)
    tokenizer = types.SimpleNamespace(pad_token_id=None, eos_token_id=7)
    runtime = Runtime(config=None, model=None, tokenizer=tokenizer, device=None, host=PluginHost(load_entrypoints=False))
    assert isinstance(runtime, distil_core.Runtime) and runtime.pad_id == 7  # the trainer's class has every member


def test_the_optional_task_methods_the_tiny_base_calls_are_protocols():
    import distil_core
    from distil_core.builtin import DigitsTask, RingTask

    ring, digits = RingTask(train_size=4, test_size=1), DigitsTask()
    assert isinstance(ring, distil_core.WrongAnswerTask) and not isinstance(digits, distil_core.WrongAnswerTask)
    assert isinstance(digits, distil_core.Task) and not isinstance(digits, distil_core.AnswerTextTask)
    problem = ring.problems("train")[0]
    assert ring.wrong_answer(problem, random.Random(0)) != problem.reference


# -- a registry of another project's hooks -----------------------------------------------------


class GadgetSpecs:
    """A plugin's own extension point, declared on a class (the tools plugin declares
    ``register_tools`` in a module)."""

    @staticmethod
    @pluggy.HookspecMarker("gadgets")
    def register_gadgets(register):
        """Register gadget factories."""


gadget_impl = pluggy.HookimplMarker("gadgets")


class Gadgets:
    """Registers through both projects: the core ignores the gadget hook and vice versa."""

    @gadget_impl
    def register_gadgets(register):
        register("spring", lambda coils=3: ("spring", coils), description="A spring.")

    @hookimpl
    def register_verifiers(register):
        register("gadget_verifier", ShoutVerifier)


def test_a_registry_for_a_plugins_own_hook_kind():
    gadgets = Registry("gadgets", GadgetSpecs, {"gadget": "register_gadgets"}, group="distil.gadgets",
                       load_entrypoints=False)
    gadgets.register_plugin(Gadgets, "gadgets")
    assert gadgets.names("gadget") == ["spring"]
    assert gadgets.get("gadget", "spring").options == ["coils"]
    assert gadgets.build("gadget", "spring", {"coils": 5}) == ("spring", 5)
    with pytest.raises(ConfigError, match="Unknown option 'coil' for gadget 'spring'.*Did you mean 'coils'") \
            as refused:
        gadgets.build("gadget", "spring", {"coil": 1})
    assert "distil plugins" not in str(refused.value)  # it lists the core's components, not a plugin's own kinds
    with pytest.raises(PluginError, match="gadget 'spring' is already registered by plugin 'gadgets'"):
        gadgets.register_plugin(type("MoreGadgets", (Gadgets,), {}), "again")

    host = PluginHost(load_entrypoints=False)
    host.register_plugin(Gadgets, "gadgets")
    assert host.plugins["gadgets"].registered == [("verifier", "gadget_verifier")]


# -- distil_core.testing, the pytest plugin ------------------------------------------------------

PROJECT_TEST = '''
import os
import distil_core


def test_fixtures(plugin_host, tiny_base_cache):
    assert distil_core.get_host() is plugin_host and "exact_match" in plugin_host.names("verifier")
    assert os.environ["DISTIL_CACHE"] == tiny_base_cache and os.path.isdir(tiny_base_cache)


def test_environment():
    print("ENV", {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "DISTIL_NO_ENTRYPOINTS", "DISTIL_PLUGINS")})
    print("CACHE", os.environ.get("DISTIL_CACHE"))
'''


def run_project(tmp_path, ini):
    """pytest in a project of its own, from a shell where none of the isolation is set."""
    (tmp_path / "test_project.py").write_text(PROJECT_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\n" + ini)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "DISTIL_NO_ENTRYPOINTS", "DISTIL_CACHE")}
    env["DISTIL_PLUGINS"] = "toy"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_pytest_plugin_changes_nothing_for_a_project_that_does_not_ask(tmp_path):
    out = run_project(tmp_path, "")
    assert "ENV {'HF_HUB_OFFLINE': None, 'DISTIL_NO_ENTRYPOINTS': None, 'DISTIL_PLUGINS': 'toy'}" in out
    assert "CACHE None" in out  # the fixture's cache is gone once the test that asked for it ends


def test_an_isolated_project_runs_offline_with_one_shared_cache(tmp_path):
    out = run_project(tmp_path, "distil_isolate = true\n")
    assert "ENV {'HF_HUB_OFFLINE': '1', 'DISTIL_NO_ENTRYPOINTS': '1', 'DISTIL_PLUGINS': None}" in out
    assert "CACHE " + str(tmp_path) not in out and "distil-cache" in out.split("CACHE ")[1]


def test_distil_env_makes_a_subprocess_load_exactly_the_named_entry_points():
    from distil_core.testing import distil_env

    def listed(env):
        out = subprocess.run([sys.executable, "-m", "distil_core", "plugins", "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return {p["name"] for p in json.loads(out.stdout)}

    assert listed(distil_env(["tools"])) == BUILTINS | {"tools"}
    assert listed(distil_env([])) == BUILTINS
    env = distil_env(["tools", "human"], DISTIL_CACHE="/elsewhere")
    assert env["DISTIL_PLUGINS"] == "tools,human" and env["DISTIL_CACHE"] == "/elsewhere"
    assert "DISTIL_NO_ENTRYPOINTS" not in env


def host_with_one(tmp_path, monkeypatch, name, source):
    """A host that loads the one installed plugin ``name`` (module ``<name>_distil_plugin``)."""
    module = f"{name}_distil_plugin"
    write_distribution(tmp_path, name, f"{name}-distil-plugin", "0.1", module, source)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        return PluginHost(load_entrypoints=True, allow=[name])
    finally:
        sys.modules.pop(module, None)


def test_a_plugin_that_exits_while_imported_is_a_broken_plugin_not_the_end_of_the_command(tmp_path, monkeypatch):
    """Before, a plugin that called sys.exit() at import ("needs a GPU") ended every `distil`
    command, `distil plugins` too, with its own words and no name: SystemExit is no Exception."""
    host = host_with_one(tmp_path, monkeypatch, "exiter", 'import sys\nsys.exit("exiter: needs a GPU")\n')
    assert host.errors()["exiter"] == "failed to import 'exiter_distil_plugin': SystemExit: exiter: needs a GPU"
    assert host.get("verifier", "exact_match").plugin == BUILTIN


def test_a_plugin_whose_hook_fails_halfway_contributes_nothing(tmp_path, monkeypatch):
    """Before, an installed plugin whose hook raised after registering a component kept it: the
    plugin was listed as failed, and its half-registered verifier stayed usable by name."""
    host = host_with_one(tmp_path, monkeypatch, "partial", """
from distil_core.hookspecs import hookimpl


@hookimpl
def register_verifiers(register):
    register("half_registered", object)
    raise RuntimeError("the second verifier needs a GPU")
""")
    assert host.errors()["partial"] == "register_verifiers raised RuntimeError: the second verifier needs a GPU"
    assert "half_registered" not in host.names("verifier") and host.plugins["partial"].registered == []
    assert host.pm.get_plugin("partial") is None


def test_an_allow_list_name_no_plugin_has_is_said_where_a_component_is_missing(site, monkeypatch):
    """Before, DISTIL_PLUGINS=toyy loaded nothing without a word, and the missing component's error
    gave no hint that the allow-list was misspelt."""
    monkeypatch.setenv("DISTIL_PLUGINS", "toyy")
    host = PluginHost(load_entrypoints=True)
    with pytest.raises(ConfigError) as caught:
        host.get("verifier", "toy_contains")
    assert "the allow-list (DISTIL_PLUGINS) names 'toyy', which no installed plugin is called (did you mean 'toy'?)" \
        in str(caught.value)
