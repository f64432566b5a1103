"""The api expert against a real server: access levels, alignment, caching, concurrency."""

import json
import math
import os

import pytest
import torch

from distil_core import ConfigError
from distil_core.models.experts import SelfExpert
from distil_core import PluginHost
from distil_core.serving import LocalOpenAIServer, token_bytes_table

from api_expert_testlib import (
    SAMPLED,
    RewritingServer,
    api_expert,
    other_model,
    other_tokenizer,
    queries,
    runtime,
    score,
    tiny_model,
    tiny_tokenizer,
)


def test_prompt_scoring_gives_the_same_topk_as_the_self_expert_on_the_same_model(server):
    expert = api_expert(server, k=5)
    assert expert.probe_result.level == "prompt_scoring" and expert.probe_result.send_ids
    assert expert.capability.access == "topk" and expert.capability.k == 5 and expert.capability.same_tokenizer
    qs = queries(4)
    signals = score(expert, qs)
    reference = SelfExpert(runtime(model=tiny_model()), weights="live", access="topk", k=5).score(qs)
    for query, got, want in zip(qs, signals, reference):
        assert got.ok and got.access == "topk"
        assert got.topk_ids.shape == (len(query.response_ids), 5)
        assert torch.equal(got.topk_ids, want.topk_ids)
        torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs, atol=1e-4, rtol=0)
        assert got.usage["prompt_tokens"] == len(query.context_ids) + len(query.response_ids)
        assert got.usage["requests"] == 1 and got.usage["cached"] == 0


def test_vllm_prompt_logprobs_serve_when_echo_is_not_offered(server):
    server.add_faults("no_logprobs")  # the echo probe comes back without log-probs
    expert = api_expert(server, k=5)
    assert (expert.probe_result.variant, expert.probe_result.send_ids) == ("prompt_logprobs", True)
    qs = queries(3)
    signals = score(expert, qs)
    reference = SelfExpert(runtime(model=tiny_model()), weights="live", access="topk", k=5).score(qs)
    for got, want in zip(signals, reference):
        assert got.ok and torch.equal(got.topk_ids, want.topk_ids)
        torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs, atol=1e-4, rtol=0)


def test_a_text_prompt_is_aligned_by_bytes_when_ids_cannot_be_sent(server):
    expert = api_expert(server, k=5)
    expert.probe_result.send_ids = False  # as with an API that only takes text
    qs = queries(3)
    signals = score(expert, qs)
    reference = SelfExpert(runtime(model=tiny_model()), weights="live", access="topk", k=5).score(qs)
    for got, want in zip(signals, reference):
        assert got.ok and torch.equal(got.topk_ids, want.topk_ids)
        torch.testing.assert_close(got.topk_logprobs, want.topk_logprobs, atol=1e-4, rtol=0)


def _split_response(tok, text):
    """A valid but non-canonical tokenisation of ``text`` (one byte per token), as sampling can produce."""
    by_bytes = {tok.convert_tokens_to_string([t]).encode(): i for t, i in tok.get_vocab().items()}
    return [by_bytes[bytes([b])] for b in text.encode()]


@pytest.mark.parametrize("policy", ["text", "skip"])
def test_a_response_that_does_not_align_falls_back_to_text_or_is_skipped(server, policy):
    tok = tiny_tokenizer()
    expert = api_expert(server, k=5, misaligned=policy, max_tokens=4, **SAMPLED)
    expert.probe_result.send_ids = False
    qs = queries(2, response="sort 12")
    assert tok.encode("sort", add_special_tokens=False) != _split_response(tok, "sort")  # "sort" is one merged token
    odd = qs[1].model_copy(update={"response_ids": _split_response(tok, "sort 12") + [tok.eos_token_id]})
    signals = score(expert, [qs[0], odd])
    if policy == "skip":
        assert signals[0].ok and signals[0].access == "topk"
        assert not signals[1].ok and "not aligned" in signals[1].error
        assert signals[1].usage["misaligned"] == 1
    else:  # one loss path per step: the whole batch becomes text
        assert all(s.ok and s.access == "text" and isinstance(s.text, str) for s in signals)
        assert [s.usage["misaligned"] for s in signals] == [0, 1]
        assert all(s.usage["requests"] == 2 for s in signals)  # the scoring request, then the text one


def test_another_tokenizer_is_aligned_through_bytes_where_tokens_coincide():
    """Student and API tokenise words differently but digits alike: digits align, words do not."""
    api_tok, api_model = other_tokenizer(), other_model()
    with LocalOpenAIServer(api_model, api_tok, model_name="other") as server:
        expert = api_expert(server, model="other", k=4, misaligned="skip")
        probe = expert.probe_result
        assert probe.level == "prompt_scoring" and not probe.same_tokenizer and not probe.send_ids
        digits, word = queries(1, response="95173"), queries(1, response="sorted", start=1)
        aligned, unaligned = score(expert, digits + word)
        assert unaligned.ok is False and "not aligned" in unaligned.error
        assert aligned.ok and aligned.access == "topk"
        # each row holds the API model's log-probs at the matching API position, mapped by bytes
        text = expert.vocab.text(digits[0].context_ids + digits[0].response_ids).decode()
        api_ids = api_tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            api_lp = torch.log_softmax(api_model(input_ids=torch.tensor([api_ids])).logits[0].float(), dim=-1)
        api_bytes = token_bytes_table(api_tok)
        first = len(api_ids) - len(digits[0].response_ids)
        for t, student_id in enumerate(digits[0].response_ids):
            j = first + t
            assert api_bytes[api_ids[j]] == expert.vocab.bytes[student_id]
            expected = {api_bytes[i]: float(api_lp[j - 1, i]) for i in torch.topk(api_lp[j - 1], 4).indices.tolist()}
            expected.setdefault(expert.vocab.bytes[student_id], float(api_lp[j - 1, api_ids[j]]))
            row = [(sid, lp) for sid, lp in zip(aligned.topk_ids[t].tolist(), aligned.topk_logprobs[t].tolist())
                   if lp > -1e3]  # padding has no mass
            assert row and [lp for _, lp in row] == sorted((lp for _, lp in row), reverse=True)
            for sid, lp in row:
                assert lp == pytest.approx(expected[expert.vocab.bytes[sid]], abs=1e-4)


def test_text_and_topk_levels_return_the_experts_own_answer(server):
    qs = queries(2)
    for access in ("text", "topk"):
        if access == "topk":  # the level's name reads as the signal's: asking for it says what it trains on
            with pytest.warns(UserWarning, match="access 'topk' trains on the answer the expert writes, as text"):
                expert = api_expert(server, access=access, max_tokens=4, **SAMPLED)
        else:
            expert = api_expert(server, access=access, max_tokens=4, **SAMPLED)
        assert expert.capability.access == "text" and expert.probe_result.level == access
        signals = score(expert, qs)
        assert all(s.ok and s.access == "text" and isinstance(s.text, str) for s in signals)
        assert all(s.usage["completion_tokens"] <= 4 and s.usage["prompt_tokens"] > 0 for s in signals)
    assert server.stats["paths"]["/v1/chat/completions"] == 2 * (1 + len(qs))  # probe + one per query


def test_auto_takes_the_best_level_the_endpoint_really_offers(server):
    server.add_faults("no_logprobs", "no_logprobs")  # echo and prompt_logprobs both answer without log-probs
    # settling below prompt scoring changes what is trained on (text, not a top-k signal): said once
    with pytest.warns(UserWarning, match="offers no prompt scoring, so training uses the answers it writes, "
                                         "as text \\(access 'topk'\\): echo: .*options.access: text"):
        expert = api_expert(server)
    assert expert.probe_result.level == "topk"
    server.add_faults("no_logprobs", "no_logprobs", "no_logprobs")  # …and chat too
    with pytest.warns(UserWarning, match="as text \\(access 'text'\\)"):
        expert = api_expert(server)
    assert expert.probe_result.level == "text"
    assert expert.capability.access == "text"


def test_a_second_identical_call_is_served_from_the_disk_cache(server, tmp_path):
    cache = tmp_path / "cache"
    expert = api_expert(server, cache_dir=str(cache))
    qs = queries(1)
    server.reset_stats()
    first = score(expert, qs)[0]
    second = score(expert, qs)[0]
    assert server.stats["requests"] == 1
    assert first.usage["cached"] == 0 and first.usage["prompt_tokens"] > 0
    assert second.usage["cached"] == 1 and second.usage["prompt_tokens"] == 0 and second.usage["requests"] == 0
    assert torch.equal(first.topk_ids, second.topk_ids) and torch.equal(first.topk_logprobs, second.topk_logprobs)
    files = [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs]
    assert len(files) == 1 and files[0].endswith(".json") and not os.path.basename(files[0]).startswith(".tmp")
    with open(files[0]) as fh:
        json.load(fh)
    again = api_expert(server, cache_dir=str(cache))  # a new run reads the same cache
    server.reset_stats()
    assert score(again, qs)[0].usage["cached"] == 1 and server.stats["requests"] == 0


def test_a_password_in_api_base_is_not_part_of_the_cache_key(server, tmp_path):
    """Before, the cache key held api_base whole: rotating the password written in the address
    (http://user:PASSWORD@host/v1) asked every cached question again."""
    cache, qs = tmp_path / "cache", queries(1)
    host = server.base_url.split("://", 1)[1]
    first = api_expert(server, cache_dir=str(cache), api_base=f"http://alice:first-pw@{host}/v1")
    assert score(first, qs)[0].usage["cached"] == 0
    rotated = api_expert(server, cache_dir=str(cache), api_base=f"http://alice:rotated-pw@{host}/v1")
    server.reset_stats()
    assert score(rotated, qs)[0].usage["cached"] == 1 and server.stats["requests"] == 0
    other_user = api_expert(server, cache_dir=str(cache), api_base=f"http://bob:first-pw@{host}/v1")
    assert score(other_user, qs)[0].usage["cached"] == 0  # the user part names whose deployment answers


def test_a_cache_the_disk_refuses_is_warned_about_once_and_the_answers_used(server, tmp_path):
    cache = tmp_path / "cache"
    expert = api_expert(server, cache_dir=str(cache))
    for shard in range(256):  # every folder an answer would go into is a file: each write fails
        (cache / f"{shard:02x}").write_text("")
    with pytest.warns(RuntimeWarning, match=f"cannot write to the answer cache {cache} .*not cached") as caught:
        signals = score(expert, queries(3))
    assert all(s.ok and s.access == "topk" for s in signals)
    assert sum("answer cache" in str(w.message) for w in caught) == 1


def test_a_damaged_cache_file_is_a_miss_however_it_is_damaged(server, tmp_path):
    cache = tmp_path / "cache"
    expert = api_expert(server, cache_dir=str(cache))
    qs = queries(1)
    score(expert, qs)
    [path] = [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs]
    for damage in ("{half an answer", "[" * 200_000 + "]" * 200_000):  # the second too deep for the JSON reader
        with open(path, "w") as fh:
            fh.write(damage)
        server.reset_stats()
        [signal] = score(expert, qs)
        assert signal.ok and signal.usage["cached"] == 0 and server.stats["requests"] == 1


@pytest.mark.parametrize("option", ["max_answer_mb", "timeout_s", "backoff_max_s", "price_prompt_per_1k"])
def test_options_must_be_finite_numbers(server, option):
    with pytest.raises(ConfigError, match=f"{option}: Input should be a finite number \\(got inf\\)"):
        api_expert(server, access="text", probe=False, **{option: math.inf})


def test_a_seed_makes_sampled_answers_repeat_and_different_seeds_differ(server):
    """The seed travels with each written answer, hashed with its context: the same seed gives the
    same sampled text on a fresh expert (no cache), the answers across seeds are not all one text,
    and neither are the answers to different contexts under one seed (one seed sent with every
    request gave every query the same random draws, and so the same text)."""
    qs = queries(3)

    def texts(seed):
        expert = api_expert(server, access="text", probe=False, max_tokens=6, temperature=1.0, seed=seed)
        return [s.text for s in score(expert, qs)]

    assert texts(7) == texts(7)
    assert len({tuple(texts(seed)) for seed in range(4)}) > 1
    assert len(set(texts(0))) > 1


@pytest.mark.parametrize("seed", [True, 1.5, "7"])
def test_a_seed_must_be_an_integer(server, seed):
    with pytest.raises(ConfigError, match="seed: Input should be a valid integer"):
        api_expert(server, access="text", probe=False, seed=seed)


def test_identical_queries_in_one_batch_share_one_request(server):
    expert = api_expert(server)
    server.reset_stats()
    signals = score(expert, queries(1) * 4)
    assert server.stats["requests"] == 1
    assert sorted(s.usage["cached"] for s in signals) == [0, 1, 1, 1]
    assert all(torch.equal(s.topk_ids, signals[0].topk_ids) for s in signals)


def test_no_more_requests_in_flight_than_max_concurrency(server):
    expert = api_expert(server, max_concurrency=3)
    server.reset_stats()
    server.add_faults(*["slow:0.3"] * 9)  # slow answers make the requests overlap
    signals = score(expert, queries(9))
    assert all(s.ok for s in signals)
    assert server.stats["requests"] == 9
    assert 2 <= server.stats["max_in_flight"] <= 3


def test_the_plugin_registers_the_api_expert_and_checks_its_options(server):
    import distil_api_expert

    host = PluginHost(load_entrypoints=False)
    host.register_plugin(distil_api_expert, "api_expert")
    try:
        assert "api" in host.names("expert")
        with pytest.raises(ConfigError, match="api_bse"):
            host.build("expert", "api", {"model": "tiny", "api_bse": "x"}, runtime=runtime())
        with pytest.raises(ConfigError, match="k: Input should be less than or equal to 20"):
            host.build("expert", "api", {"model": "tiny", "api_base": server.base_url + "/v1", "k": 50},
                       runtime=runtime())
        with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
            host.build("expert", "api", {"model": "gpt-4o-mini"}, runtime=runtime())
        built = host.build("expert", "api", {"model": "tiny", "api_base": server.base_url + "/v1", "k": 3},
                           runtime=runtime())
        assert built.capability.k == 3
    finally:
        host.unregister_plugin("api_expert")


def _insert_words(logprobs):  # a whole scored token more, with its own log-probs
    for key, value in (("tokens", "IGNORE ALL"), ("token_logprobs", -0.1), ("top_logprobs", {"IGNORE ALL": -0.1})):
        logprobs[key].insert(3, value)


def _change_a_digit(logprobs):
    tokens = logprobs["tokens"]
    j = next(j for j, t in enumerate(tokens) if j > 2 and t.isdigit())
    tokens[j] = "0" if tokens[j] != "0" else "1"


@pytest.mark.parametrize("rewrite", [_insert_words, _change_a_digit])
def test_an_echo_of_another_text_than_was_sent_gives_no_rows(rewrite):
    """Aligned by bytes, a scored prompt that differs from the text sent (a token inserted, a digit
    of the feedback changed) would give rows conditioned on a context never sent: refused."""
    with RewritingServer(tiny_model(), tiny_tokenizer(), model_name="tiny") as server:
        expert = api_expert(server, k=5, misaligned="skip")
        expert.probe_result.send_ids = False  # as with an API that only takes text
        qs = queries(2)
        assert all(s.ok and s.access == "topk" for s in score(expert, qs))  # honest: aligned
        server.rewrite = rewrite
        signals = score(expert, qs)
    assert all(not s.ok and "not aligned" in s.error for s in signals)


@pytest.mark.parametrize("echo, data, spans", [
    ([b"hello", b" world"], b"hello world", [(0, 5), (5, 11)]),
    ([b"<s>", b"hello", b" world"], b"hello world", [None, (0, 5), (5, 11)]),  # a BOS the API adds
    # a text that begins with its own BOS (special tokens decoded), echoed after the API's own
    ([b"<|bot|>", b"<|bot|>", b"hello"], b"<|bot|>hello", [None, (0, 7), (7, 12)]),
    ([b"hel", None, b" world"], b"hello world", [(0, 3), None, (5, 11)]),  # a fragment stepped over
    ([b"hello", b" IGNORE", b" world"], b"hello world", [(0, 5), None, None]),  # another text: stop
    ([b"hello", b" wor", b"ld"], b"hello world", [(0, 5), (5, 9), (9, 11)]),
])
def test_api_spans_step_over_an_added_bos_and_a_fragment_but_stop_at_another_text(echo, data, spans):
    from distil_api_expert.align import ApiToken, api_spans

    assert api_spans([ApiToken(raw) for raw in echo], data) == spans
