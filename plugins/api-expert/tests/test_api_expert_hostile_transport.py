"""A hostile or broken server at the transport: trickled bytes, huge Retry-After, bogus usage,
log-probs that are not numbers, bodies that are not JSON objects or are far too large.

Each case is a real HTTP server on 127.0.0.1: either a scripted one, or a proxy in front of the
session's real model server that rewrites its answers. Whatever the server does, ``score()``
returns on time with a failed signal naming the reason (which the trainer counts as
``expert_failed``), never a raw exception or a hang.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

import pytest

from distil_core import ConfigError
from distil_api_expert.align import PAD_LOGPROB
from distil_api_expert.session import retry_policy

from api_expert_testlib import SAMPLED, api_expert, queries, tiny_tokenizer

# -- a scripted server on 127.0.0.1 ---------------------------------------------------------------


class Hostile:
    """A real HTTP server whose POST answers come from ``self.behave(handler, path, request)``.

    ``proxy_to`` (a base URL) makes the default behaviour forward the request to a real server
    and return its answer through ``self.mutate(path, request, answer)`` when one is set.
    """

    def __init__(self, proxy_to: Optional[str] = None):
        self.proxy_to = proxy_to
        self.behave: Callable[..., None] = self.forward
        self.mutate: Optional[Callable[[str, dict, Any], Any]] = None
        self.reject_echo = False  # answer 400 to echo requests (an endpoint without echo)
        self.requests: list[float] = []  # monotonic arrival times of the POSTs
        self.stop = threading.Event()
        self.finished = threading.Event()  # a streaming behaviour ended (completed or aborted)
        self.completed: Optional[bool] = None  # whether that behaviour wrote its whole body
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                owner.requests.append(time.monotonic())
                owner.behave(self, self.path, request)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Hostile":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # behaviours

    def forward(self, handler, path: str, request: dict) -> None:
        if self.reject_echo and request.get("echo"):
            return send(handler, 400, {"error": {"message": "echo is not supported", "type": "invalid_request_error"}})
        upstream = urllib.request.Request(self.proxy_to + path, data=json.dumps(request).encode(),
                                          headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(upstream, timeout=30) as answer:
                status, data = answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            status, data = exc.code, json.loads(exc.read())
        if status == 200 and self.mutate is not None:
            data = self.mutate(path, request, data)
        send(handler, status, data)

    def stream(self, handler, head: dict[str, str], pieces, interval_s: float = 0.0, status: int = 200) -> None:
        """Headers at once, then ``pieces`` of the body, ``interval_s`` apart, until the client leaves."""
        self.completed = False
        try:
            handler.send_response(status)
            for name, value in head.items():
                handler.send_header(name, value)
            handler.end_headers()
            for piece in pieces:
                handler.wfile.write(piece)
                handler.wfile.flush()
                if interval_s and self.stop.wait(interval_s):
                    return
            self.completed = True
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.finished.set()


def send(handler, status: int, data: Any, headers: Optional[dict[str, str]] = None) -> None:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()  # NaN/inf as JSON5-style literals
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def hostile():
    with Hostile() as server:
        yield server


@pytest.fixture
def proxy(server):
    with Hostile(proxy_to=server.base_url) as front:
        yield front


def score_within(expert, qs, seconds: float):
    """``expert.score(qs)`` and how long it took; a hang past ``seconds`` fails the test (the
    bound is generous: what is under test is that the call ends, not how fast the machine is)."""
    async def run():
        return await asyncio.wait_for(expert.score(qs), seconds)

    start = time.monotonic()
    signals = asyncio.run(run())
    return signals, time.monotonic() - start


def fake(base_url: str):
    return type("S", (), {"base_url": base_url})


def client_options(client: str) -> dict[str, Any]:
    if client == "litellm":
        pytest.importorskip("litellm")
        return {"client": "litellm", "model": "openai/tiny"}
    return {}


CHAT_ANSWER = {"id": "x", "object": "chat.completion", "model": "tiny",
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "The expected answer is 123."}}],
               "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}

# -- 1. a trickling server meets the deadline -------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")
@pytest.mark.parametrize("client", ["openai", "litellm"])
def test_a_server_that_trickles_bytes_fails_the_query_at_the_deadline(hostile, client):
    body = json.dumps(CHAT_ANSWER).encode()
    # one byte every half second: each read arrives well within timeout_s, the whole never does
    hostile.behave = lambda h, path, request: hostile.stream(
        h, {"Content-Type": "application/json", "Content-Length": str(len(body))},
        (body[i:i + 1] for i in range(len(body))), interval_s=0.5)
    expert = api_expert(fake(hostile.base_url), access="text", probe=False, timeout_s=2.0, max_retries=0,
                        **client_options(client))
    [signal], took = score_within(expert, queries(1), 30)
    assert not signal.ok and "timed out" in signal.error.lower()
    assert signal.usage["requests"] == 1
    assert took < 2.0 + 3.0  # the deadline (timeout_s) is the behaviour under test; 3 s of slack
    assert hostile.finished.wait(10) and hostile.completed is False  # the client hung up on it


def test_each_retry_of_a_trickling_server_has_its_own_deadline(hostile):
    body = json.dumps(CHAT_ANSWER).encode()
    hostile.behave = lambda h, path, request: hostile.stream(
        h, {"Content-Type": "application/json", "Content-Length": str(len(body))},
        (body[i:i + 1] for i in range(len(body))), interval_s=0.5)
    expert = api_expert(fake(hostile.base_url), access="text", probe=False, timeout_s=1.0, max_retries=1,
                        backoff_s=0.0)
    [signal], took = score_within(expert, queries(1), 30)
    assert not signal.ok and "gave up after 2 attempts" in signal.error and "timeout_s=1" in signal.error
    assert signal.usage["requests"] == 2 and len(hostile.requests) == 2
    assert took < 2 * 1.0 + 3.0  # two deadlines of timeout_s, plus slack


# -- 2. Retry-After is capped by backoff_max_s ------------------------------------------------------


def _in_an_hour() -> dict[str, str]:
    return {"Retry-After": email.utils.formatdate(time.time() + 3600, usegmt=True)}


@pytest.mark.parametrize("asked", [{"Retry-After": "3600"}, {"retry-after-ms": "3600000"}, "date"])
def test_a_retry_after_of_an_hour_waits_no_longer_than_backoff_max_s(hostile, asked):
    headers = _in_an_hour() if asked == "date" else asked
    hostile.behave = lambda h, path, request: send(
        h, 429, {"error": {"message": "slow down", "type": "rate_limit_error"}}, headers)
    expert = api_expert(fake(hostile.base_url), access="text", probe=False, max_retries=2, backoff_max_s=0.2)
    [signal], took = score_within(expert, queries(1), 20)
    assert not signal.ok and "gave up after 3 attempts" in signal.error
    gaps = [b - a for a, b in zip(hostile.requests, hostile.requests[1:])]
    assert len(gaps) == 2 and all(gap < 0.2 + 2.0 for gap in gaps)  # backoff_max_s, plus slack
    assert took < 2 * 0.2 + 3.0
    assert retry_policy(max_retries=2, backoff_s=0.5, backoff_max_s=0.2).delay(0, 3600.0) == 0.2


def test_a_capped_retry_after_still_gets_the_answer_when_the_server_recovers(proxy):
    first = {"done": False}

    def once_429(h, path, request):
        if not first["done"]:
            first["done"] = True
            return send(h, 429, {"error": {"message": "slow down"}}, {"Retry-After": "3600"})
        return proxy.forward(h, path, request)

    proxy.behave = once_429
    expert = api_expert(fake(proxy.base_url), access="text", probe=False, max_retries=2, backoff_max_s=0.2,
                        **SAMPLED)
    [signal], _ = score_within(expert, queries(1), 20)
    assert signal.ok and signal.usage["retries"] == 1 and signal.usage["requests"] == 2


# -- 3. usage that is not a count -----------------------------------------------------------------

BAD_USAGE = [
    ({"prompt_tokens": "lots", "completion_tokens": 0}, "usage.prompt_tokens is 'lots'"),
    ({"prompt_tokens": -500, "completion_tokens": -3}, "usage.prompt_tokens is -500"),
    ({"prompt_tokens": 1.5, "completion_tokens": 0}, "usage.prompt_tokens is 1.5"),
    ({"prompt_tokens": True, "completion_tokens": 0}, "usage.prompt_tokens is True"),
    ("lots", "usage is str 'lots'"),
    ([7, 7], "usage is list"),
]


@pytest.mark.parametrize("usage, warned", BAD_USAGE)
def test_usage_that_is_not_a_non_negative_count_is_ignored_with_a_warning(proxy, usage, warned):
    expert = api_expert(fake(proxy.base_url), price_prompt_per_1k=1.0, price_completion_per_1k=1.0)
    assert expert.probe_result.level == "prompt_scoring"  # the probe went through unchanged
    proxy.mutate = lambda path, request, answer: {**answer, "usage": usage}
    with pytest.warns(RuntimeWarning, match="counts as 0 tokens") as caught:
        [signal], _ = score_within(expert, queries(1), 30)
    assert any(warned in str(w.message) for w in caught)
    assert signal.ok and signal.access == "topk"  # the answer itself is used
    assert signal.usage["prompt_tokens"] == 0 and signal.usage["completion_tokens"] == 0
    assert signal.usage["cost_usd"] == 0.0


def test_a_good_count_next_to_a_bad_one_is_kept(proxy):
    expert = api_expert(fake(proxy.base_url), access="text", probe=False, price_prompt_per_1k=1.0,
                        price_completion_per_1k=1.0, **SAMPLED)
    proxy.mutate = lambda path, request, answer: {**answer, "usage": {"prompt_tokens": 40, "completion_tokens": -9}}
    with pytest.warns(RuntimeWarning, match="usage.completion_tokens is -9"):
        [signal], _ = score_within(expert, queries(1), 30)
    assert signal.ok and signal.usage["prompt_tokens"] == 40 and signal.usage["completion_tokens"] == 0
    assert signal.usage["cost_usd"] == pytest.approx(0.04)


# -- 4. log-probs that are not log-probs ----------------------------------------------------------

NOT_LOGPROBS = ["-0.5", True, math.inf, math.nan, [-1.0], 2.5]


def _echo_at(answer: dict, position: int, value: Any, field: str) -> dict:
    lp = answer["choices"][0]["logprobs"]
    if field == "token_logprobs":
        lp["token_logprobs"][position] = value
    else:
        top = lp["top_logprobs"][position]
        top[next(iter(top))] = value
    return answer


@pytest.mark.parametrize("value", NOT_LOGPROBS, ids=repr)
@pytest.mark.parametrize("probe, field", [(True, "token_logprobs"), (True, "top_logprobs"), (False, "top_logprobs")],
                         ids=["by_id-own", "by_id-top", "by_bytes-top"])
def test_echoed_logprobs_that_are_not_numbers_fail_that_query(proxy, field, value, probe):
    options = {} if probe else {"access": "prompt_scoring", "probe": False}
    expert = api_expert(fake(proxy.base_url), misaligned="skip", **options)
    proxy.mutate = lambda path, request, answer: _echo_at(answer, -2, value, field)
    [signal], _ = score_within(expert, queries(1), 30)
    assert not signal.ok and "log-probs are malformed" in signal.error and "prompt token" in signal.error
    assert signal.usage["requests"] == 1  # a broken answer is not asked again


def _prompt_logprobs_at(answer: dict, position: int, edit: Callable[[dict], None]) -> dict:
    edit(answer["choices"][0]["prompt_logprobs"][position])
    return answer


def _first_item(entry: dict) -> dict:
    return entry[next(iter(entry))]


@pytest.mark.parametrize("edit, said", [
    (lambda e: _first_item(e).update(logprob="-0.5"), "is not a number"),
    (lambda e: _first_item(e).update(logprob=math.inf), "not a number ≤ 0"),
    (lambda e: _first_item(e).update(logprob=[-1.0]), "is not a number"),
    (lambda e: e.update({"seven": {"logprob": -1.0, "decoded_token": "7"}}), "is not a token id"),
    (lambda e: e.update({"\u00b2": {"logprob": -1.0, "decoded_token": "7"}}), "is not a token id"),  # isdigit()
    (lambda e: e.update({"-3": {"logprob": -1.0, "decoded_token": "7"}}), "is not a token id"),
    (lambda e: e.update({"9": "-1.0"}), "expected an object"),
], ids=["string", "inf", "list", "key", "superscript_key", "negative_key", "item"])
def test_prompt_logprobs_that_are_not_numbers_fail_that_query(proxy, edit, said):
    proxy.reject_echo = True  # a vLLM-like endpoint: prompt_logprobs instead of echo
    expert = api_expert(fake(proxy.base_url))
    assert (expert.probe_result.level, expert.probe_result.variant) == ("prompt_scoring", "prompt_logprobs")
    proxy.mutate = lambda path, request, answer: _prompt_logprobs_at(answer, -2, edit)
    [signal], _ = score_within(expert, queries(1), 30)
    assert not signal.ok and "log-probs are malformed" in signal.error and said in signal.error


def test_alternatives_the_student_has_no_token_for_fold_into_the_tail(proxy):
    proxy.reject_echo = True
    expert = api_expert(fake(proxy.base_url))
    vocab = len(tiny_tokenizer())

    def foreign(entry: dict) -> None:  # ids only the API's model has (padding rows, added tokens)
        entry[str(vocab + 5)] = {"logprob": -8.01, "decoded_token": "\u2603"}
        entry[str(10 ** 12)] = {"logprob": -8.02, "decoded_token": "zz"}

    proxy.mutate = lambda path, request, answer: _prompt_logprobs_at(answer, -2, foreign)
    [signal], _ = score_within(expert, queries(1), 30)
    assert signal.ok and signal.topk_ids.min() >= 0 and signal.topk_ids.max() < vocab


def test_echoed_alternatives_spelled_as_ids_outside_the_vocabulary_fold_into_the_tail(proxy):
    expert = api_expert(fake(proxy.base_url))
    vocab = len(tiny_tokenizer())

    def foreign(path, request, answer):
        top = answer["choices"][0]["logprobs"]["top_logprobs"][-2]
        top.update({"token_id:-5": -8.01, f"token_id:{vocab + 3}": -8.02, "\u2603\u2603": -8.03})
        return answer

    proxy.mutate = foreign
    [signal], _ = score_within(expert, queries(1), 30)
    assert signal.ok and signal.topk_ids.min() >= 0 and signal.topk_ids.max() < vocab


def test_echoed_ids_spelled_with_digits_int_cannot_read_are_text_not_a_crash(proxy):
    expert = api_expert(fake(proxy.base_url))
    vocab = len(tiny_tokenizer())

    def foreign(path, request, answer):  # "\u00b2".isdigit() is true, int("\u00b2") is an error
        top = answer["choices"][0]["logprobs"]["top_logprobs"][-2]
        top.update({"token_id:\u00b2": -8.01, "token_id:\u0663": -8.02})
        return answer

    proxy.mutate = foreign
    [signal], _ = score_within(expert, queries(1), 30)
    assert signal.ok and signal.topk_ids.min() >= 0 and signal.topk_ids.max() < vocab


@pytest.mark.parametrize("misaligned", ["skip", "text"])
def test_echoed_tokens_the_student_cannot_spell_are_misaligned_not_a_crash(proxy, misaligned):
    expert = api_expert(fake(proxy.base_url), misaligned=misaligned, max_tokens=3, **SAMPLED)

    def garbled(path, request, answer):
        if request.get("echo"):
            answer["choices"][0]["logprobs"]["tokens"][-2] = "\u2603 no such token"
        return answer

    proxy.mutate = garbled
    [signal], _ = score_within(expert, queries(1), 30)
    assert signal.usage["misaligned"] == 1
    if misaligned == "skip":
        assert not signal.ok and signal.error.startswith("not aligned:")
    else:  # the documented fallback: the query is answered as text
        assert signal.ok and signal.access == "text"


@pytest.mark.filterwarnings("ignore:expert 'api'. access 'topk' trains on:UserWarning")
@pytest.mark.parametrize("value", ["-0.5", True, math.inf, [-1.0]], ids=repr)
def test_chat_logprobs_that_are_not_numbers_fail_that_query(proxy, value):
    expert = api_expert(fake(proxy.base_url), access="topk", probe=False, max_tokens=3)

    def spoil(path, request, answer):
        entry = answer["choices"][0]["logprobs"]["content"][0]
        entry["top_logprobs"][0]["logprob"] = value
        return answer

    proxy.mutate = spoil
    [signal], _ = score_within(expert, queries(1), 30)
    assert not signal.ok and "log-probs are malformed" in signal.error and "answer token 0" in signal.error


# -- 5. bodies that are not a JSON object, or far too large ----------------------------------------


@pytest.mark.parametrize("body, said", [
    (b"<html>502 Bad Gateway</html>", "malformed"),
    (b"[1, 2, 3]", "not an object"),
    (b'"just a string"', "not an object"),
    (b"null", "not an object"),
    (b"\xff\xfe\xfa not utf-8", "malformed"),
    (b'{"choices": "none"}', "no choices"),
    (b'{"choices": [{"message": "hi"}]}', "no text"),
], ids=["html", "array", "string", "null", "bytes", "choices", "message"])
def test_an_answer_that_is_not_a_usable_json_object_fails_that_query(hostile, body, said):
    hostile.behave = lambda h, path, request: send(h, 200, body)
    expert = api_expert(fake(hostile.base_url), access="text", probe=False, max_retries=2)
    [signal], _ = score_within(expert, queries(1), 30)
    assert not signal.ok and said in signal.error
    assert signal.usage["requests"] == 1  # not retried: the same server would say the same


FIFTY_MB = 50 * 2**20


HUGE = {  # what a server sends 50 MB of, and what the refusal says
    "answer": (200, "application/json", b" " * 2**20, 50, "1 MB"),
    "error": (503, "text/html", b"<p>busy</p>" * 2**16, 80, "the error answer (HTTP 503)"),
}


@pytest.mark.parametrize("kind", list(HUGE))
@pytest.mark.parametrize("declared", [True, False], ids=["content_length", "until_close"])
def test_a_huge_answer_is_refused_at_the_cap_not_read_whole(hostile, declared, kind):
    """An answer, or an error answer (which the provider's SDK would otherwise read whole on its
    own), is cut off at max_answer_mb: refused, not retried like a 503 that could be read."""
    status, content_type, chunk, chunks, said = HUGE[kind]
    head = {"Content-Type": content_type}
    if declared:
        head["Content-Length"] = str(FIFTY_MB)
    hostile.behave = lambda h, path, request: hostile.stream(h, head, (chunk for _ in range(chunks)), status=status)
    expert = api_expert(fake(hostile.base_url), access="text", probe=False, max_answer_mb=1)
    [signal], _ = score_within(expert, queries(1), 60)
    assert not signal.ok and "max_answer_mb" in signal.error and said in signal.error
    assert signal.usage["requests"] == 1
    # the client hung up long before the 50 MB were through (socket buffers hold a few MB at most)
    assert hostile.finished.wait(30) and hostile.completed is False


@pytest.mark.parametrize("status", [200, 503])
def test_a_compressed_answer_that_unpacks_past_the_cap_is_refused(hostile, status):
    """A small gzip body that unpacks to 50 MB: the cap counts what it unpacks to, for an answer
    and for an error answer (which the provider's SDK reads whole on its own)."""
    import gzip

    bomb = gzip.compress(b" " * FIFTY_MB)  # about 50 KB on the wire
    head = {"Content-Type": "application/json", "Content-Encoding": "gzip", "Content-Length": str(len(bomb))}
    hostile.behave = lambda h, path, request: hostile.stream(h, head, [bomb], status=status)
    expert = api_expert(fake(hostile.base_url), access="text", probe=False, max_answer_mb=1)
    [signal], _ = score_within(expert, queries(1), 60)
    assert not signal.ok and "unpacks (gzip) past 1048576 bytes" in signal.error and "max_answer_mb" in signal.error
    assert signal.usage["requests"] == 1


def test_a_compressed_answer_within_the_cap_is_read(hostile):
    import gzip

    body = gzip.compress(json.dumps(CHAT_ANSWER).encode())
    head = {"Content-Type": "application/json", "Content-Encoding": "gzip", "Content-Length": str(len(body))}
    hostile.behave = lambda h, path, request: hostile.stream(h, head, [body])
    expert = api_expert(fake(hostile.base_url), access="text", probe=False, max_answer_mb=1)
    [signal], _ = score_within(expert, queries(1), 60)
    assert signal.ok and signal.text == "The expected answer is 123."


def test_minus_infinity_is_no_mass_not_a_broken_answer(proxy):
    expert = api_expert(fake(proxy.base_url))

    def impossible(path, request, answer):  # log p = -inf: a token the expert rules out
        top = answer["choices"][0]["logprobs"]["top_logprobs"][-2]
        top[next(iter(top))] = -math.inf
        return answer

    proxy.mutate = impossible
    [signal], _ = score_within(expert, queries(1), 30)
    assert signal.ok and bool(signal.topk_logprobs.isfinite().all())
    assert float(signal.topk_logprobs.min()) >= PAD_LOGPROB


@pytest.mark.parametrize("variant", ["echo", "prompt_logprobs"])
def test_alternatives_holding_more_than_all_the_probability_fail_that_query(proxy, variant):
    proxy.reject_echo = variant == "prompt_logprobs"
    expert = api_expert(fake(proxy.base_url))
    assert expert.probe_result.variant == variant

    def inflate(path, request, answer):  # every alternative nearly certain: about k times all there is
        choice = answer["choices"][0]
        if variant == "echo":
            top = choice["logprobs"]["top_logprobs"][-2]
            top.update({token: -0.0001 for token in top})
        else:
            for item in choice["prompt_logprobs"][-2].values():
                item["logprob"] = -0.0001
        return answer

    proxy.mutate = inflate
    [signal], _ = score_within(expert, queries(1), 30)
    assert not signal.ok and "log-probs are malformed" in signal.error and "prompt token" in signal.error
    assert "add up to a probability of" in signal.error and "more than 1" in signal.error


# -- 6. answers with nothing to train on -----------------------------------------------------------


def _written(content: str, finish: str) -> dict:
    return {**CHAT_ANSWER, "choices": [{"index": 0, "finish_reason": finish,
                                        "message": {"role": "assistant", "content": content}}]}


@pytest.mark.parametrize("content, finish, said", [
    ("", "length", "the answer is empty (finish_reason 'length': max_tokens ran out before any text"),
    (" \n ", "stop", "the answer is empty (finish_reason 'stop')"),
    ("The expected", "content_filter", "the provider withheld the answer (finish_reason 'content_filter')"),
    ("The expected answer is", "length", None),  # cut at max_tokens, but text: kept
], ids=["empty_length", "blank", "content_filter", "cut_with_text"])
def test_an_answer_with_nothing_to_train_on_fails_that_query(hostile, tmp_path, content, finish, said):
    hostile.behave = lambda h, path, request: send(h, 200, _written(content, finish))
    assert api_expert(fake(hostile.base_url), access="text").probe_result.level == "text"  # the probe only asks
    expert = api_expert(fake(hostile.base_url), access="text", probe=False, cache_dir=str(tmp_path))
    [signal], _ = score_within(expert, queries(1), 30)
    if said is None:
        assert signal.ok and signal.text == content
        return
    assert not signal.ok and said in signal.error
    assert signal.usage["requests"] == 1 and not any(files for _, _, files in os.walk(tmp_path))  # never cached


# -- 7. keys in what the provider says --------------------------------------------------------------


def _echo_key(status: int):
    def behave(handler, path, request):  # as some providers do: quote the key that was refused
        key = handler.headers.get("Authorization", "").removeprefix("Bearer ")
        send(handler, status, {"error": {"message": f"Invalid API key provided: {key}",
                                         "type": "invalid_request_error"}})
    return behave


def test_the_key_never_appears_in_a_message_the_expert_produces(hostile):
    hostile.behave = _echo_key(401)
    for key in ("gsk_LIVE0123456789abcdefXYZ", "AIzaSyD-0123456789abcdefghij"):
        with pytest.raises(ConfigError) as caught:
            api_expert(fake(hostile.base_url), api_key=key, access="text")
        assert key not in str(caught.value) and "Invalid API key provided: ***" in str(caught.value)
    hostile.behave = _echo_key(400)
    key = "sk-proj-SECRET0123456789abcdef"
    [signal], _ = score_within(api_expert(fake(hostile.base_url), api_key=key, access="text", probe=False),
                               queries(1), 30)
    assert not signal.ok and "Invalid API key provided: ***" in signal.error  # what metrics.jsonl records
    assert "SECRET" not in signal.error
    with pytest.raises(ConfigError, match="api_key: Input should be a valid string") as caught:
        api_expert(fake(hostile.base_url), api_key=12345678901234567890)
    assert "12345678901234567890" not in str(caught.value)


def test_a_password_or_key_written_into_api_base_never_appears_in_a_message(hostile):
    """Before, `api_base: http://alice:PASSWORD@host/v1` (or `?api-key=...`) was quoted whole in
    every message naming the endpoint, and sent as it was to the experiment trackers."""
    hostile.behave = _echo_key(401)
    host = hostile.base_url.removeprefix("http://")
    base = f"http://alice:S3cretPass@{host}/v1?api-key=S3cretQuery"
    with pytest.raises(ConfigError) as caught:
        api_expert(fake(hostile.base_url), api_base=base, api_key="sk-proj-SECRET0123456789abcdef", access="text")
    message = str(caught.value)
    assert "S3cretPass" not in message and "S3cretQuery" not in message and "SECRET" not in message, message
    assert f"http://alice:***@{host}/v1?api-key=***" in message, message
    from distil_core import redacted

    assert redacted({"expert": {"options": {"api_base": base}}}) == {
        "expert": {"options": {"api_base": f"http://alice:***@{host}/v1?api-key=***"}}}


def test_a_redirect_loop_is_named_and_not_asked_again(hostile):
    """Before: "gave up after 2 attempts: Connection error." after 42 requests: the loop was
    taken for a passing network failure and retried."""
    def loop(handler, path, request):
        handler.send_response(307)
        handler.send_header("Location", path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    hostile.behave = loop
    with pytest.raises(ConfigError) as caught:
        api_expert(fake(hostile.base_url), access="text", max_retries=3)
    message = str(caught.value)
    assert "TooManyRedirects" in message and "redirect" in message.lower(), message
    assert len(hostile.requests) <= 25, len(hostile.requests)  # one client's redirect limit, not retried


@pytest.mark.parametrize("base, shown", [
    ("http://h:8000/v1?api-key=abc+def&x=1", "http://h:8000/v1?api-key=***&x=1"),
    ("http://h:8000/v1?api_key=ab+cd%2Fef%3D%3D", "http://h:8000/v1?api_key=***"),
    ("http://h:8000/v1?API-Key=a%2bb", "http://h:8000/v1?API-Key=***"),
    ("https://sk-abc123@h/v1", "https://***@h/v1"),  # a token written as the user part
    ("http://localhost:11434/v1?token=1", "http://localhost:11434/v1?token=***"),  # the rest untouched
    ("http://localhost:11434/v1", "http://localhost:11434/v1"),
])
def test_secrets_in_an_address_are_masked_where_they_stand(base, shown):
    """Before, each secret was replaced wherever its text occurred: a `+` or `%2b` in a key left it
    whole, and `token=1` turned the port 11434 into `******434`."""
    from distil_core import redacted, redacted_url

    assert redacted_url(base) == shown and redacted({"api_base": base}) == {"api_base": shown}
