"""Hostile or odd input to local generation, model directories, the HF expert and LoRA: a clear
one-line error that names the setting or file, or sensible behaviour."""

import json
import os
from types import SimpleNamespace

import pytest

from distil_core.errors import ConfigError, DistilError
from distil_core.rollouts.local import Generator, SamplingParams
from distil_core.testing import stub_runtime, tiny_model, tiny_tokenizer


def prompt(text="12+3="):
    return tiny_tokenizer().encode(text)


def sample(model, params, prompts=None, ids=None):
    prompts = prompts or [prompt()]
    return Generator(model, tiny_tokenizer()).sample(prompts, ids or [f"p{i}" for i in range(len(prompts))], 2,
                                                     params=params, key=7)


@pytest.mark.parametrize("field, value", [("max_new_tokens", 0), ("top_k", -1), ("temperature", -1.0),
                                          ("temperature", float("nan")), ("temperature", float("inf")),
                                          ("top_p", 1.5)])
def test_sampling_parameters_out_of_range_name_the_setting(field, value):
    with pytest.raises(ConfigError, match=f"sampling parameter {field} must be"):
        sample(tiny_model(), SamplingParams(**{"max_new_tokens": 2, field: value}))


def test_a_temperature_too_small_to_divide_by_is_greedy():
    greedy = sample(tiny_model(), SamplingParams(max_new_tokens=3, temperature=0.0))
    tiny = sample(tiny_model(), SamplingParams(max_new_tokens=3, temperature=1e-40))
    assert [r.response_ids for r in tiny] == [r.response_ids for r in greedy]


def test_edges_that_work_stay_sensible():
    model = tiny_model()
    for params in (SamplingParams(max_new_tokens=1), SamplingParams(max_new_tokens=2, top_k=10_000),
                   SamplingParams(max_new_tokens=2, top_p=0.0)):
        rows = sample(model, params)
        assert all(len(r.response_ids) == params.max_new_tokens for r in rows)


def test_left_padding_keeps_a_prompts_samples():
    model, short, long_ = tiny_model(), prompt("1"), prompt("12+34+56+78+90=") * 4
    alone = sample(model, SamplingParams(max_new_tokens=5), [short], ["s"]) + \
        sample(model, SamplingParams(max_new_tokens=5), [long_], ["l"])
    batch = sample(model, SamplingParams(max_new_tokens=5), [short, long_], ["s", "l"])
    assert [r.response_ids for r in batch] == [r.response_ids for r in alone]


def test_an_empty_prompt_or_one_past_the_embeddings_is_named():
    with pytest.raises(ConfigError, match="problem 'e': its prompt is empty"):
        sample(tiny_model(), SamplingParams(max_new_tokens=2), [prompt(), []], ["a", "e"])
    with pytest.raises(ConfigError, match="problem 'a': its prompt holds token id 5000, outside the model's 300"):
        sample(tiny_model(), SamplingParams(max_new_tokens=2), [[5, 5000]], ["a"])


def test_a_tokenizer_without_pad_or_eos_is_refused():
    tok = SimpleNamespace(pad_token_id=None, eos_token_id=None)
    with pytest.raises(ConfigError, match="neither a pad token nor an EOS token"):
        Generator(tiny_model(), tok)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_non_finite_logits_are_a_clear_error_not_garbage(value, temperature):
    model = tiny_model()

    def diverged(module, inputs, out):
        out = out.clone()
        out[0] = value  # the first row (problem 'a', sample 0) has diverged
        return out

    model.lm_head.register_forward_hook(diverged)
    with pytest.raises(DistilError, match=r"logits are NaN or infinite at generated token 0 \(problem 'a' sample 0\)"):
        sample(model, SamplingParams(max_new_tokens=3, temperature=temperature), [prompt(), prompt("1")], ["a", "b"])


def test_one_nan_logit_in_a_row_is_caught():
    model = tiny_model()

    def one(module, inputs, out):
        out = out.clone()
        out[..., 5] = float("nan")
        return out

    model.lm_head.register_forward_hook(one)
    with pytest.raises(DistilError, match="NaN or infinite"):
        sample(model, SamplingParams(max_new_tokens=2))


# -- model directories --------------------------------------------------------------------------


MARKER = "remote_code_ran"


def model_dir(tmp_path, name, model=None, config=None, tokenizer_config=None):
    path = tmp_path / name
    (model or tiny_model()).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    for file, edit in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if edit:
            data = json.loads((path / file).read_text())
            data.update(edit)
            (path / file).write_text(json.dumps(data))
    (path / "evil.py").write_text(
        f"open({str(tmp_path / MARKER)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return str(path)


EVIL_MODEL = {"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}
EVIL_TOKENIZER = {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}}


@pytest.mark.parametrize("edit", ["model", "tokenizer"])
def test_remote_code_is_refused_before_transformers_asks(tmp_path, monkeypatch, edit):
    from distil_core.config import load_config
    from distil_core.testing import FAST_RUN
    from distil_core.training.runtime import load_policy

    path = model_dir(tmp_path, "evil", config=EVIL_MODEL if edit == "model" else None,
                     tokenizer_config=EVIL_TOKENIZER if edit == "tokenizer" else None)
    monkeypatch.setattr("builtins.input", lambda *a: "y")  # a user who answers transformers' prompt
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("y\n"))
    config = load_config(None, FAST_RUN + [f"model.name={path}"])
    with pytest.raises(ConfigError, match=r"auto_map\), and distil never runs a model directory's code") as err:
        load_policy(config, None, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"expert 'hf': cannot load a model from .*distil never runs"):
        from distil_core.models.experts import HFExpert
        HFExpert(stub_runtime(), path)
    assert not os.path.exists(tmp_path / MARKER)


EXPERT_DAMAGES = {
    "cut_weights": (lambda d: os.truncate(d / "model.safetensors", 100), "model.safetensors is damaged (Error "),
    "no_weights": (lambda d: os.unlink(d / "model.safetensors"), "it has no weights file (model.safetensors)"),
    "bad_config": (lambda d: (d / "config.json").write_text("{"), "config.json is damaged (not valid JSON)"),
    "no_tokenizer": (lambda d: [os.unlink(p) for p in d.glob("tokenizer*")], "it has no tokenizer file"),
}


@pytest.mark.parametrize("damage", sorted(EXPERT_DAMAGES))
def test_a_damaged_hf_expert_directory_is_one_line_naming_the_file_and_the_option(tmp_path, damage):
    """A weights file cut short reached the user as safetensors' own SafetensorError."""
    from distil_core.models.experts import HFExpert

    path = model_dir(tmp_path, "expert")
    HFExpert(stub_runtime(), path)  # whole, it loads
    spoil, said = EXPERT_DAMAGES[damage]
    spoil(tmp_path / "expert")
    with pytest.raises(ConfigError) as err:
        HFExpert(stub_runtime(), path)
    message = str(err.value)
    assert message.startswith(f"expert 'hf': model directory {str(path)!r} cannot be loaded: {said}")
    assert "(expert.options.path)" in message and "\n" not in message


@pytest.mark.parametrize("given", ["missing/dir", "HuggingFaceTB/SmolLM2-135M"])
def test_an_hf_expert_path_that_is_no_directory_says_so(tmp_path, given):
    from distil_core.models.experts import HFExpert

    with pytest.raises(ConfigError, match=r"^expert 'hf': cannot load a model from '.*': it is not a local model "
                                          r"directory\. Give expert\.options\.path as a directory"):
        HFExpert(stub_runtime(), str(tmp_path / given) if given.startswith("missing") else given)


def test_auto_map_of_a_known_architecture_loads_natively(tmp_path):
    from distil_core.models.experts import HFExpert

    path = model_dir(tmp_path, "native", config={"auto_map": {"AutoModelForCausalLM": "evil.EvilModel"}})
    HFExpert(stub_runtime(), path)
    assert not os.path.exists(tmp_path / MARKER)


def test_hf_expert_with_a_padded_vocabulary_scores_the_students_width(tmp_path):
    from distil_core.models.experts import HFExpert
    from distil_core.training.signals import signal_problem
    from distil_core.types import ExpertQuery

    wide = tiny_model()
    wide.resize_token_embeddings(320, mean_resizing=False)
    student = tiny_model()
    for access, k in (("dense", None), ("topk", 5)):
        expert = HFExpert(stub_runtime(model=student), model_dir(tmp_path, f"wide-{access}", wide), access=access, k=k)
        query = ExpertQuery(problem_id="p", rollout_index=0, context_messages=[], response_text="", context_ids=prompt(), response_ids=[5, 6])
        for signal in (*expert.score([query]), *expert.score_hidden([query])):
            assert signal_problem(signal, 2, student.config.vocab_size) is None


def test_hf_expert_with_fewer_embeddings_than_tokens_is_refused(tmp_path):
    from distil_core.models.experts import HFExpert

    narrow = tiny_model()
    narrow.resize_token_embeddings(280, mean_resizing=False)
    with pytest.raises(ConfigError, match="has 280 token embeddings, fewer than the 300 tokens of its tokenizer"):
        HFExpert(stub_runtime(), model_dir(tmp_path, "narrow", narrow))


# -- LoRA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("r, said", [(0, "model.lora.r must be an integer of at least 1"),
                                     (4096, "model.lora.r 4096 is above the width of every layer")])
def test_lora_rank_out_of_reach_names_model_lora_r(r, said):
    pytest.importorskip("peft")
    from distil_core.models.lora import attach_lora

    settings = SimpleNamespace(r=r, alpha=8.0, dropout=0.0, target_modules="all-linear")
    with pytest.raises(ConfigError, match=said):
        attach_lora(tiny_model(), settings)


def test_attaching_lora_prints_no_warning_the_user_cannot_act_on():
    """peft reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model;
    every LoRA run began with that FutureWarning."""
    pytest.importorskip("peft")
    import warnings

    from distil_core.models.lora import attach_lora

    settings = SimpleNamespace(r=4, alpha=8.0, dropout=0.0, target_modules="all-linear")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = attach_lora(tiny_model(), settings)
    assert [str(w.message) for w in caught] == []
    assert any("lora_A" in name for name, _ in model.named_parameters())
