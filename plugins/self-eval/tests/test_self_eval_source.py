"""The source on real tiny models: batching, the length cap, only_failed, and each kind of critic."""

import copy
import json
import os
from types import SimpleNamespace

import pytest
import torch
from distil_core import ConfigError
from distil_core import PluginHost
from distil_core import FeedbackSource
from distil_core.models.tiny import save_pretrained
from distil_core.testing import tiny_model, tiny_tokenizer
from self_eval_testlib import GenerateCounter, WriterPlugin, graded, host_with_plugin, student_runtime

SPECIALS = ("<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|pad|>")


@pytest.fixture
def host():
    return host_with_plugin((WriterPlugin, "writer"))


def step_items(count=8, passed_every=0):
    """A step's graded rollouts; every ``passed_every``-th one passed (0: none did)."""
    return [
        graded(f"{i}{i + 1}", passed=bool(passed_every) and i % passed_every == 0, pid=f"sort-{i + 10}")
        for i in range(count)
    ]


def student_source(host, **options):
    runtime = student_runtime(host=host)
    options.setdefault("temperature", 1.0)  # a random model's greedy critique is often blank
    return host.build("feedback_source", "self_eval", options, runtime=runtime), runtime


def test_entry_point_registers_the_source():
    host = PluginHost(load_entrypoints=True, allow=["self_eval"])
    info = host.plugins["self_eval"]
    assert info.error is None and info.distribution == "distil-self-eval" and info.version == "0.1.0"
    assert info.registered == [("feedback_source", "self_eval")]


def test_one_generate_call_critiques_a_whole_step(host):
    source, runtime = student_source(host, max_new_tokens=4)
    assert isinstance(source, FeedbackSource) and source.critic.model is runtime.model  # the student itself
    counter = GenerateCounter(runtime.model)
    torch.manual_seed(0)
    out = source.feedback_batch(step_items(8))
    assert [c["rows"] for c in counter.calls] == [8]
    assert len(out) == 8 and sum(len(items) for items in out) >= 6  # a sampled critique can be blank
    source.batch_size = 3
    source.feedback_batch(step_items(8))
    assert [c["rows"] for c in counter.calls[1:]] == [3, 3, 2]


def test_critiques_stop_at_max_new_tokens(host):
    source, runtime = student_source(host, max_new_tokens=3)
    counter = GenerateCounter(runtime.model)
    torch.manual_seed(1)
    short = [items for items in source.feedback_batch(step_items(8)) if items]
    assert counter.calls[0]["max_new_tokens"] == 3
    assert max(len(row) for row in counter.calls[0]["new_tokens"]) <= 3
    assert short and all(i.data["tokens"] <= 3 for [i] in short)
    source.max_new_tokens = 12
    torch.manual_seed(1)
    longer = [items for items in source.feedback_batch(step_items(8)) if items]
    assert max(i.data["tokens"] for [i] in longer) > 3  # the cap, not the model, stopped the short ones


def test_critique_text_is_the_decoded_tokens_without_special_tokens(host):
    source, runtime = student_source(host, max_new_tokens=16)
    counter = GenerateCounter(runtime.model)
    torch.manual_seed(2)
    out = source.feedback_batch(step_items(8))
    tok = runtime.tokenizer
    stop = tok.eos_token_id
    assert any(out)
    for row, items in zip(counter.calls[0]["new_tokens"], out):
        body = row[: row.index(stop)] if stop in row else row
        text = tok.decode(body, skip_special_tokens=True).strip()
        if not text:
            assert items == []  # a blank critique is no feedback
            continue
        [item] = items
        assert (item.source, item.kind) == ("self_eval", "self_evaluation")
        assert item.text == text and not any(s in item.text for s in SPECIALS)
        assert item.data["model"] == "student" and item.data["finished"] == (stop in row)


def test_only_failed_rollouts_are_critiqued_unless_asked(host):
    runtime = SimpleNamespace(host=host)
    items = step_items(6, passed_every=2)  # rollouts 0, 2, 4 passed
    source = host.build("feedback_source", "self_eval", {"model": {"expert": "writer"}}, runtime=runtime)
    out = source.feedback_batch(items)
    assert [bool(f) for f in out] == [False, True, False, True, False, True]
    assert [len(batch) for batch in source.critic.expert.seen] == [3]
    assert all("Verdict: incorrect" in conv[0]["content"] for conv in source.critic.expert.seen[0])
    every = host.build("feedback_source", "self_eval", {"model": {"expert": "writer"}, "only_failed": False}, runtime=runtime)
    assert all(every.feedback_batch(items))
    assert source.feedback(*items[0]) == [] and len(every.feedback(*items[0])) == 1


def test_a_registered_expert_that_writes_text_is_the_critic(host):
    runtime = SimpleNamespace(host=host)
    options = {
        "model": {"expert": "writer", "options": {"replies": ["Look at the first digit.", "  ", "x" * 50]}},
        "template": "Q: {problem} A: {response} ({verdict}, {score:.1f}, expected {reference}, got {answer})",
        "system_prompt": "You are a strict grader.",
        "max_new_tokens": 32,
        "max_chars": 30,
    }
    source = host.build("feedback_source", "self_eval", options, runtime=runtime)
    out = source.feedback_batch(step_items(3))
    expert = source.critic.expert
    [conversations] = expert.seen
    assert conversations[0] == [
        {"role": "system", "content": "You are a strict grader."},
        {"role": "user", "content": "Q: sort 10 A: 01 (incorrect, 0.0, expected 13, got 31)"},
    ]
    assert expert.keywords == [{"max_new_tokens": 32}]
    [first], blank, [cut] = out
    assert first.text == "Look at the first digit." and first.data == {"model": "expert 'writer'", "truncated": False}
    assert blank == []  # whitespace is no critique
    assert cut.text == "x" * 29 + "…" and len(cut.text) == 30 and cut.data["truncated"]


def test_a_critic_that_returns_the_wrong_count_is_reported(host):
    from distil_core import PluginError

    runtime = SimpleNamespace(host=host)
    source = host.build("feedback_source", "self_eval", {"model": {"expert": "writer"}}, runtime=runtime)
    source.critic.expert.generate = lambda prompts, **kw: ["only one"]
    with pytest.raises(PluginError, match="returned 1 items .str. for 2 prompts; it must return one string per prompt"):
        source.feedback_batch(step_items(2))


def test_a_separate_local_model_directory_is_the_critic(host, tmp_path):
    critic_dir = tmp_path / "critic"
    save_pretrained(tiny_model(seed=1), tiny_tokenizer(), str(critic_dir))
    source, runtime = student_source(host, model=str(critic_dir), max_new_tokens=5)
    assert source.critic.model is not runtime.model and not source.critic.model.training
    student_calls, critic_calls = GenerateCounter(runtime.model), GenerateCounter(source.critic.model)
    torch.manual_seed(3)
    out = source.feedback_batch(step_items(4))
    assert student_calls.calls == [] and [c["rows"] for c in critic_calls.calls] == [4]
    assert all(i.data["model"] == str(critic_dir) and i.data["tokens"] <= 5 for items in out for i in items)
    assert any(out)


def test_a_local_directory_without_a_chat_template_is_refused(host, tmp_path):
    path = tmp_path / "plain"
    save_pretrained(tiny_model(seed=1), tiny_tokenizer(), str(path))
    for name in os.listdir(path):
        if name.startswith("chat_template"):
            os.unlink(path / name)
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="has no chat template"):
        student_source(host, model=str(path))
    with pytest.raises(ConfigError, match="neither 'student' nor a local model directory"):
        student_source(host, model=str(tmp_path / "missing"))


NO_SYSTEM_ROLE = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                  "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                  "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def critic_with_chat_template(path, chat_template):
    tokenizer = copy.deepcopy(tiny_tokenizer())  # the shared one stays as it is
    tokenizer.chat_template = chat_template
    save_pretrained(tiny_model(seed=1), tokenizer, str(path))
    return str(path)


def test_a_critic_whose_chat_template_refuses_the_system_prompt_is_refused_when_built(host, tmp_path):
    """Before, the source was built, and the run failed at its first critiques, after the first
    evaluation, blaming a damaged chat_template.jinja and naming neither self_eval nor system_prompt."""
    critic = critic_with_chat_template(tmp_path / "critic", NO_SYSTEM_ROLE)
    with pytest.raises(ConfigError) as err:
        student_source(host, model=critic, system_prompt="You are a strict grader.")
    message = str(err.value)
    assert message.startswith(f"feedback source 'self_eval': option 'system_prompt': the chat template of the "
                              f"critic ({critic!r}) refuses a system message (TemplateError: System role not "
                              "supported); it renders the critique request without one. Leave system_prompt out")
    assert "damaged" not in message and "\n" not in message
    source, _ = student_source(host, model=critic, max_new_tokens=4)  # without one it critiques
    torch.manual_seed(0)
    assert any(source.feedback_batch(step_items(4)))


def test_a_critic_whose_chat_template_fails_on_every_request_is_refused_naming_the_model(host, tmp_path):
    critic = critic_with_chat_template(tmp_path / "critic", "{{ raise_exception('No conversations here') }}")
    with pytest.raises(ConfigError, match=r"^feedback source 'self_eval': option 'model': the chat template of the "
                                          r"critic .* cannot render a critique request \(TemplateError: No "
                                          r"conversations here\)\. Restore its chat_template\.jinja"):
        student_source(host, model=critic, system_prompt="You are a strict grader.")
