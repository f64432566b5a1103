"""`distil train` with self_eval: a bad template stops it before training (exit 2), and a short
run critiques each step's failed rollouts in one generate call and logs them as provenance."""

import copy
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from distil_core.cli import main
from distil_core.models.tiny import save_pretrained
from distil_core.testing import FAST_RUN, tiny_model, tiny_tokenizer

from distil_self_eval import LocalCritic

SELF_EVAL = {"source": "self_eval", "kind": "self_evaluation"}


@pytest.fixture
def with_plugin(monkeypatch, tiny_base_cache):
    """The installed entry point, as a user's `distil` sees it, and the session's tiny bases."""
    monkeypatch.delenv("DISTIL_NO_ENTRYPOINTS", raising=False)
    monkeypatch.setenv("DISTIL_PLUGINS", "self_eval")


def write_config(path, options, **top):
    config = {"feedback": ["answer_check", {"name": "self_eval", "options": options}], **top}
    path.write_text(yaml.safe_dump(config))
    return str(path)


def saved_tiny_model(tmp_path):
    """A local model directory that loads in a moment (the run stops before training anyway)."""
    path = tmp_path / "model"
    save_pretrained(tiny_model(), tiny_tokenizer(), str(path))
    return str(path)


def test_a_bad_template_stops_distil_train_with_exit_code_2(tmp_path, with_plugin):
    config = write_config(
        tmp_path / "run.yaml",
        {"template": "Problem: {problm}\nAttempt: {response}"},
        model={"name": saved_tiny_model(tmp_path)},
    )
    distil = [shutil.which("distil")] if shutil.which("distil") else [sys.executable, "-m", "distil_core.cli"]
    proc = subprocess.run(distil + ["train", config, "--output-dir", str(tmp_path / "run")],
                          env=dict(os.environ), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [message] = [line for line in proc.stderr.splitlines() if line.strip()]  # one paragraph
    assert message.startswith(
        "error: feedback source 'self_eval': option 'template' uses unknown variable {problm}. Did you mean 'problem'?"
    )
    assert not (tmp_path / "run").exists()  # nothing was trained or written


def test_unbalanced_braces_stop_distil_train_with_exit_code_2(tmp_path, with_plugin, capsys):
    config = write_config(tmp_path / "run.yaml", {"template": "Attempt: {response"}, model={"name": saved_tiny_model(tmp_path)})
    capsys.readouterr()
    assert main(["train", config, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: feedback source 'self_eval': option 'template': braces do not pair: "
                          "the '{' at character 10 is never closed")
    assert "\n" not in err and not (tmp_path / "run").exists()


def test_a_critic_refusing_the_system_prompt_stops_distil_train_before_the_first_evaluation(tmp_path, with_plugin,
                                                                                            capsys):
    """Before, the run evaluated its starting model, then failed at the first step's critiques."""
    tokenizer = copy.deepcopy(tiny_tokenizer())
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                               "{{ raise_exception('System role not supported') }}{% endif %}"
                               "<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    critic = tmp_path / "critic"
    save_pretrained(tiny_model(seed=1), tokenizer, str(critic))
    config = write_config(tmp_path / "run.yaml", {"model": str(critic), "system_prompt": "You are a strict grader."},
                          model={"name": saved_tiny_model(tmp_path)})
    capsys.readouterr()
    assert main(["train", config, "--output-dir", str(tmp_path / "run")]) == 2
    out, err = capsys.readouterr()
    assert err.strip().startswith("error: feedback source 'self_eval': option 'system_prompt': the chat template of "
                                  f"the critic ({str(critic)!r}) refuses a system message")
    assert "eval (before" not in out + err and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_short_run_critiques_failures_in_one_call_per_step(tmp_path, with_plugin, monkeypatch, capsys):
    batches = []
    write = LocalCritic.write

    def counted(self, conversations, *args, **kwargs):
        batches.append(len(conversations))
        return write(self, conversations, *args, **kwargs)

    monkeypatch.setattr(LocalCritic, "write", counted)
    config = write_config(tmp_path / "run.yaml", {"max_new_tokens": 8, "temperature": 1.0})
    run = tmp_path / "run"
    overrides = [arg for item in FAST_RUN + ["train.steps=2"] for arg in ("--set", item)]
    assert main(["train", config, "--output-dir", str(run), "--quiet", *overrides]) == 0
    assert "Held-out digits" in capsys.readouterr().out

    with open(run / "provenance.jsonl") as fh:
        records = [json.loads(line) for line in fh]
    failed = Counter(r["step"] for r in records if not r["passed"])
    assert sorted({r["step"] for r in records}) == [1, 2] and len(records) == 2 * 16
    # one generate call per step, holding every failed rollout of that step
    assert batches == [failed[step] for step in sorted(failed)] and batches
    critiqued = [r for r in records if SELF_EVAL in r["feedback"]]
    assert critiqued and all(not r["passed"] for r in critiqued)  # only_failed by default
    assert all(r["feedback"].index(SELF_EVAL) == 1 for r in critiqued)  # after answer_check, in config order
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["feedback"][1] == {"name": "self_eval", "options": {"max_new_tokens": 8, "temperature": 1.0}}
    assert (run / "final" / "config.json").exists()
