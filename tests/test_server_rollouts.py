"""Rollouts from an OpenAI-compatible server (the loopback `distil serve`), kept in step with
training: the protocol, LoRA and full-weight syncs, staleness, errors, and whole training runs.

Everything goes over real HTTP on 127.0.0.1; the served model and the policy are separate
copies of the same tiny base, so only a sync can make them agree after the policy changes.
"""

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from distil_core.config import LoraSettings, RolloutServer, load_config
from distil_core.context import ContextBuilder
from distil_core.errors import ConfigError
from distil_core.rollouts.local import Generator, SamplingParams
from distil_core.models.lora import attach_lora
from distil_core.models.forward import response_logits
from distil_core.plugin_host import PluginHost, get_host
from distil_core.training.runtime import ensure_tiny_base
from distil_core.serving import FaultyServer, LocalOpenAIServer
from distil_core.rollouts.client import ServerClient, ServerError
from distil_core.rollouts.server import ServerGenerator
from distil_core.training.trainer import Trainer

from distil_core.testing import FAST_RUN, scripted_server, use_cache as distil_cache, tiny_model

N = 4
# Every test here runs on the tiny base that the module's fixture pretrains.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def base(tiny_base_cache_dir):
    """The directory of the tiny base (pretrained briefly on digits), built once for the module."""
    with distil_cache(tiny_base_cache_dir):
        config = load_config(None, FAST_RUN)
        task = get_host().build("task", config.task.name, config.task.options)
        yield ensure_tiny_base(config, task, progress=False)


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.fixture
def server(base):
    """A fresh server on its own copy of the base, named 'tiny', whose answers can fail on schedule."""
    model, tok = load(base)
    with FaultyServer(model, tok, model_name="tiny") as srv:
        yield srv


def prompts(tok, count=3):
    config = load_config(None, FAST_RUN)
    problems = list(get_host().build("task", config.task.name, config.task.options).problems("test"))[:count]
    builder = ContextBuilder(tok, config.context)
    return [builder.student_prompt_ids(p) for p in problems], [p.id for p in problems]


def generator(server, policy, tok, tmp_path, **settings):
    fields = {"base_url": server.base_url, "model": "tiny", "retries": 0, **settings}
    mode = fields.pop("mode")
    return ServerGenerator(policy, tok, RolloutServer(**fields), SamplingParams(max_new_tokens=10), mode=mode,
                           sync_dir=str(tmp_path / "sync"))


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def served_logprobs(server, name, prompt, continuation):
    """The server's log-probs of ``continuation`` after ``prompt`` (echo scoring) under model ``name``."""
    status, text = post(server.base_url + "/v1/completions", {"model": name, "prompt": prompt + continuation,
                                                             "max_tokens": 0, "echo": True, "logprobs": 0})
    assert status == 200, text
    return torch.tensor(json.loads(text)["choices"][0]["logprobs"]["token_logprobs"][len(prompt):])


def own_logprobs(model, prompt, continuation, pad_id=0):
    """Teacher-forced log-probs of ``continuation`` under ``model``."""
    with torch.no_grad():
        logits, tokens, _ = response_logits(model.eval(), [prompt], [continuation], pad_id)
        return torch.log_softmax(logits.float(), -1)[0].gather(-1, tokens[0].unsqueeze(-1)).squeeze(-1)


def perturb(params, seed, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen) * scale * (p.detach().std() + 0.05))


# -- the protocol ---------------------------------------------------------------------------------


def test_server_rollouts_follow_the_generator_protocol(server, base, tmp_path):
    policy, tok = load(base)
    gen = generator(server, policy, tok, tmp_path, mode="none", sync="none")
    ids, names = prompts(tok)
    # keyed: the samples are the same whichever tests ran before (else seeds come from torch's global stream)
    rollouts = gen.sample(ids, names, N, params=SamplingParams(max_new_tokens=10, temperature=1.0), key=0)
    assert [(r.problem_id, r.group_index) for r in rollouts] == [(p, j) for p in names for j in range(N)]
    assert len({tuple(r.response_ids) for r in rollouts}) > 1  # n samples, not n copies
    assert any(r.finished for r in rollouts)
    for r, prompt in zip(rollouts, [p for p in ids for _ in range(N)]):
        assert r.prompt_ids == prompt and 1 <= len(r.response_ids) <= 10
        assert r.finished == (r.response_ids[-1] == tok.eos_token_id)
        assert tok.eos_token_id not in r.response_ids[:-1]
        assert r.response_text == tok.decode(r.response_ids, skip_special_tokens=True)
        expected = own_logprobs(policy, prompt, r.response_ids, tok.pad_token_id)
        assert torch.allclose(torch.tensor(r.sampling_logprobs), expected, atol=1e-4)
    assert server.stats["paths"]["/v1/completions"] == len(ids)  # one request per prompt, n samples each


def test_greedy_server_rollouts_equal_the_in_process_generator(server, base, tmp_path):
    policy, tok = load(base)
    gen = generator(server, policy, tok, tmp_path, mode="none", sync="none")
    ids, names = prompts(tok)
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    remote = gen.sample(ids, names, 2, params=greedy)
    local = Generator(policy, tok).sample(ids, names, 2, params=greedy)
    assert [r.response_ids for r in remote] == [r.response_ids for r in local]
    assert [r.finished for r in remote] == [r.finished for r in local]


def test_concurrent_requests_share_a_batch_and_each_gets_its_solo_samples(server, base):
    _, tok = load(base)
    ids, _ = prompts(tok)
    url = server.base_url + "/v1/completions"
    sampled = [{"model": "tiny", "prompt": ids[i % len(ids)], "n": 3, "max_tokens": 8, "temperature": 1.0,
                "top_p": 0.95, "seed": 100 + i, "logprobs": 1, "return_tokens_as_token_ids": True} for i in range(5)]
    greedy = [{"model": "tiny", "prompt": ids[i], "n": 1, "max_tokens": 8, "temperature": 0, "logprobs": 2}
              for i in range(2)]
    bodies = sampled + greedy + [{**sampled[0], "seed": 7, "stop": ["1"]}]
    alone = [post(url, body) for body in bodies]
    server.reset_stats()
    with ThreadPoolExecutor(len(bodies)) as pool:
        with server.lm.updating():  # the model is busy: the requests queue up behind it
            answers = [pool.submit(post, url, body) for body in bodies]
            deadline = time.monotonic() + 60
            while server.lm.open_jobs() < len(bodies) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.lm.open_jobs() == len(bodies)
        together = [a.result() for a in answers]
    # the first requests taken (as many as had arrived, all of one kind), then one batch per kind
    # of sampling: 8 requests in at most 3 batches, so one batch held at least 3 of them
    assert server.stats["batches"] <= 3 and server.stats["max_batch_requests"] >= 3
    for (status, solo), (status2, batched) in zip(alone, together):
        assert status == status2 == 200
        solo, batched = json.loads(solo)["choices"], json.loads(batched)["choices"]
        assert [c["text"] for c in batched] == [c["text"] for c in solo]
        assert [c["finish_reason"] for c in batched] == [c["finish_reason"] for c in solo]
        for a, b in zip(solo, batched):
            assert a["logprobs"]["tokens"] == b["logprobs"]["tokens"]
            assert a["logprobs"]["top_logprobs"][0].keys() == b["logprobs"]["top_logprobs"][0].keys()
            assert torch.allclose(torch.tensor(a["logprobs"]["token_logprobs"]),
                                  torch.tensor(b["logprobs"]["token_logprobs"]), atol=1e-4)
    samples = [c["logprobs"]["tokens"] for _, text in together[: len(sampled)] for c in json.loads(text)["choices"]]
    assert len({tuple(tokens) for tokens in samples}) > 1  # rows draw apart: samples, not copies


# -- keeping the server's policy in step ----------------------------------------------------------


@pytest.mark.parametrize("inplace", [True, False])
def test_lora_sync_makes_the_server_answer_as_the_trained_policy(server, base, tmp_path, inplace):
    model, tok = load(base)
    policy = attach_lora(model, LoraSettings(r=4))
    gen = generator(server, policy, tok, tmp_path, mode="lora", lora_inplace=inplace)
    ids, names = prompts(tok)
    gen.sample(ids, names, 1)  # fresh adapters change nothing: no upload, the base answers
    assert gen.sync.served_name == "tiny" and not list((tmp_path / "sync").glob("lora-*"))
    continuation = [int(t) for t in tok.encode("42", add_special_tokens=False)] + [tok.eos_token_id]
    for step in (1, 2):  # the second sync replaces the first adapter
        perturb([p for n, p in policy.named_parameters() if "lora_" in n], seed=step)
        before = served_logprobs(server, gen.sync.served_name, ids[0], continuation)
        wanted = own_logprobs(policy, ids[0], continuation, tok.pad_token_id)
        assert not torch.allclose(before, wanted, atol=1e-3)
        row = gen.after_update(policy, step)
        assert row["sync_bytes"] > 0 and row["policy_version"] == step - 1 and row["staleness"] == 0
        assert torch.allclose(served_logprobs(server, gen.sync.served_name, ids[0], continuation), wanted, atol=1e-4)
        greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
        remote = gen.sample(ids, names, 1, params=greedy)
        local = Generator(policy, tok).sample(ids, names, 1, params=greedy)
        assert [r.response_ids for r in remote] == [r.response_ids for r in local]
    with urllib.request.urlopen(server.base_url + "/v1/models", timeout=30) as response:
        listed = [m["id"] for m in json.loads(response.read())["data"]]
    assert listed == ["tiny", gen.sync.served_name]  # one adapter: replaced in place, or the old one unloaded
    assert gen.sync.served_name == ("distil-policy" if inplace else "distil-policy-2")


def test_weight_sync_reloads_the_full_policy(server, base, tmp_path):
    policy, tok = load(base)
    gen = generator(server, policy, tok, tmp_path, mode="weights", initial_sync=False)
    ids, _ = prompts(tok)
    continuation = [int(t) for t in tok.encode("17", add_special_tokens=False)] + [tok.eos_token_id]
    perturb(policy.parameters(), seed=3, scale=0.2)
    wanted = own_logprobs(policy, ids[1], continuation, tok.pad_token_id)
    assert not torch.allclose(served_logprobs(server, "tiny", ids[1], continuation), wanted, atol=1e-3)
    row = gen.after_update(policy, 1)
    assert row["sync_bytes"] >= sum(p.numel() * 4 for p in policy.parameters())
    assert torch.allclose(served_logprobs(server, "tiny", ids[1], continuation), wanted, atol=1e-4)
    assert len(list((tmp_path / "sync").glob("weights-*"))) == 1


def test_staleness_with_sync_every_2_is_0_1_0_1(server, base, tmp_path):
    model, tok = load(base)
    policy = attach_lora(model, LoraSettings(r=4))
    gen = generator(server, policy, tok, tmp_path, mode="lora", sync_every=2)
    ids, names = prompts(tok, 2)
    rows = []
    for step in range(1, 6):
        gen.sample(ids, names, 2)
        perturb([p for n, p in policy.named_parameters() if "lora_" in n], seed=step, scale=0.1)
        rows.append(gen.after_update(policy, step))
    assert [r["staleness"] for r in rows] == [0, 1, 0, 1, 0]
    assert [r["policy_version"] for r in rows] == [0, 0, 2, 2, 4]
    assert [r["sync_bytes"] > 0 for r in rows] == [False, True, False, True, False]


# -- errors ---------------------------------------------------------------------------------------


def test_a_server_that_is_down_is_named_with_what_to_do(base, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    policy, tok = load(base)
    settings = RolloutServer(base_url=f"http://127.0.0.1:{port}/v1", model="tiny", retries=0)
    gen = ServerGenerator(policy, tok, settings, SamplingParams(), mode="none", sync_dir=str(tmp_path))
    with pytest.raises(ServerError, match=rf"Cannot reach the rollout server at http://127.0.0.1:{port}/v1/models.*base_url"):
        gen.sample([[1, 2]], ["p"], 1)


def test_servers_without_token_ids_or_log_probs_and_unknown_models_are_clear_errors(server, base, tmp_path):
    policy, tok = load(base)
    ids, names = prompts(tok, 1)
    with pytest.raises(ConfigError, match="rollout.server.model 'nope' is not served.*'tiny'"):
        generator(server, policy, tok, tmp_path, mode="none", model="nope").sample(ids, names, 1)
    gen = generator(server, policy, tok, tmp_path, mode="none")
    server.add_faults("no_token_ids")
    with pytest.raises(ServerError, match="ignored return_tokens_as_token_ids"):
        gen.sample(ids, names, 2)
    server.add_faults("no_logprobs")
    with pytest.raises(ServerError, match="no log-probs"):
        gen.sample(ids, names, 2)
    server.add_faults("500")
    with pytest.raises(ServerError, match=r"/v1/completions answered 500: The server had an error"):
        gen.sample(ids, names, 2)
    assert len(gen.sample(ids, names, 2)) == 2  # and the next request is served


def test_the_client_retries_overload_honouring_retry_after_but_not_a_server_error(server):
    client = ServerClient(server.base_url + "/v1", retries=2)
    body = {"model": "tiny", "prompt": [1, 2], "max_tokens": 1}
    server.reset_stats()
    server.add_faults("429:0.3", "503")  # Retry-After 0.3 s, then the backoff's 1 s (0.5 s doubled)
    started = time.monotonic()
    assert client.post("/v1/completions", body)["choices"]
    assert time.monotonic() - started >= 1.3 and server.stats["requests"] == 3
    server.reset_stats()
    server.add_faults("500")  # a bug in the server: retrying would not help
    with pytest.raises(ServerError, match="answered 500"):
        client.post("/v1/completions", body)
    assert server.stats["requests"] == 1
    server.reset_stats()
    server.add_faults("429:0", "429:0", "429:0")
    with pytest.raises(ServerError, match="answered 429"):
        client.post("/v1/completions", body)
    assert server.stats["requests"] == 3  # the first attempt and two retries


@pytest.mark.parametrize("reply, kind", [
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"choices\":", "IncompleteRead"),
    (b"garbage\r\n\r\n", "BadStatusLine"),
])
def test_an_answer_cut_off_or_not_http_is_retried_then_a_server_error(reply, kind):
    with scripted_server(lambda connection, _request: connection.sendall(reply)) as (url, seen):
        with pytest.raises(ServerError, match=rf"answered with a broken HTTP response \({kind}.*2 times"):
            ServerClient(url, retries=1, timeout_s=30).post("/v1/completions", {"prompt": [1]})
        assert len(seen) == 2  # the first attempt and one retry


def test_timeout_s_bounds_the_whole_answer_not_each_read():
    body = b'{"choices": []}' + b" " * 40
    done = threading.Event()

    def trickle(connection, _request):  # a byte every 0.1 s: each read is quick, the whole answer takes 5.5 s
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        for byte in body:
            if done.wait(0.1):
                return
            connection.sendall(bytes([byte]))

    with scripted_server(trickle) as (url, seen):
        started = time.monotonic()
        with pytest.raises(ServerError, match="did not answer within 1 s"):
            ServerClient(url, retries=2, timeout_s=1.0).post("/v1/completions", {})
        elapsed = time.monotonic() - started
        done.set()
    assert 1.0 <= elapsed < 4.0 and len(seen) == 1  # cut off at the deadline, and a timeout is not retried


def test_adapter_and_weight_endpoints_refuse_what_does_not_fit(server, base, tmp_path):
    url = server.base_url
    client = ServerClient(url, retries=0)
    with pytest.raises(ServerError, match="404.*cannot be found"):
        client.post("/v1/unload_lora_adapter", {"lora_name": "nope"})
    status, text = post(url + "/v1/completions", {"model": "nope", "prompt": [1, 2], "max_tokens": 1})
    assert status == 404 and json.loads(text)["error"]["code"] == "model_not_found"
    status, text = post(url + "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path / "missing")})
    assert status == 400 and "No LoRA adapter" in json.loads(text)["error"]["message"]
    other = attach_lora(tiny_model(hidden_size=32), LoraSettings(r=4))  # another base: other sizes
    other.save_pretrained(tmp_path / "foreign")
    status, text = post(url + "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path / "foreign")})
    assert status == 400 and "another base model" in json.loads(text)["error"]["message"]
    tiny_model(hidden_size=32).save_pretrained(tmp_path / "foreign-weights")
    with pytest.raises(ServerError, match="400.*belong to another model"):
        client.post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(tmp_path / "foreign-weights")}})
    with pytest.raises(ServerError, match="400.*not a directory"):
        client.post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(tmp_path / "nowhere")}})
    model, tok = load(base)  # nothing above changed what the server answers
    prompt = prompts(tok, 1)[0][0]
    assert torch.allclose(served_logprobs(server, "tiny", prompt, [5, 6]), own_logprobs(model, prompt, [5, 6]), atol=1e-4)
    status, text = post(url + "/v1/completions", {"model": "x", "prompt": [1, 2], "max_tokens": 1})
    assert status == 404


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="rollout.*backend 'server' needs a rollout.server section"):
        load_config(None, ["rollout.backend=server"])
    with pytest.raises(ConfigError, match="rollout.server.base_url.*http://"):
        load_config(None, ["rollout.server={base_url: localhost:8000, model: tiny}"])
    config = load_config(None, FAST_RUN + ["rollout.backend=server", "rollout.server.base_url=http://127.0.0.1:9",
                                           "rollout.server.model=tiny", "rollout.server.sync=lora"])
    with pytest.raises(ConfigError, match="sync: lora sends LoRA adapters, but the policy has none"):
        Trainer(config, run_dir=None, host=PluginHost(load_entrypoints=False), echo=lambda *_: None)


# -- training end to end --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sync, every", [("lora", 1), ("weights", 2)])
def test_training_with_server_rollouts_logs_versions_and_syncs(base, tmp_path, sync, every):
    model, tok = load(base)
    with LocalOpenAIServer(model, tok, model_name="tiny") as server:
        overrides = FAST_RUN + ["rollout.backend=server", f"rollout.server.base_url={server.base_url}",
                                "rollout.server.model=tiny", f"rollout.server.sync={sync}",
                                f"rollout.server.sync_every={every}", f"rollout.server.sync_dir={tmp_path / 'sync'}"]
        if sync == "lora":
            overrides.append("model.lora={r: 4}")
        config = load_config(None, overrides)
        trainer = Trainer(config, run_dir=str(tmp_path / "run"), host=PluginHost(load_entrypoints=False),
                          echo=lambda *_: None)
        summary = trainer.fit()
        rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        assert [r["staleness"] for r in rows] == ([0, 0, 0, 0] if every == 1 else [0, 1, 0, 1])
        assert [r["policy_version"] for r in rows] == ([0, 1, 2, 3] if every == 1 else [0, 0, 2, 2])
        assert all("sync_s" in r for r in rows)
        assert [r["sync_bytes"] > 0 for r in rows] == [s % every == 0 for s in (1, 2, 3, 4)]
        assert summary["steps"] == 4 and set(summary["after"]) >= {"pass@1", "pass@4"}
        rollouts = [json.loads(line) for line in open(tmp_path / "run" / "rollouts.jsonl")]
        assert len(rollouts) == 4 * 4 * 4  # steps × problems × samples
        # after the last step the server answers as the trained policy
        ids, _ = prompts(tok, 1)
        name = trainer.rt.generator.sync.served_name
        assert name == ("distil-policy" if sync == "lora" else "tiny")
        continuation = [5, 6, tok.eos_token_id]
        assert torch.allclose(served_logprobs(server, name, ids[0], continuation),
                              own_logprobs(trainer.model, ids[0], continuation, tok.pad_token_id), atol=1e-4)
        assert os.path.isdir(tmp_path / "sync")


@pytest.mark.slow
def test_rollout_server_benchmark_measures_every_figure(tmp_path, capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "rollout_server.py"
    spec = importlib.util.spec_from_file_location("rollout_server_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--layers", "1", "--hidden", "64", "--prompts", "2", "--n", "2", "--max-tokens", "4",
                      "--repeats", "1", "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads(json.dumps(out))
    for key in ("server_tokens_per_s", "local_tokens_per_s", "server_over_local", "n_batching_speedup",
                "lora_sync_s", "weights_sync_s"):
        assert out[key] > 0, key
    assert 0 < out["lora_sync_bytes"] < out["weights_sync_bytes"]
    assert "server / in-process" in capsys.readouterr().out
