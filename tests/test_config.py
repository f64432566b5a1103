"""Run configuration, checked against docs/guide.md ("Configuration": YAML → pydantic, ``--set a.b=c``
overrides, unknown keys are errors with suggestions) and the CLI's promise that a mistake the
user can fix prints as one paragraph, without a traceback, with exit code 2.
"""

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from distil_core.config import METHOD_SPLITS, RolloutConfig, RunConfig, load_config, saved_config
from distil_core.errors import ConfigError
from distil_core.plugin_host import PluginHost, check_options


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_distil(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "distil_core.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def assert_one_paragraph_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""


# -- the embedded default ----------------------------------------------------------------------


def test_no_config_file_gives_the_embedded_default():
    config = load_config(None)

    assert config.method == "distil"
    assert config.task.name == "digits"
    assert config.verifier.name == "exact_match"
    assert [c.name for c in config.feedback] == ["answer_check"]
    assert config.expert.name == "self"
    assert config.model.name == "tiny"
    assert config == RunConfig()


def test_an_empty_file_is_the_embedded_default(tmp_path):
    assert load_config(write(tmp_path, "")) == RunConfig()


def test_component_shorthand(tmp_path):
    config = load_config(write(tmp_path, "expert: hf\nfeedback: answer_check\n"))

    assert config.expert.name == "hf" and config.expert.options == {}
    assert [(c.name, c.options) for c in config.feedback] == [("answer_check", {})]


# -- unknown keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, suggestion",
    [
        ("rollout: {samples_per_problm: 4}\n", "rollout.samples_per_problm", "samples_per_problem"),
        ("methd: grpo\n", "methd", "method"),
        ("feedback: [{name: answer_check, optins: {}}]\n", "feedback[0].optins", "options"),
        ("feedback: [answer_check, {name: answer_check, nmae: x}]\n", "feedback[1].nmae", "name"),
        ("expert: {name: self, option: {weights: ema}}\n", "expert.option", "options"),
        ("loss: {beat: 0.3}\n", "loss.beat", "beta"),
    ],
    ids=["section", "top-level", "component-list", "second-component-in-list", "component", "loss"],
)
def test_unknown_key_names_its_path_and_the_nearest_valid_key(tmp_path, text, key, suggestion):
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as err:
        load_config(path)

    message = str(err.value)
    assert f"unknown key {key!r}" in message
    assert f"Did you mean {suggestion!r}?" in message
    assert path in message
    assert err.value.exit_code == 2


def test_unknown_key_in_an_override_is_reported_too():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.stpes'\. Did you mean 'steps'\?"):
        load_config(None, ["train.stpes=3"])


# -- overrides ---------------------------------------------------------------------------------


def test_overrides_are_parsed_as_yaml_values(tmp_path):
    path = write(tmp_path, "method: grpo\ntrain: {steps: 50, progress: false}\n")

    config = load_config(path, ["train.steps=7", "rollout.temperature=0.5", "eval.ks=[1, 2]", "train.progress=true"])

    assert config.train.steps == 7
    assert config.rollout.temperature == 0.5
    assert config.eval.ks == [1, 2]
    assert config.train.progress is True
    assert config.method == "grpo"  # what the file says and no override touches stays


def test_override_inside_a_default_section_keeps_its_other_keys():
    config = load_config(None, ["expert.options.weights=ema"])

    assert config.expert.name == "self"
    assert config.expert.options == {"weights": "ema"}


def test_override_inside_a_section_the_file_sets_does_not_bring_in_defaults(tmp_path):
    config = load_config(write(tmp_path, "expert: hf\n"), ["expert.options.path=/models/teacher"])

    assert config.expert.name == "hf"
    assert config.expert.options == {"path": "/models/teacher"}  # not the default expert's weights=
    check_options(PluginHost(load_entrypoints=False).get("expert", "hf"), config.expert.options)


@pytest.mark.parametrize("overrides, options", [
    (["expert.name=hf"], {}),
    (["expert.options.path=/models/teacher", "expert.name=hf"], {"path": "/models/teacher"}),
    (["expert.name=hf", "expert.options.path=/m"], {"path": "/m"}),
    (["expert.name=hf", "expert.options={k: 5}"], {"k": 5}),
    (["expert.name=self"], {"weights": "frozen"}),
    (['expert={"name": "hf", "options": {"k": 3}}'], {"k": 3}),
])
def test_set_that_changes_a_default_components_name_drops_the_default_components_options(overrides, options):
    """Before, `--set expert.name=hf` kept the self expert's `weights: frozen` and the run failed
    with "Unknown option 'weights' for expert 'hf'", an option the user never gave."""
    config = load_config(None, overrides)

    assert config.expert.options == options
    if config.expert.name == "hf":
        check_options(PluginHost(load_entrypoints=False).get("expert", "hf"), config.expert.options)


@pytest.mark.parametrize(
    "override, fragment",
    [("train.steps", "expected key=value"), ("=3", "empty key"), ("train.steps.x=3", "'steps' is not a section")],
)
def test_malformed_override(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


# -- bad values and bad files ------------------------------------------------------------------


def test_bad_value_names_the_key_and_the_valid_choices(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "method: dpo\n"))

    message = str(err.value)
    assert "method: must be one of" in message
    for choice in ("distil", "distil_local", "jsd", "reverse_kl", "grpo"):
        assert repr(choice) in message
    assert "(got 'dpo')" in message


def test_out_of_range_value(tmp_path):
    with pytest.raises(ConfigError, match=r"rollout\.samples_per_problem: .*greater than or equal to 1"):
        load_config(write(tmp_path, "rollout: {samples_per_problem: 0}\n"))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("- method: distil\n- method: grpo\n", "the top level must be a mapping of keys, not list"),
        ("just a sentence\n", "the top level must be a mapping of keys, not str"),
        ("train: {steps: [\n", "not valid YAML at line 2, column 1"),
        ("method: grpo\n\tseed: 1\n", "not valid YAML at line 2"),
    ],
    ids=["list", "scalar", "unclosed", "tab"],
)
def test_bad_file_contents(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))

    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(str(tmp_path))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="cannot be read as a UTF-8 text file"):
        load_config(str(binary))


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_config_typo_is_one_paragraph_with_exit_code_2(tmp_path):
    path = write(tmp_path, "rollout:\n  samples_per_problm: 4\n", name="bad.yaml")

    result = run_distil("train", path)

    assert_one_paragraph_error(result, "'rollout.samples_per_problm'", "Did you mean 'samples_per_problem'?")


def test_cli_override_typo_is_one_paragraph_with_exit_code_2():
    result = run_distil("train", "--set", "train.stpes=3")

    assert_one_paragraph_error(result, "'train.stpes'", "Did you mean 'steps'?")


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("method: dpo\n", ["method: must be one of", "'grpo'", "'dpo'"]),
        ("- a\n- b\n", ["must be a mapping"]),
        ("train: {steps: [\n", ["not valid YAML"]),
        (None, ["does not exist"]),
    ],
    ids=["bad-method", "not-a-mapping", "invalid-yaml", "missing-file"],
)
def test_cli_bad_config_files(tmp_path, text, fragments):
    path = write(tmp_path, text) if text is not None else str(tmp_path / "missing.yaml")

    result = run_distil("train", path, "--print-config")

    assert_one_paragraph_error(result, *fragments)


def test_cli_print_config_applies_typed_overrides(tmp_path):
    path = write(tmp_path, "method: jsd\nloss: {beta: 0.25}\n")

    result = run_distil(
        "train", path, "--set", "train.steps=7", "--set", "expert.options.weights=ema", "--print-config"
    )

    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["train"]["steps"] == 7
    assert printed["expert"] == {"name": "self", "options": {"weights": "ema"}}
    assert printed["method"] == "jsd" and printed["loss"]["beta"] == 0.25
    # What --print-config shows loads back as the same run.
    assert load_config(write(tmp_path, result.stdout, name="printed.yaml")) == load_config(
        path, ["train.steps=7", "expert.options.weights=ema"]
    )


def test_saved_config_reads_back_what_a_run_wrote_and_names_a_damaged_file(tmp_path):
    """One reader of a run's config.yaml for --resume and the bench's reuse check: nothing there
    is None, what the trainer wrote is the same config, and a file that exists but cannot be read
    is a ConfigError naming it, never a different config."""
    assert saved_config(str(tmp_path)) is None
    config = load_config(None, ["method=jsd", "loss.beta=0.25", "train.steps=7"])
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    assert saved_config(str(tmp_path)) == config
    for content in (b"# \xff\n", b"method: [", b"method: no_such_method\n"):
        (tmp_path / "config.yaml").write_bytes(content)
        with pytest.raises(ConfigError, match="config.yaml: the run's saved config cannot be read"):
            saved_config(str(tmp_path))


def test_an_invalid_value_given_by_set_names_the_set_beside_the_file(tmp_path):
    """Before: "tiny.yaml: invalid config. train.steps: ... (got None)", blaming the file for a
    value only --set gave."""
    path = tmp_path / "tiny.yaml"
    path.write_text("train: {steps: 3}\n")
    with pytest.raises(ConfigError, match=rf"^{path} \(and set: train\.steps\): invalid config\. train\.steps: "):
        load_config(str(path), ["train.steps="])
    with pytest.raises(ConfigError, match=r"^the default config \(and set: eval\.samples, train\.stepz\): unknown key"):
        load_config(None, ["eval.samples=4", "train.stepz=1"])


def split(config):
    return config.rollout.problems_per_step, config.rollout.samples_per_problem


@pytest.mark.parametrize("method", sorted(METHOD_SPLITS))
def test_a_config_that_sets_no_split_takes_its_methods_own(tmp_path, method):
    """The embedded default, a file whose rollout section names neither key, an override of
    another rollout key and a config built in Python all split a step as the method does."""
    expected = METHOD_SPLITS[method]
    assert split(load_config(None, [f"method={method}"])) == expected
    path = write(tmp_path, f"method: {method}\nrollout: {{max_new_tokens: 7}}\n")
    assert split(load_config(path)) == expected
    # an override starts the rollout section from the defaults: never from the default method's split
    assert split(load_config(None, [f"method={method}", "rollout.max_new_tokens=7"])) == expected
    assert split(RunConfig(method=method, rollout=RolloutConfig(max_new_tokens=7))) == expected
    assert split(RunConfig.model_validate({"method": method})) == expected


def test_the_embedded_default_spends_its_rollouts_on_many_problems():
    assert split(RunConfig()) == METHOD_SPLITS["distil"] == (64, 2)
    assert split(RunConfig(method="grpo")) == METHOD_SPLITS["grpo"] == (32, 4)


def test_a_filled_in_split_follows_the_method_when_its_section_is_reused():
    """The split a method fills in is a default, not a choice: the rollout section of a DistIL
    config handed to a GRPO config trains GRPO at its own 32 × 4, and an edited copy too."""
    distil = RunConfig()
    assert distil.rollout.model_fields_set == set()
    assert split(RunConfig(method="grpo", rollout=distil.rollout)) == METHOD_SPLITS["grpo"]
    edited = distil.rollout.model_copy(update={"max_new_tokens": 7})
    assert split(RunConfig(method="grpo", rollout=edited)) == METHOD_SPLITS["grpo"]
    # the section given is never changed in place, and one that names a key keeps it
    assert split(distil) == METHOD_SPLITS["distil"]
    chosen = RolloutConfig(samples_per_problem=3)
    assert split(RunConfig(method="grpo", rollout=chosen)) == (16, 3)
    assert chosen.model_fields_set == {"samples_per_problem"}
    # assigning to a validated config leaves its rollout section as it is, the same object
    section = distil.rollout
    distil.seed = 3
    assert distil.rollout is section and split(distil) == METHOD_SPLITS["distil"]
    # the section is validated once, in the caller's mode: strict still refuses text for a number
    with pytest.raises(ValidationError, match="rollout.max_new_tokens"):
        RunConfig.model_validate({"rollout": {"max_new_tokens": "3"}}, strict=True)


def test_a_config_that_sets_one_split_key_keeps_the_other_at_its_field_default(tmp_path):
    """Setting one key is a choice of the split: the other stays what it always was (16 problems,
    8 samples), whatever the method, so a config written before method splits trains as it did."""
    assert split(load_config(None, ["rollout.problems_per_step=4"])) == (4, 8)
    assert split(load_config(None, ["method=grpo", "rollout.samples_per_problem=2"])) == (16, 2)
    assert split(load_config(write(tmp_path, "rollout: {samples_per_problem: 4}\n"))) == (16, 4)
    assert split(RunConfig(rollout=RolloutConfig(problems_per_step=3))) == (3, 8)
    assert split(load_config(None, ["rollout.problems_per_step=16", "rollout.samples_per_problem=8"])) == (16, 8)


def test_a_saved_config_resumes_at_the_split_it_trained_with(tmp_path):
    """A run's config.yaml writes both keys out, so it reads back as it trained, whatever the
    method's split is now."""
    path = write(tmp_path, RunConfig(rollout=RolloutConfig(problems_per_step=16, samples_per_problem=8)).to_yaml())
    assert split(load_config(path, saved=True)) == (16, 8)
    assert split(load_config(write(tmp_path, RunConfig().to_yaml(), "b.yaml"), ["method=grpo"])) == (64, 2)


def test_a_method_that_is_not_a_name_is_a_config_error_not_a_crash():
    with pytest.raises(ConfigError, match="method"):
        load_config(None, ["method=[distil]"])
