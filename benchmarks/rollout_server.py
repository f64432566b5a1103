"""Rollouts through an inference server against the in-process generator, and the cost of a sync.

    python benchmarks/rollout_server.py [--device cpu|cuda] [--layers 4] [--hidden 576]
        [--prompts 8] [--n 8] [--max-tokens 32] [--repeats 5] [--json out.json]

One model, one set of prompts, one run; every ratio below is measured in this run:

- rollout tokens/s of ``rollout.backend: server`` (:class:`ServerGenerator` sending one
  ``/v1/completions`` request per prompt, concurrently, to the loopback ``distil serve`` in
  this process, which decodes the concurrent requests together; ``server_batches_per_call``
  counts the batches a call's requests were decoded in) against ``rollout.backend: local`` (:class:`Generator`, all prompts × n in one
  ``generate``), on the same prompts, ``n`` and ``max_tokens``. The two are alternated and each
  figure is the median of ``--repeats`` calls after one warm-up.
- the loopback server's ``n``: one request for n samples (decoded as one batch) against n
  requests of one sample each (how the server decoded before it batched).
- the time and size of one LoRA sync (adapters written, then hot-loaded through
  ``/v1/load_lora_adapter``) and one full-weight sync (safetensors written, then reloaded
  through ``/collective_rpc`` ``reload_weights``).

The model is a randomly initialised Llama of SmolLM2-135M's width (hidden 576, 9 heads, 3 KV
heads) with ``--layers`` layers and the tiny model's tokenizer (a few hundred tokens, so the
output head is cheap); nothing is downloaded. Sampling is at temperature 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import torch


def build(layers: int, hidden: int, device: str, vocab: int, pad: int, eos: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 3),
                         max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=pad,
                         bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device).eval()


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def alternated(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    """Median seconds (and the last result) of each function, the calls interleaved."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    last: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), last[name]) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    from distil_core.config import LoraSettings, RolloutServer
    from distil_core.rollouts.local import Generator, SamplingParams
    from distil_core.models.lora import attach_lora
    from distil_core.serving.http import LocalOpenAIServer
    from distil_core.rollouts.client import ServerClient
    from distil_core.rollouts.server import ServerGenerator
    from distil_core.types import Problem
    from distil_core.testing import context_builder as builder, tiny_tokenizer

    hf_logging.disable_progress_bar()
    tok = tiny_tokenizer()

    def model() -> Any:
        return build(args.layers, args.hidden, args.device, len(tok), tok.pad_token_id, tok.eos_token_id)

    policy = model()
    texts = [f"sort {i * 7919 % 100000:05d}" for i in range(args.prompts)]
    problems = [Problem(id=f"p{i}", prompt=t) for i, t in enumerate(texts)]
    prompts = [builder().student_prompt_ids(p) for p in problems]
    ids = [p.id for p in problems]
    params = SamplingParams(max_new_tokens=args.max_tokens, temperature=1.0)
    out: dict[str, Any] = {"device": args.device, "layers": args.layers, "hidden": args.hidden,
                           "prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens,
                           "repeats": args.repeats, "threads": torch.get_num_threads()}

    with tempfile.TemporaryDirectory() as tmp, LocalOpenAIServer(model(), tok, model_name="bench") as server:
        def settings(**kw: Any) -> RolloutServer:
            return RolloutServer(base_url=server.base_url, model="bench", max_concurrency=args.prompts, **kw)

        remote = ServerGenerator(policy, tok, settings(sync="none"), params, mode="none", sync_dir=tmp)
        local = Generator(policy, tok, params)
        batches: list[int] = []

        def server_sample() -> Any:
            before = server.stats["batches"]
            rollouts = remote.sample(prompts, ids, args.n)
            batches.append(server.stats["batches"] - before)
            return rollouts

        results = alternated({
            "server": server_sample,
            "local": lambda: local.sample(prompts, ids, args.n),
        }, args.repeats)
        for name, (seconds, rollouts) in results.items():
            tokens = sum(len(r.response_ids) for r in rollouts)
            out[f"{name}_s"], out[f"{name}_tokens"] = seconds, tokens
            out[f"{name}_tokens_per_s"] = tokens / seconds
        out["server_over_local"] = out["server_tokens_per_s"] / out["local_tokens_per_s"]
        out["server_batches_per_call"] = statistics.median(batches)

        # the loopback server's n: one batched request against n single-sample requests
        client = ServerClient(server.base_url)
        body = {"model": "bench", "prompt": prompts[0], "max_tokens": args.max_tokens, "temperature": 1.0,
                "logprobs": 1, "return_tokens_as_token_ids": True}
        batched = alternated({
            "one_request": lambda: client.post("/v1/completions", {**body, "n": args.n}),
            "n_requests": lambda: [client.post("/v1/completions", {**body, "n": 1}) for _ in range(args.n)],
        }, args.repeats)
        out["n_batched_s"], out["n_one_at_a_time_s"] = batched["one_request"][0], batched["n_requests"][0]
        out["n_batching_speedup"] = out["n_one_at_a_time_s"] / out["n_batched_s"]

        # one sync of each kind, each after a change to the policy
        lora_policy = attach_lora(model(), LoraSettings(r=16))
        lora = ServerGenerator(lora_policy, tok, settings(sync="lora"), params, mode="lora",
                               sync_dir=os.path.join(tmp, "lora"))
        lora.sample(prompts[:1], ids[:1], 1)
        with torch.no_grad():
            for name, p in lora_policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)
        row = lora.after_update(lora_policy, 1)
        out["lora_sync_s"], out["lora_sync_bytes"] = row["sync_s"], row["sync_bytes"]
        full = ServerGenerator(policy, tok, settings(sync="weights", initial_sync=False), params, mode="weights",
                               sync_dir=os.path.join(tmp, "weights"))
        full.sample(prompts[:1], ids[:1], 1)
        row = full.after_update(policy, 1)
        out["weights_sync_s"], out["weights_sync_bytes"] = row["sync_s"], row["sync_bytes"]
        for g in (remote, lora, full):
            g.close()

    print(f"{args.prompts} prompts × n={args.n}, max_tokens={args.max_tokens}, {args.layers} layers × hidden "
          f"{args.hidden}, {args.device}, {out['threads']} threads; medians of {args.repeats} alternated calls")
    print(f"  in-process Generator   {out['local_tokens_per_s']:9.1f} tokens/s  ({out['local_tokens']} tokens, "
          f"{out['local_s']:.3f} s)")
    print(f"  server backend         {out['server_tokens_per_s']:9.1f} tokens/s  ({out['server_tokens']} tokens, "
          f"{out['server_s']:.3f} s; {args.prompts} requests in {out['server_batches_per_call']:g} batches)")
    print(f"  server / in-process    {out['server_over_local']:9.2f}×")
    print(f"  loopback n={args.n}: one batched request {out['n_batched_s']:.3f} s, {args.n} single requests "
          f"{out['n_one_at_a_time_s']:.3f} s ({out['n_batching_speedup']:.2f}× from batching)")
    print(f"  LoRA sync (r=16)       {out['lora_sync_s']:.3f} s, {out['lora_sync_bytes'] / 1e6:.2f} MB")
    print(f"  full-weight sync       {out['weights_sync_s']:.3f} s, {out['weights_sync_bytes'] / 1e6:.2f} MB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
