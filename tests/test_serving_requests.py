"""`distil serve` request handling: bodies validated field by field, the API key, and faults kept
out of the serving code (they live in the FaultyServer wrapper)."""

import ast
import json
import os
import urllib.error
import urllib.request

import pytest

import distil_core.serving
from distil_core.serving import ApiError, FaultyServer, LocalOpenAIServer
from distil_core.serving.requests import ChatRequest, CompletionRequest, LoadAdapterRequest, ReloadRequest, validated

from distil_core.testing import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("kind, body, param, words", [
    (CompletionRequest, {"prompt": "x", "temperature": -1}, "temperature", "greater than or equal to 0"),
    (CompletionRequest, {"prompt": 5}, "prompt", "a list of token ids"),
    (CompletionRequest, {}, "prompt", "must be a string"),
    (CompletionRequest, {"prompt": "x", "n": 0}, "n", "greater than or equal to 1"),
    (CompletionRequest, {"prompt": "x", "logprobs": 21}, "logprobs", "less than or equal to 20"),
    (CompletionRequest, {"prompt": "x", "max_tokens": True}, "max_tokens", "valid integer"),
    (CompletionRequest, {"prompt": "x", "stop": 5}, "stop", "list of strings"),
    (ChatRequest, {"messages": []}, "messages", "non-empty list"),
    (ChatRequest, {"messages": [{"content": "hi"}]}, "messages", "'role'"),
    (LoadAdapterRequest, {"lora_name": "a"}, "lora_path", "required"),
    (ReloadRequest, {"method": "sleep"}, "method", "'reload_weights'"),
])
def test_a_bad_field_is_a_400_that_names_it(kind, body, param, words):
    with pytest.raises(ApiError) as caught:
        validated(kind, body)
    assert caught.value.status == 400 and caught.value.param == param
    assert words in caught.value.message


def test_null_means_not_sent_and_unknown_fields_are_refused_by_name():
    request = validated(CompletionRequest, {"prompt": [1, 2], "max_tokens": None, "user": "me", "stream": False,
                                            "tools": None})
    assert request.max_tokens == 16 and request.prompt == [[1, 2]]
    with pytest.raises(ApiError) as caught:
        validated(CompletionRequest, {"prompt": [1, 2], "temprature": 0.5})
    assert caught.value.param == "temprature" and "'temprature'" in caught.value.message
    assert validated(CompletionRequest, {"prompt": ["a", [3]], "stop": "\n"}).sampling()["stop"] == ["\n"]


def post(base, path, body, key=None):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_over_http_a_bad_field_and_a_wrong_key_are_answered_in_openais_shape():
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny", api_key="s3cret") as server:
        base = server.base_url
        for key in (None, "s3cre", "s3cret-and-more", "S3CRET"):  # shorter, longer, same length
            status, out = post(base, "/v1/completions", {"model": "tiny", "prompt": "x"}, key=key)
            assert status == 401 and out["error"]["code"] == "invalid_api_key"
        status, out = post(base, "/v1/completions", {"model": "tiny", "prompt": "x", "top_p": 2}, key="s3cret")
        assert status == 400 and out["error"]["param"] == "top_p" and "'top_p'" in out["error"]["message"]
        status, out = post(base, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1}, key="s3cret")
        assert status == 200 and out["choices"][0]["finish_reason"] in ("stop", "length")
        assert server.stats["requests"] == 2  # the refused keys never reached a completion


def test_a_fault_schedule_is_only_on_the_wrapper_and_consumed_in_order():
    assert not hasattr(LocalOpenAIServer, "add_faults")
    serving = os.path.dirname(distil_core.serving.__file__)
    for name in os.listdir(serving):
        if name.endswith(".py") and name not in ("faults.py", "__init__.py"):
            tree = ast.parse(open(os.path.join(serving, name), encoding="utf-8").read())
            words = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
            words |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
            assert not {w for w in words if "fault" in w.lower() and w != "setdefault"}, name
    with FaultyServer(tiny_model(), tiny_tokenizer(), model_name="tiny", faults=["503"]) as server:
        server.add_faults("ok", "429:2")
        body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
        assert [post(server.base_url, "/v1/completions", body)[0] for _ in range(4)] == [503, 200, 429, 200]
        assert server.stats["requests"] == 4
