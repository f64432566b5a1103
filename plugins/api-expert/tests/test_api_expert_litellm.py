"""The litellm client path: a real server through litellm, and provider error shapes via mock_response."""

import os

import pytest
import torch

from distil_core import ConfigError
from distil_core.models.experts import SelfExpert

from api_expert_testlib import api_expert, queries, runtime, score, tiny_model

litellm = pytest.importorskip("litellm")
pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")


def test_litellm_reaches_the_server_with_prompt_scoring(server):
    expert = api_expert(server, client="litellm", model="openai/tiny", k=4,
                        price_prompt_per_1k=0.5, price_completion_per_1k=2.0)
    assert expert.probe_result.level == "prompt_scoring"
    qs = queries(2)
    first = score(expert, qs)
    second = score(expert, qs)  # a second event loop: litellm's cached clients must not leak across
    reference = SelfExpert(runtime(model=tiny_model()), weights="live", access="topk", k=4).score(qs)
    for got, again, want in zip(first, second, reference):
        assert torch.equal(got.topk_ids, want.topk_ids) and torch.equal(again.topk_ids, want.topk_ids)
        torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs, atol=1e-4, rtol=0)
        assert got.usage["cost_usd"] == pytest.approx(got.usage["prompt_tokens"] * 0.5 / 1000)


def test_litellm_text_answers_are_priced_from_its_cost_map(server):
    expert = api_expert(server, client="litellm", model="gpt-4o-mini", access="text", probe=False,
                        litellm_kwargs={"mock_response": "The expected answer is 123."})
    signal = score(expert, queries(1))[0]
    assert signal.ok and signal.text == "The expected answer is 123."
    assert signal.usage["prompt_tokens"] > 0 and signal.usage["cost_usd"] > 0


def _mocked(server, error, **options):
    return api_expert(server, client="litellm", model="gpt-4o-mini", litellm_kwargs={"mock_response": error}, **options)


def test_a_provider_authentication_error_is_a_config_error_at_the_probe(server):
    error = litellm.AuthenticationError(message="Incorrect API key provided: sk-abc***xyz.",
                                        llm_provider="openai", model="gpt-4o-mini")
    with pytest.raises(ConfigError, match="Incorrect API key provided") as caught:
        _mocked(server, error)
    assert "rejected the credentials" in str(caught.value)


def test_a_provider_model_not_found_error_is_a_config_error(server):
    error = litellm.NotFoundError(message="The model `gpt-7` does not exist or you do not have access to it.",
                                  llm_provider="openai", model="gpt-7")
    with pytest.raises(ConfigError, match="gpt-7` does not exist"):
        _mocked(server, error)
    lazy = _mocked(server, error, access="text", probe=False)
    with pytest.raises(ConfigError, match="was not found"):
        score(lazy, queries(1))


def test_provider_rate_limits_are_retried_then_fail_the_query(server):
    expert = _mocked(server, "litellm.RateLimitError", access="text", probe=False, max_retries=2)
    signals = score(expert, queries(2))
    assert [s.ok for s in signals] == [False, False]
    assert all(s.usage["retries"] == 2 and "rate limit" in s.error.lower() for s in signals)


def test_litellm_kwargs_are_in_the_cache_key_and_their_secrets_are_not(server, tmp_path):
    def answer(text, secret):
        expert = api_expert(server, client="litellm", model="gpt-4o-mini", access="text", probe=False,
                            cache_dir=str(tmp_path), litellm_kwargs={"mock_response": text,
                                                                     "aws_secret_access_key": secret})
        [signal] = score(expert, queries(1))
        return signal.text, signal.usage["cached"]

    assert answer("The answer is 1.", "first-secret") == ("The answer is 1.", 0)
    assert answer("The answer is 2.", "first-secret") == ("The answer is 2.", 0)  # other kwargs: asked again
    assert answer("The answer is 2.", "rotated-secret") == ("The answer is 2.", 1)  # another key: the same answer
    for folder, _, files in os.walk(tmp_path):
        for name in files:
            with open(os.path.join(folder, name)) as fh:
                assert "secret" not in fh.read()


def test_a_secret_in_litellm_kwargs_never_reaches_a_failed_signal(server):
    secret = "AWS-SECRET-VALUE-42"
    error = litellm.BadRequestError(message=f"The signature for {secret} does not match.", llm_provider="bedrock",
                                    model="gpt-4o-mini")
    expert = api_expert(server, client="litellm", model="gpt-4o-mini", access="text", probe=False,
                        litellm_kwargs={"mock_response": error, "aws_secret_access_key": secret})
    [signal] = score(expert, queries(1))
    assert not signal.ok and "The signature for *** does not match" in signal.error and secret not in signal.error
