"""A rollout server's hostile answers, over real HTTP on 127.0.0.1: each is refused where it
enters, naming the address and what is wrong, instead of failing later as an IndexError, an
OverflowError or a device-side assert, or passing silently into training."""

import contextlib
import json
import math

import pytest

from distil_core.config import RolloutServer
from distil_core.rollouts.client import ServerClient, ServerError
from distil_core.rollouts.sampling import SamplingParams
from distil_core.rollouts.server import ServerGenerator
from distil_core.testing import scripted_server, tiny_model, tiny_tokenizer

MAX_TOKENS = 4


@contextlib.contextmanager
def json_server(models, completion, status=200, headers=(), declare_length=True):
    """A server on 127.0.0.1 answering GET /v1/models with ``models`` and any POST with
    ``completion`` (JSON, NaN allowed) under ``status`` and extra ``headers``; without
    ``declare_length``, the body is sent without Content-Length, ended by closing."""

    def answer(connection, request_line):
        listing = request_line.startswith(b"GET /v1/models")
        payload = json.dumps(models if listing else completion).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in ([] if listing else headers))
        status_line = "200 OK" if listing else f"{status} X"
        if declare_length:
            extra += f"Content-Length: {len(payload)}\r\n"
        connection.sendall(f"HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\n{extra}"
                           "Connection: close\r\n\r\n".encode() + payload)

    with scripted_server(answer) as (url, _seen):
        yield url


MODELS = {"data": [{"id": "tiny"}]}


def choice(tokens, logprobs, index=0, finish="length"):
    return {"index": index, "text": "", "finish_reason": finish,
            "logprobs": {"tokens": tokens, "token_logprobs": logprobs}}


def sample(url, n=1):
    tok = tiny_tokenizer()
    gen = ServerGenerator(tiny_model(), tok, RolloutServer(base_url=url, model="tiny", retries=0),
                          SamplingParams(max_new_tokens=MAX_TOKENS), mode="none", sync_dir="unused")
    try:
        return gen.sample([[1, 2, 3]], ["p"], n)
    finally:
        gen.close()


def test_a_well_formed_answer_is_taken_as_sent():
    answer = {"choices": [choice(["token_id:7", "token_id:299"], [-0.5, 0.0], index=1),
                          choice(["token_id:5"], [-1.25], index=0)]}
    with json_server(MODELS, answer) as url:
        first, second = sample(url, n=2)
    assert (first.response_ids, first.sampling_logprobs) == ([5], [-1.25])  # ordered by index
    assert (second.response_ids, second.sampling_logprobs) == ([7, 299], [-0.5, 0.0])


@pytest.mark.parametrize("answer, said", [
    ({"choices": [choice(["token_id:300"], [-0.1])]}, "token id 300, outside the policy's vocabulary (0 … 299)"),
    ({"choices": [choice(["token_id:999999999999"], [-0.1])]}, "outside the policy's vocabulary"),
    ({"choices": [choice(["token_id:-5"], [-0.1])]}, "returned the token 'token_id:-5' as text"),
    ({"choices": [choice(["token_id:\u00b2"], [-0.1])]}, "as text, not as 'token_id:N'"),
    ({"choices": [choice(["token_id:--5"], [-0.1])]}, "as text, not as 'token_id:N'"),
    ({"choices": [choice(["token_id:1", "token_id:2"], [math.nan, -0.5])]}, "the log-prob nan for token 0"),
    ({"choices": [choice(["token_id:1", "token_id:2"], [-0.5, math.inf])]}, "the log-prob inf for token 1"),
    ({"choices": [choice(["token_id:1"], [3.0])]}, "the log-prob 3.0 for token 0; a log-prob is a finite number at most 0"),
    ({"choices": [choice(["token_id:1"], [True])]}, "the log-prob True for token 0"),
    ({"choices": [choice(["token_id:1"], [10 ** 400])]}, "for token 0"),
    ({"choices": [choice(["token_id:1"], [-0.1, -0.2])]}, "returned 2 log-probs for 1 tokens"),
    ({"choices": [choice(["token_id:1"], 5)]}, "no log-probs for the sampled tokens"),
    ({"choices": [choice(5, [-0.1])]}, "no log-probs for the sampled tokens"),
    ({"choices": [choice(["token_id:1"] * 50, [-0.1] * 50)]}, "returned 50 tokens for max_tokens=4"),
    ({"choices": [1]}, "a choice that is not a JSON object"),
    ({"choices": []}, "answered with 0 choices for n=1"),
])
def test_a_hostile_completion_is_refused_naming_the_server_and_the_field(answer, said):
    with json_server(MODELS, answer) as url:
        with pytest.raises(ServerError, match=f"{url}/completions") as err:
            sample(url)
    assert said in str(err.value)


def test_choices_numbered_wrongly_are_refused():
    for indices in ([None, 1], [0, 0], [1, 2]):
        answer = {"choices": [choice(["token_id:1"], [-0.1], index=i) for i in indices]}
        with json_server(MODELS, answer) as url:
            with pytest.raises(ServerError, match=r"numbered its choices .*each of 0 … 1 should appear once"):
                sample(url, n=2)


@pytest.mark.parametrize("models", [{"data": None}, {"data": ["tiny"]}, ["tiny"]])
def test_a_model_list_of_the_wrong_shape_is_refused(models):
    with json_server(models, {}) as url:
        with pytest.raises(ServerError, match=f"{url}/models answered without a list of models"):
            sample(url)


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
def test_a_redirect_is_an_error_not_an_answer(status):
    """Followed, a POST's 301/302/303 becomes a bodiless GET whose answer passes for the POST's,
    and a 307/308 came back as its own answer: either way a policy sync would be lost without a
    word. The redirect here points at the server itself, so following it would succeed."""
    with json_server(MODELS, {"choices": []}, status=status, headers=[("Location", "/v1/models")]) as url:
        with pytest.raises(ServerError, match=rf"answered {status}, a redirect to /v1/models.*base_url must name"):
            ServerClient(url, retries=0).post("/load_lora_adapter", {"lora_name": "x"})


@pytest.mark.parametrize("declared", [True, False])
def test_an_answer_past_the_size_cap_is_refused_not_read_whole(declared):
    big = {"choices": [choice(["token_id:1"], [-0.1])], "padding": "x" * 5000}
    with json_server(MODELS, big, declare_length=declared) as url:
        with pytest.raises(ServerError, match=r"answered more than 4,000 bytes"):
            ServerClient(url, retries=0, max_answer_bytes=4000).post("/completions", {})
        assert ServerClient(url, retries=0, max_answer_bytes=6000).post("/completions", {})["choices"]
