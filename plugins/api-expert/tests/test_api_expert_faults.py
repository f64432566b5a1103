"""Provider faults: retried, counted, or failed for that query only; fatal ones stop with a clear error."""

import socket

import httpx
import openai
import pytest

from distil_core import ConfigError
from distil_core.serving import LocalOpenAIServer
from distil_api_expert.errors import classify, retry_after
from distil_api_expert.session import retry_policy

from api_expert_testlib import SAMPLED, api_expert, queries, score, tiny_model, tiny_tokenizer


def test_a_burst_of_429s_is_retried_and_counted(server):
    expert = api_expert(server, max_retries=4)
    server.reset_stats()
    server.add_faults("429:0", "429:0", "429:0")
    signal = score(expert, queries(1))[0]
    assert signal.ok and signal.access == "topk"
    assert signal.usage["retries"] == 3 and signal.usage["requests"] == 4
    assert server.stats["requests"] == 4


def test_retry_after_is_honoured_and_backoff_grows_with_jitter(server):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
    server.add_faults("429:7")
    with pytest.raises(openai.RateLimitError) as caught:
        client.completions.create(model="tiny", prompt="sort 1", max_tokens=1)
    assert classify(caught.value) == "transient"
    assert retry_after(caught.value) == 7.0
    policy = retry_policy(max_retries=5, backoff_s=1.0, backoff_max_s=8.0)
    assert policy.delay(0, retry_after(caught.value)) == 7.0  # the server's word wins over the backoff
    plain = httpx.ConnectError("refused")
    assert retry_after(plain) is None
    delays = [policy.delay(attempt, retry_after(plain)) for attempt in range(6)]
    for attempt, delay in enumerate(delays):
        ceiling = min(8.0, 2.0 ** attempt)
        assert ceiling / 2 <= delay <= ceiling


def test_server_errors_past_the_retries_fail_only_those_queries(server):
    expert = api_expert(server, max_retries=2)
    server.add_faults(*["500", "503", "500"] * 3)  # every attempt of three queries
    signals = score(expert, queries(3))
    assert [s.ok for s in signals] == [False, False, False]
    assert all("gave up after 3 attempts" in s.error and s.usage["retries"] == 2 for s in signals)
    server.add_faults("503")  # one hiccup, then an answer
    assert score(expert, queries(1))[0].ok


def test_answers_slower_than_the_timeout_fail_those_queries(server):
    expert = api_expert(server, timeout_s=0.5, max_retries=0)
    server.add_faults("slow:5", "slow:5")
    signals = score(expert, queries(4))
    failed = [s for s in signals if not s.ok]
    assert len(failed) == 2 and all("timed out" in s.error.lower() for s in failed)
    assert all(s.ok for s in signals if s not in failed)


@pytest.mark.parametrize("client", ["openai", "litellm"])
def test_malformed_json_fails_that_query_without_a_retry(server, client):
    """litellm reports an answer it cannot parse as a 500 of its own: still not retried."""
    if client == "litellm":
        pytest.importorskip("litellm")
    expert = api_expert(server, max_retries=3, client=client, model="openai/tiny" if client == "litellm" else "tiny")
    server.reset_stats()
    server.add_faults("malformed")
    signals = score(expert, queries(3))
    failed = [s for s in signals if not s.ok]
    assert len(failed) == 1 and failed[0].usage["requests"] == 1 and failed[0].usage["retries"] == 0
    assert "malformed" in failed[0].error
    assert sum(s.ok for s in signals) == 2 and server.stats["requests"] == 3


@pytest.mark.filterwarnings("ignore:expert 'api'. access 'topk' trains on:UserWarning")
@pytest.mark.parametrize("access", ["prompt_scoring", "topk"])
def test_an_answer_without_logprobs_fails_that_query(server, access):
    expert = api_expert(server, access=access, max_tokens=3, **SAMPLED)
    server.add_faults("no_logprobs")
    signals = score(expert, queries(3))
    failed = [s for s in signals if not s.ok]
    assert len(failed) == 1 and "log-probs" in failed[0].error


def test_a_wrong_api_key_is_a_config_error_with_the_providers_message():
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny", api_key="right") as server:
        with pytest.raises(ConfigError, match="Incorrect API key provided") as caught:
            api_expert(server, api_key="wrong")  # at the probe, before any training
        assert "options.api_key" in str(caught.value)
        lazy = api_expert(server, api_key="wrong", access="prompt_scoring", probe=False)
        with pytest.raises(ConfigError, match="Incorrect API key provided"):
            score(lazy, queries(1))  # at the first call, never skipped
        assert score(api_expert(server, api_key="right"), queries(1))[0].ok


def test_an_unknown_model_is_a_config_error_with_the_providers_message(server):
    with pytest.raises(ConfigError, match="The model 'gpt-7' does not exist") as caught:
        api_expert(server, model="gpt-7")
    assert "options.model" in str(caught.value)


def test_an_unreachable_server_is_a_config_error_at_the_probe():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = type("S", (), {"base_url": f"http://127.0.0.1:{port}"})
    with pytest.raises(ConfigError, match="no answer from 'tiny'.*while probing"):
        api_expert(fake, max_retries=1)


class ErrorIn200Server(LocalOpenAIServer):
    """Answers every completion 200 with an error object and no choices, as some providers do."""

    refuse = False

    def complete(self, path, raw):
        if not self.refuse:
            return super().complete(path, raw)
        body = b'{"error": {"message": "quota exceeded for\\n org-123", "type": "insufficient_quota"}}'
        return 200, {"Content-Type": "application/json"}, body


def test_an_error_object_in_a_200_answer_is_reported_with_what_the_provider_said():
    """(litellm builds its own answer object from such a body and drops the error: it fails as an
    answer without log-probs.)"""
    with ErrorIn200Server(tiny_model(), tiny_tokenizer(), model_name="tiny") as server:
        expert = api_expert(server)
        server.refuse = True
        signals = score(expert, queries(2))
    assert all(not s.ok and "the provider said: quota exceeded for org-123" in s.error for s in signals)
