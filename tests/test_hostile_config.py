"""Hostile configs: numbers that are not numbers, sizes that cannot be allocated, YAML that
expands without end. Each is refused before any work starts, in one short line naming the key."""

import subprocess
import sys
import time

import pytest

from distil_core.config import load_config, read_yaml
from distil_core.config.yaml_text import ALIAS_BUDGET, SHOWN
from distil_core.errors import ConfigError


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def refused(*overrides, path=None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, list(overrides))
    message = str(err.value)
    assert "\n" not in message and len(message) < 4 * SHOWN, message[:1000]
    return message


@pytest.mark.parametrize("override, key", [
    ("optim.lr=.inf", "optim.lr is inf"),
    ("optim.lr=-.inf", "optim.lr is -inf"),
    ("optim.weight_decay=.nan", "optim.weight_decay is nan"),
    ("optim.betas=[.nan, 0.99]", "optim.betas[0] is nan"),
    ("loss.gamma=.nan", "loss.gamma is nan"),
    ("loss.eps_high=.inf", "loss.eps_high is inf"),  # no bound of its own: only finiteness stops it
    ("model.tiny.lr=1.0e+999", "model.tiny.lr is inf"),
    ("model.tiny.lr='1e999'", "model.tiny.lr: Input should be a finite number"),  # a string pydantic reads as inf
    ("train.max_expert_failed_fraction=.nan", "train.max_expert_failed_fraction is nan"),
    ("expert.options.temperature=.nan", "expert.options.temperature is nan"),  # plugin options too
    ("task.options={weights: [1.0, .inf]}", "task.options.weights[1] is inf"),
])
def test_non_finite_numbers_are_refused_naming_the_key(override, key):
    assert key in refused(override)


def test_non_finite_numbers_in_a_file_name_the_file_and_key(tmp_path):
    path = write(tmp_path, "optim:\n  lr: .inf\n")
    message = refused(path=path)
    assert message.startswith(path) and "optim.lr is inf" in message and "finite" in message


@pytest.mark.parametrize("override, fragment", [
    ("model.tiny.hidden_size=0", "model.tiny.hidden_size: Input should be greater than or equal to 1"),
    ("model.tiny.heads=0", "model.tiny.heads: Input should be greater than or equal to 1"),
    ("model.tiny.hidden_size=130", "model.tiny.hidden_size (130) must be a multiple of model.tiny.heads (4)"),
    ("model.tiny.vocab_size=10000000000", "model.tiny.vocab_size: Input should be less than or equal to"),
    ("rollout.samples_per_problem=100000000", "rollout.samples_per_problem: Input should be less than or equal to 65536"),
    ("rollout.max_new_tokens=100000000000", "rollout.max_new_tokens: Input should be less than or equal to"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens: Input should be greater than or equal to 1"),
    ("train.steps=10000000000000", "train.steps: Input should be less than or equal to 1000000000"),
    ("optim.grad_accum=1000000000", "optim.grad_accum: Input should be less than or equal to 65536"),
])
def test_sizes_are_positive_and_bounded_naming_the_key(override, fragment):
    assert fragment in refused(override)


@pytest.mark.parametrize("override, fragment", [
    ("seed=18446744073709551616", "seed: Input should be less than or equal to 9223372036854775807"),
    ("seed=-9223372036854775809", "seed: Input should be greater than or equal to -9223372036854775808"),
    ("model.tiny.seed=9223372036854775808", "model.tiny.seed: Input should be less than or equal to"),
])
def test_seeds_are_signed_64_bit_integers_naming_the_key(override, fragment):
    assert fragment in refused(override)
    for seed in (2**63 - 1, -1, -(2**63)):  # torch.manual_seed and the keyed sampling take these
        assert load_config(None, [f"seed={seed}"]).seed == seed


@pytest.mark.parametrize("override, key", [
    ("seed=true", "seed"), ("train.steps=yes", "train.steps"), ("optim.lr=true", "optim.lr"),
    ("eval.max_new_tokens=false", "eval.max_new_tokens"), ("model.tiny.seed=true", "model.tiny.seed"),
    ("model.tiny.layers=true", "model.tiny.layers"), ("context.success_threshold=true", "context.success_threshold"),
    ("eval.ks=[1, true]", "eval.ks[1]"), ("optim.betas=[0.9, false]", "optim.betas[1]"),
])
def test_a_boolean_where_a_number_goes_is_refused_not_read_as_1(override, key):
    assert f"{key} is a boolean where a number goes" in refused(override)
    assert load_config(None, ["eval.greedy=true"]).eval.greedy is True  # booleans stay booleans


def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path):
    """YAML keeps the last of two equal keys: the first section would vanish without a word."""
    path = write(tmp_path, "train:\n  steps: 1\n  output_dir: /tmp/x\ntrain:\n  save_every: 10\n")
    message = refused(path=path)
    assert message.startswith(path) and "line 4: key 'train' appears twice in one mapping (first at line 1)" in message
    nested = write(tmp_path, "optim:\n  lr: 0.1\n  betas: [0.9, 0.99]\n  lr: 0.2\n", "nested.yaml")
    assert "line 4: key 'lr' appears twice" in refused(path=nested)
    merged = write(tmp_path, "task: &t {name: digits}\nverifier: {<<: *t, name: exact_match}\n", "merge.yaml")
    assert load_config(merged).verifier.name == "exact_match"  # a merge key (<<) is not a repeat


@pytest.mark.parametrize("text, fragment", [
    ("train:\n  output_dir: 2024-01-01\n", "train.output_dir is a YAML date (2024-01-01); quote it"),
    ("task:\n  name: digits\n  options: {note: !!binary aGk=}\n", "task.options.note is a YAML bytes"),
    ("task:\n  name: digits\n  options: {ops: !!set {a, b}}\n", "task.options.ops is a YAML set"),
])
def test_values_json_cannot_hold_are_refused_naming_the_key(tmp_path, text, fragment):
    """A date would run as a date but be saved to config.yaml as text: the two would differ."""
    assert fragment in refused(path=write(tmp_path, text))
    assert "the value is a YAML date" in refused("train.output_dir=2024-01-01")
    assert load_config(None, ["train.output_dir='2024-01-01'"]).train.output_dir == "2024-01-01"


def test_the_rollouts_of_one_step_are_bounded_naming_both_keys():
    message = refused("rollout.problems_per_step=1000000", "rollout.samples_per_problem=4096")
    assert "rollout.problems_per_step × rollout.samples_per_problem = 4096000000 rollouts per step" in message
    load_config(None, ["rollout.problems_per_step=1024", "rollout.samples_per_problem=1024"])  # 2^20: allowed


def alias_bomb(levels: int) -> str:
    """A few hundred bytes of YAML whose aliases expand to 9**levels strings under system_prompt."""
    lines = ["system_prompt:", '  a: &a ["lolololol","lolololol","lolololol","lolololol","lolololol",'
                                '"lolololol","lolololol","lolololol","lolololol"]']
    previous = "a"
    for name in "bcdefghijklm"[: levels - 1]:
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path):
    text = alias_bomb(9)  # 9**9 ≈ 387 million strings: a multi-gigabyte error message before
    assert len(text.encode()) < 450
    path = write(tmp_path, text)
    began = time.perf_counter()
    message = refused(path=path)
    assert time.perf_counter() - began < 2.0
    assert message.startswith(f"{path}: YAML aliases (*name) expand to more than {ALIAS_BUDGET} values")
    # the same document given as an override is refused the same way
    assert "YAML aliases" in refused("system_prompt=" + "{" + text.split("\n", 1)[1].replace("\n", ", ") + "}")


def test_a_recursive_alias_is_refused():
    assert "refers to a value that contains it" in refused("system_prompt=&loop [1, *loop]")


def test_modest_anchors_still_work(tmp_path):
    path = write(tmp_path, "rollout: &common {temperature: 0.5}\neval:\n  <<: *common\n  samples: 4\n  ks: [1, 4]\n")
    config = load_config(path)
    assert config.rollout.temperature == 0.5 and config.eval.temperature == 0.5 and config.eval.samples == 4
    assert read_yaml("a: &x [1, 2]\nb: [*x, *x]\n", "test") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


def test_a_huge_value_is_shown_cut_short_in_the_error(tmp_path):
    path = write(tmp_path, "system_prompt: [" + ", ".join(["x" * 50] * 150) + "]\n"
                           "optim:\n  lr: '" + "9" * 100_000 + "'\n")
    message = refused(path=path)
    assert "system_prompt" in message and "optim.lr" in message and "characters)" in message
    assert len(message) < 1000


def test_the_cli_refuses_the_bomb_in_one_line(tmp_path):
    path = write(tmp_path, alias_bomb(9))
    result = subprocess.run([sys.executable, "-m", "distil_core.cli", "train", path],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "YAML aliases" in lines[0] and len(lines[0]) < 1000
