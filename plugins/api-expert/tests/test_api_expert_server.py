"""`distil serve` / LocalOpenAIServer: OpenAI's shapes, real log-probs, errors, the fault schedule."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch

from distil_core.serving import LocalOpenAIServer, parse_fault, token_bytes_table, token_string

from api_expert_testlib import tiny_model, tiny_tokenizer


def post(server, path, body, key=None, raw=None):
    """(status, headers, parsed JSON or raw text) of one request, errors included."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(server.base_url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, text = response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        status, headers, text = exc.code, dict(exc.headers), exc.read().decode()
    try:
        return status, headers, json.loads(text)
    except ValueError:
        return status, headers, text


def log_softmax(ids):
    with torch.no_grad():
        return torch.log_softmax(tiny_model()(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


def prompt_ids():
    tok = tiny_tokenizer()
    return tok.apply_chat_template([{"role": "user", "content": "sort 50494"}], add_generation_prompt=True,
                                   tokenize=True, return_dict=False) + tok.encode("04459", add_special_tokens=False)


def test_echoed_prompt_logprobs_are_the_models_own_log_softmax(server):
    ids = prompt_ids()
    status, _, out = post(server, "/v1/completions",
                          {"model": "tiny", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 5})
    assert status == 200
    lp = out["choices"][0]["logprobs"]
    expected = log_softmax(ids)
    table = token_bytes_table(tiny_tokenizer())
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert [t.encode() for t in lp["tokens"]] == [table[i] for i in ids]
    for j in range(1, len(ids)):
        assert lp["token_logprobs"][j] == pytest.approx(float(expected[j - 1, ids[j]]), abs=1e-4)
        top_lp, top_ids = torch.topk(expected[j - 1], 5)
        assert list(lp["top_logprobs"][j]) == [token_string(table[i]) for i in top_ids.tolist()]
        assert list(lp["top_logprobs"][j].values()) == pytest.approx(top_lp.tolist(), abs=1e-4)
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    assert out["choices"][0]["text"] == tiny_tokenizer().decode(ids)


def test_vllm_prompt_logprobs_are_keyed_by_token_id_with_ranks(server):
    ids = prompt_ids()
    status, _, out = post(server, "/v1/completions",
                          {"model": "tiny", "prompt": ids, "max_tokens": 1, "prompt_logprobs": 3, "temperature": 0})
    assert status == 200
    entries = out["choices"][0]["prompt_logprobs"]
    expected = log_softmax(ids)
    assert entries[0] is None and len(entries) == len(ids)
    for j in range(1, len(ids)):
        own = entries[j][str(ids[j])]
        assert own["logprob"] == pytest.approx(float(expected[j - 1, ids[j]]), abs=1e-4)
        assert own["rank"] == int((expected[j - 1] > expected[j - 1, ids[j]]).sum()) + 1
        top_ids = torch.topk(expected[j - 1], 3).indices.tolist()
        assert {int(key) for key in entries[j]} == set(top_ids) | {ids[j]}
        assert [entries[j][str(i)]["rank"] for i in top_ids] == [1, 2, 3]


def test_greedy_generation_reports_the_logprobs_of_a_full_forward_pass(server):
    ids = prompt_ids()
    status, _, out = post(server, "/v1/completions",
                          {"model": "tiny", "prompt": ids, "max_tokens": 6, "temperature": 0, "logprobs": 2})
    assert status == 200
    choice = out["choices"][0]
    table = token_bytes_table(tiny_tokenizer())
    by_bytes = {b: i for i, b in enumerate(table)}
    generated = [by_bytes[t.encode()] for t in choice["logprobs"]["tokens"]]
    assert len(generated) == out["usage"]["completion_tokens"] > 0
    expected = log_softmax(ids + generated)  # the KV-cached loop must agree with one pass
    for n, token in enumerate(generated):
        row = expected[len(ids) - 1 + n]
        assert token == int(row.argmax())
        assert choice["logprobs"]["token_logprobs"][n] == pytest.approx(float(row[token]), abs=1e-4)
    assert choice["logprobs"]["text_offset"][0] == 0


def test_chat_completions_use_the_chat_template_and_the_modern_logprobs_format(server):
    tok = tiny_tokenizer()
    messages = [{"role": "user", "content": "sort 123"}]
    body = {"model": "tiny", "messages": messages, "max_tokens": 4, "temperature": 0, "logprobs": True,
            "top_logprobs": 3, "n": 2}
    status, _, out = post(server, "/v1/chat/completions", body)
    assert status == 200 and out["object"] == "chat.completion" and len(out["choices"]) == 2
    template_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert out["usage"]["prompt_tokens"] == len(template_ids)
    content = out["choices"][0]["logprobs"]["content"]
    assert out["usage"]["completion_tokens"] == 2 * len(content)
    for entry in content:
        assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"] or entry["token"].startswith("bytes:")
        assert len(entry["top_logprobs"]) == 3
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"], abs=1e-5)  # greedy


def test_seeded_sampling_repeats_and_n_counts_choices(server):
    body = {"model": "tiny", "prompt": "sort 123", "max_tokens": 5, "temperature": 1.0, "seed": 7, "n": 3}
    first, second = post(server, "/v1/completions", body)[2], post(server, "/v1/completions", body)[2]
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in second["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]


def test_a_stop_string_cuts_the_text_before_it(server):
    body = {"model": "tiny", "prompt": "sort 50494", "max_tokens": 8, "temperature": 0}
    full = post(server, "/v1/completions", body)[2]["choices"][0]
    assert full["finish_reason"] == "length" and len(full["text"]) >= 4
    stop = full["text"][len(full["text"]) // 2:][:2]
    cut = post(server, "/v1/completions", {**body, "stop": [stop]})[2]["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == full["text"][: full["text"].find(stop)]


def test_errors_have_openais_shape_and_status():
    tok = tiny_tokenizer()
    with LocalOpenAIServer(tiny_model(), tok, model_name="tiny", api_key="s3cret") as server:
        status, _, out = post(server, "/v1/completions", {"model": "tiny", "prompt": "x"}, key="wrong")
        assert status == 401 and out["error"]["type"] == "authentication_error"
        ok = {"model": "tiny", "prompt": "x", "max_tokens": 1}
        assert post(server, "/v1/completions", ok, key="s3cret")[0] == 200
        cases = [
            ({"model": "gpt-9", "prompt": "x"}, 404, "model_not_found"),
            ({"model": "tiny", "prompt": "x", "logprobs": 21}, 400, None),
            ({"model": "tiny", "prompt": [10 ** 6]}, 400, None),
            ({"model": "tiny", "prompt": "x", "max_tokens": 10 ** 6}, 400, "context_length_exceeded"),
            ({"model": "tiny", "prompt": "x", "temperature": -1}, 400, None),
        ]
        for body, code, err_code in cases:
            status, _, out = post(server, "/v1/completions", body, key="s3cret")
            assert status == code and out["error"]["message"], body
            assert out["error"]["code"] == err_code
        assert post(server, "/v1/completions", None, key="s3cret", raw=b"{not json")[0] == 400
        assert post(server, "/v1/embeddings", {"model": "tiny"}, key="s3cret")[0] == 404
        status, _, out = post(server, "/v1/chat/completions", {"model": "tiny", "messages": []}, key="s3cret")
        assert status == 400 and out["error"]["param"] == "messages"


def test_the_fault_schedule_fails_the_next_requests_in_order(server):
    body = {"model": "tiny", "prompt": "sort 1", "max_tokens": 1, "logprobs": 2}
    server.add_faults("429:3", "500", "503", "slow:0.05", "malformed", "no_logprobs", "ok")
    status, headers, out = post(server, "/v1/completions", body)
    assert status == 429 and headers["Retry-After"] == "3" and out["error"]["type"] == "rate_limit_error"
    assert post(server, "/v1/completions", body)[0] == 500
    assert post(server, "/v1/completions", body)[0] == 503
    status, _, out = post(server, "/v1/completions", body)  # slow: late but whole
    assert status == 200 and out["choices"][0]["logprobs"]["tokens"]
    status, _, text = post(server, "/v1/completions", body)
    assert status == 200 and isinstance(text, str)  # not JSON
    status, _, out = post(server, "/v1/completions", body)
    assert status == 200 and out["choices"][0]["logprobs"] is None
    assert post(server, "/v1/completions", body)[2]["choices"][0]["logprobs"]["tokens"]
    assert server.stats["requests"] == 7
    with pytest.raises(ValueError, match="unknown fault"):
        parse_fault("418")


def test_distil_serve_command_serves_a_model_directory(tmp_path):
    model_dir = tmp_path / "tiny-model"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "distil_core.cli", "serve", "--model", str(model_dir),
                             "--port", "0", "--name", "mine", "--fault", "503"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "Serving 'mine' at http://127.0.0.1:" in line, proc.stderr.read() if proc.poll() is not None else line
        base = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(base + "/models", timeout=30) as response:
            assert json.loads(response.read())["data"][0]["id"] == "mine"
        server = type("S", (), {"base_url": base[: -len("/v1")]})
        body = {"model": "mine", "prompt": "sort 1", "max_tokens": 2}
        assert post(server, "/v1/completions", body)[0] == 503  # the scheduled fault
        assert post(server, "/v1/completions", body)[2]["usage"]["completion_tokens"] <= 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)
