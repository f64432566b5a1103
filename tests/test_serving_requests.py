"""`distil serve` request handling: bodies validated field by field, the API key, the HTTP
transport (bodies by Content-Length, clients that stall), models that misbehave (NaN logits, a
head padded past the tokenizer), adapters unloaded under waiting requests and damaged weight
files, and faults kept out of the serving code (they live in the FaultyServer wrapper)."""

import ast
import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import distil_core.serving
from distil_core.serving import ApiError, FaultyServer, LocalOpenAIServer, parse_fault
from distil_core.serving.requests import (GREEDY_BELOW, ChatRequest, CompletionRequest, LoadAdapterRequest,
                                          ReloadRequest, validated)

from distil_core.testing import tiny_model, tiny_tokenizer, wait_until


def user(content, **extra):
    return [{"role": "user", "content": content, **extra}]


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
    (CompletionRequest, {"prompt": "x", "temperature": float("inf")}, "temperature", "finite number"),
    (ChatRequest, {"messages": user([{"type": "text", "text": 5}])}, "messages",
     "'messages[0].content[0].text' must be a string"),
    (ChatRequest, {"messages": user([{"type": "text", "text": None}])}, "messages", "must be a string (got None)"),
    (ChatRequest, {"messages": user([{"type": "text", "text": "hi"},
                                     {"type": "image_url", "image_url": {"url": "x"}}])}, "messages",
     "'messages[0].content[1]': distil serve takes text parts only"),
    (ChatRequest, {"messages": user({"text": "hi"})}, "messages", "'messages[0].content' must be a string or a list"),
    (ChatRequest, {"messages": user(123)}, "messages", "(got int)"),
    (ChatRequest, {"messages": [{"role": 5, "content": "hi"}]}, "messages", "'messages[0].role' must be a string"),
    (ChatRequest, {"messages": user("hi", name=["al"])}, "messages", "'messages[0].name' must be a string (got list)"),
    (ChatRequest, {"messages": user("hi") + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages",
     "'messages[1].tool_calls': tool and function calling is not supported"),
    # a boolean is a JSON boolean: "yes" or 1 was read as true before
    (CompletionRequest, {"prompt": "x", "stream": "yes"}, "stream", "valid boolean"),
    (CompletionRequest, {"prompt": "x", "echo": 1}, "echo", "valid boolean"),
    (CompletionRequest, {"prompt": "x", "skip_special_tokens": "false"}, "skip_special_tokens", "valid boolean"),
    (CompletionRequest, {"prompt": "x", "return_tokens_as_token_ids": 0}, "return_tokens_as_token_ids", "valid boolean"),
    (ChatRequest, {"messages": user("hi"), "logprobs": "true"}, "logprobs", "valid boolean"),
    # a field of a message that is not read is refused by name (it was dropped without a word)
    (ChatRequest, {"messages": user("hi", foo={"a": 1})}, "messages", "'messages[0].foo' is not a field of a chat"),
    (ChatRequest, {"messages": [{"role": "assistant", "content": "x", "refusal": "no"}]}, "messages",
     "'messages[0].refusal'"),
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


def test_a_previous_answers_message_sent_back_whole_is_read():
    """The openai SDK's message dump holds empty fields this server does not read."""
    sent = {"role": "assistant", "content": "hi", "refusal": None, "annotations": [], "audio": None,
            "function_call": None, "tool_calls": None}
    assert validated(ChatRequest, {"messages": [sent]}).messages == [{"role": "assistant", "content": "hi"}]


def test_chat_text_parts_are_joined():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert validated(ChatRequest, {"messages": user(parts)}).messages == [{"role": "user", "content": "ab"}]
    assert validated(ChatRequest, {"messages": user(None)}).messages == [{"role": "user", "content": ""}]


def test_a_messages_name_reaches_a_template_that_renders_it():
    """A participant's ``name`` was dropped: a template that renders it never saw it."""
    import copy

    from distil_core import prompt_ids

    parsed = validated(ChatRequest, {"messages": user("hi", name="alice") + user([{"type": "text", "text": "yo"}],
                                                                              name="bob") + user("x", name=None)})
    assert parsed.messages == [{"role": "user", "content": "hi", "name": "alice"},
                               {"role": "user", "content": "yo", "name": "bob"}, {"role": "user", "content": "x"}]
    tok = copy.deepcopy(tiny_tokenizer())
    tok.chat_template = "{% for m in messages %}{{ m.get('name', 'anon') }}: {{ m.content }}\n{% endfor %}"
    assert tok.decode(prompt_ids(tok, parsed.messages)) == "alice: hi\nbob: yo\nanon: x\n"


def post(base, path, body, key=None, raw=None):
    """(status, the JSON answer, or its text when it is not JSON)."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text.decode()


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


@pytest.mark.parametrize("path, body, words", [
    ("/v1/completions", {"model": ["tiny"], "prompt": "1"}, "'model' must be a string naming a served model"),
    ("/v1/completions", {"model": {"id": "tiny"}, "prompt": "1"}, "got a dict"),
    ("/v1/chat/completions", {"model": 5, "messages": user("hi")}, "got a int"),
    ("/v1/completions", {"prompt": "1"}, "You must provide a model parameter"),
    ("/v1/chat/completions", {"model": None, "messages": user("hi")}, "You must provide a model parameter"),
])
def test_a_model_that_is_missing_or_not_a_name_is_a_400_naming_the_served_ones(server, path, body, words):
    status, out = post(server.base_url, path, body)
    assert status == 400 and out["error"]["param"] == "model", out
    assert words in out["error"]["message"] and "'tiny'" in out["error"]["message"]
    status, out = post(server.base_url, path, {**body, "model": "gpt-9"})
    assert status == 404 and out["error"]["code"] == "model_not_found"


def test_a_body_nested_too_deep_to_parse_is_a_400(server):
    deep = b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, out = post(server.base_url, "/v1/completions", None, raw=deep)
    assert status == 400 and "nested too deeply" in out["error"]["message"]


def send_raw(server, head, timeout_s=10.0):
    """(status, Connection header, JSON body) of the answer to the raw request bytes ``head``."""
    with socket.create_connection((server.host, server.port), timeout=timeout_s) as sock:
        sock.sendall(head)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("Connection"), json.loads(response.read())


@pytest.mark.parametrize("header, status, words", [
    (b"Content-Length: abc", 400, "'abc' is not a number of bytes"),
    (b"Content-Length: -1", 400, "'-1' is not a number of bytes"),
    (b"Content-Length: 1000000000000000", 413, "larger than distil serve reads (64 MiB)"),
    (b"Transfer-Encoding: chunked", 400, "Chunked body: the chunk size '{\"model\": \"tiny\""),  # sent plain
])
def test_a_body_length_it_cannot_read_is_refused_unread(server, header, status, words):
    body = b'{"model": "tiny", "prompt": "1", "max_tokens": 1}'
    head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n\r\n" + body
    got, connection, out = send_raw(server, head)
    assert got == status and words in out["error"]["message"] and connection == "close"
    assert post(server.base_url, "/v1/completions", json.loads(body))[0] == 200  # the server goes on


def test_a_client_that_stops_sending_its_body_loses_the_connection():
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny", read_timeout_s=0.5) as server:
        with socket.create_connection((server.host, server.port), timeout=20) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"model\"")
            assert sock.recv(1024) == b""  # closed by the server, long before our 20 s
        assert post(server.base_url, "/v1/completions", {"model": "tiny", "prompt": "1", "max_tokens": 1})[0] == 200


def test_a_temperature_too_small_to_divide_by_is_greedy(server):
    ask = {"model": "tiny", "prompt": "1 2", "max_tokens": 6, "logprobs": 1, "return_tokens_as_token_ids": True}
    status, greedy = post(server.base_url, "/v1/completions", {**ask, "temperature": 0})
    assert status == 200
    for temperature in (1e-45, 1e-300, GREEDY_BELOW / 2):  # 1/t overflows float32 (1e-45 is its smallest)
        status, out = post(server.base_url, "/v1/completions", {**ask, "temperature": temperature, "seed": 1})
        assert status == 200, out
        assert out["choices"][0]["logprobs"]["tokens"] == greedy["choices"][0]["logprobs"]["tokens"]
    status, out = post(server.base_url, "/v1/completions", None,
                       raw=b'{"model": "tiny", "prompt": "1", "temperature": Infinity}')
    assert status == 400 and out["error"]["param"] == "temperature"


def assert_every_decoding_path_answers_500(model):
    """Greedy, sampled and prompt-scoring requests to ``model`` each get the 500 naming the logits."""
    with LocalOpenAIServer(model, tiny_tokenizer(), model_name="tiny") as server:
        ask = {"model": "tiny", "prompt": "1 2", "max_tokens": 3}
        for extra in ({"temperature": 0}, {"temperature": 1.0, "seed": 1},
                      {"max_tokens": 0, "echo": True, "logprobs": 1}):
            status, out = post(server.base_url, "/v1/completions", {**ask, **extra})
            assert status == 500 and "logits are NaN or infinite" in out["error"]["message"], (extra, out)


def test_a_model_whose_logits_are_nan_answers_a_500_that_says_so():
    model = tiny_model()
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))  # broken weights: every logit is NaN
    assert_every_decoding_path_answers_500(model)


def test_a_model_whose_logits_hold_plus_infinity_answers_a_500_not_nan_log_probs():
    model = tiny_model()
    overflow = torch.zeros(model.config.vocab_size)
    overflow[7] = float("inf")  # one logit overflowed in a low-precision dtype; the rest are finite
    model.lm_head.register_forward_hook(lambda module, args, out: out + overflow)
    assert_every_decoding_path_answers_500(model)


def test_a_model_with_more_ids_than_its_tokenizer_answers_with_the_tokenizers_ids_only():
    from distil_core.models.tiny import build_model

    tok = tiny_tokenizer()
    padded = len(tok) + 64  # heads padded to a round size, as many checkpoints have
    model = build_model(padded, hidden_size=32, layers=1, heads=2, seed=0, pad_token_id=tok.pad_token_id,
                        eos_token_id=tok.eos_token_id)
    favour = torch.zeros(padded)
    favour[len(tok):] = 50.0  # the padding ids would win every draw and top every top-k
    model.lm_head.register_forward_hook(lambda module, args, out: out + favour)
    with LocalOpenAIServer(model, tok, model_name="padded") as server:
        ask = {"model": "padded", "prompt": [5, 6, 7], "max_tokens": 8, "return_tokens_as_token_ids": True}
        for extra in ({"temperature": 0, "logprobs": 20}, {"temperature": 1.0, "seed": 0, "logprobs": 20},
                      {"max_tokens": 0, "echo": True, "logprobs": 20, "prompt_logprobs": 20}):
            status, out = post(server.base_url, "/v1/completions", {**ask, **extra})
            assert status == 200, (extra, out)
            choice = out["choices"][0]
            named = choice["logprobs"]["tokens"] + [t for top in choice["logprobs"]["top_logprobs"] if top for t in top]
            named += [t for entry in choice.get("prompt_logprobs") or [] if entry for t in entry]
            ids = [int(str(t).removeprefix("token_id:")) for t in named]
            assert len(ids) > 20 and max(ids) < len(tok)


def test_an_adapter_unloaded_while_its_request_waits_fails_that_request_alone(tmp_path):
    from distil_core.config import LoraSettings
    from distil_core.models.lora import attach_lora

    attach_lora(tiny_model(), LoraSettings(r=4)).save_pretrained(tmp_path / "adapter")
    with LocalOpenAIServer(tiny_model(), tiny_tokenizer(), model_name="tiny") as server:
        url = server.base_url
        ask = {"prompt": "1 2", "max_tokens": 4, "temperature": 0}
        plain = post(url, "/v1/completions", {**ask, "model": "tiny"})[1]["choices"][0]["text"]
        assert post(url, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(tmp_path / "adapter")})[0] == 200
        with ThreadPoolExecutor(2) as pool:
            with server.lm.updating() as weights:  # the model is busy: both requests queue behind it
                adapter = pool.submit(post, url, "/v1/completions", {**ask, "model": "a"})
                base = pool.submit(post, url, "/v1/completions", {**ask, "model": "tiny"})
                wait_until(lambda: server.lm.open_jobs() == 2)
                weights.unload_adapter("a")  # what POST /v1/unload_lora_adapter does, while they wait
            status, out = adapter.result()
            assert status == 404 and out["error"]["code"] == "model_not_found", out
            assert "'a' was unloaded while this request waited" in out["error"]["message"]
            status, out = base.result()
            assert status == 200 and out["choices"][0]["text"] == plain, out  # the base, as before the adapter
        assert post(url, "/v1/completions", {**ask, "model": "a"})[0] == 404


def test_damaged_adapter_and_weight_files_are_a_400_naming_the_file(server, tmp_path):
    from distil_core.models.lora import ADAPTER_CONFIG

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / ADAPTER_CONFIG).write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"not safetensors")
    status, out = post(server.base_url, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(adapter)})
    assert status == 400 and out["error"]["param"] == "lora_path"
    assert "adapter_model.safetensors is damaged" in out["error"]["message"]
    weights, index, shards = tmp_path / "weights", tmp_path / "index", tmp_path / "shards"
    for folder in (weights, index, shards):
        folder.mkdir()
    (weights / "model.safetensors").write_bytes(b"\0" * 16)
    (index / "model.safetensors.index.json").write_text("{}")
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-1.safetensors"}}))
    for folder, words in ((weights, "model.safetensors' cannot be read"), (index, "index.json' is damaged"),
                          (shards, "model-1.safetensors' cannot be read")):
        status, out = post(server.base_url, "/collective_rpc",
                           {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
        assert status == 400 and out["error"]["param"] == "weights_path" and words in out["error"]["message"], out
    assert post(server.base_url, "/v1/completions", {"model": "tiny", "prompt": "1", "max_tokens": 1})[0] == 200


@pytest.mark.parametrize("spec", ["429:nan", "429:inf", "429:-5", "slow:inf", "slow:nan", "slow:-1"])
def test_a_fault_needs_a_finite_number_of_seconds(spec):
    with pytest.raises(ValueError, match="finite number >= 0"):
        parse_fault(spec)
