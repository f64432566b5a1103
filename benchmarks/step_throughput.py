"""Update-step throughput and loss memory: DistIL against SFT, TRL's GKD loss and HF generate.

    python benchmarks/step_throughput.py [--device cpu|cuda] [--layers 30] [--batch 4]
        [--prompt 32] [--response 96] [--repeats 3] [--gen-repeats 8] [--memory-lengths 256 1024 4096]
        [--skip-trl] [--only sft sft_plain ...] [--json out.json]

One model, one batch, one run; every ratio below is measured in this run:

- step time: one optimizer step (forward, loss, backward, AdamW) of
  - ``sft``: cross-entropy on the response tokens, logits for the response positions only,
    twice: through the toolkit's ``response_logits`` (which re-aligns ragged responses) and by
    plain slicing; the faster of the two is the baseline;
  - ``distil``: the trainer's own path with ``loss.chunk_size``: student hidden states, the
    ``self`` expert (live weights, no copy) scored in one batched prefill that returns hidden
    states, DistIL's chunked loss (future credit on);
  - ``distil, full logits``: the reference losses on ``[B, T, V]`` logits (``loss.chunk_size: 0``);
  - ``trl gkd``: TRL's ``GKDTrainer.generalized_jsd_loss`` (β = 0.5) on student and teacher
    logits of the whole sequence, as TRL's trainer computes them, same model as teacher.
  The floor for a distillation step is about 1.33 SFT steps: the student's forward and backward
  plus one expert forward.
- peak memory of the DistIL loss alone (forward + backward) at V = 49152 for each length, full
  logits against chunked: CUDA's allocator peak on a GPU, the process's peak resident memory
  above its start (each case in a fresh process) on a CPU.
- rollout generation tokens/s: the toolkit's ``Generator`` (which also returns each token's
  sampling log-prob) against a bare ``model.generate`` loop on the same batch.

The model has SmolLM2-135M's shape (hidden 576, 9 heads, 3 KV heads, V = 49152, tied
embeddings), randomly initialised: no weights are downloaded. ``--layers`` trims its depth.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

VOCAB = 49152
HIDDEN = 576


def build_model(layers: int, device: str, seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(device)
    model.config.use_cache = False
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_alternating(steps: dict[str, Callable[[], Any]], repeats: int, device: str) -> dict[str, float]:
    """Median seconds per step of each variant, the variants taking turns within each repeat
    (after one warm-up each), so that drift in the machine's speed hits all of them alike."""
    for fn in steps.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


# -- the steps ----------------------------------------------------------------------------------


class Batch:
    def __init__(self, batch: int, prompt: int, response: int, feedback: int, device: str, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.prompts = [torch.randint(3, VOCAB, (prompt,), generator=g).tolist() for _ in range(batch)]
        # the expert's context: the prompt plus feedback tokens
        self.contexts = [p + torch.randint(3, VOCAB, (feedback,), generator=g).tolist() for p in self.prompts]
        self.responses = [torch.randint(3, VOCAB, (response,), generator=g).tolist() for _ in range(batch)]
        self.device = device


def make_steps(model: Any, data: Batch, group: int) -> dict[str, Callable[[], None]]:
    from distil_core.losses import reference as losses
    from distil_core.losses.chunked import ExpertHead, chunked_loss
    from distil_core.models.experts import score_queries
    from distil_core.losses.methods import stack_signals
    from distil_core.models.forward import (
        output_projection,
        pad_batch,
        position_ids,
        response_hidden,
        response_logits,
    )
    from distil_core.types import ExpertQuery

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    queries = [
        ExpertQuery(problem_id=str(i), rollout_index=i, context_messages=[], context_ids=c, response_ids=r, response_text="")
        for i, (c, r) in enumerate(zip(data.contexts, data.responses))
    ]
    width = len(data.responses[0])

    def finish(loss: torch.Tensor) -> None:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sft() -> None:
        logits, tokens, _ = response_logits(model, data.prompts, data.responses, 0)
        finish(F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten()))

    full_ids, full_mask = pad_batch([p + r for p, r in zip(data.prompts, data.responses)], 0, side="left", device=data.device)
    targets = full_ids[:, -width:]

    def sft_plain() -> None:
        # the leanest SFT step: equal-length responses, logits of the response positions only,
        # no re-alignment of ragged rows
        logits = model(input_ids=full_ids, attention_mask=full_mask, logits_to_keep=width + 1).logits[:, :-1]
        finish(F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()))

    def distil() -> None:
        signals = score_queries(model, queries, 0, access="hidden")
        hidden, tokens, mask = response_hidden(model, data.prompts, data.responses, 0)
        weight, bias = output_projection(model)
        expert = stack_signals(signals, width, VOCAB, hidden.device)
        finish(chunked_loss("distil", hidden, weight, tokens, mask, ExpertHead(expert.hidden, *expert.head),
                            bias=bias, chunk_size=256, baseline="group_loo", group_size=group))

    def distil_full() -> None:
        signals = score_queries(model, queries, 0, access="dense")
        logits, tokens, mask = response_logits(model, data.prompts, data.responses, 0)
        expert = stack_signals(signals, width, VOCAB, logits.device)
        finish(losses.distil_loss(logits.float(), expert.logits, tokens, mask, baseline="group_loo", group_size=group))

    steps = {"sft": sft, "sft_plain": sft_plain, "distil": distil, "distil_full": distil_full}
    gkd = trl_gkd_loss()
    if gkd is not None:
        full = [p + r for p, r in zip(data.prompts, data.responses)]
        teacher_full = [c + r for c, r in zip(data.contexts, data.responses)]
        ids, mask = pad_batch(full, 0, side="left", device=data.device)
        tids, tmask = pad_batch(teacher_full, 0, side="left", device=data.device)
        labels = ids.clone()
        labels[:, : ids.shape[1] - width] = -100

        def trl() -> None:
            # as TRL's GKDTrainer.compute_loss: logits of the whole sequence for student and
            # teacher, sliced to the completion, then the generalized JSD
            student = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
            with torch.no_grad():
                teacher = model(input_ids=tids, attention_mask=tmask, position_ids=position_ids(tmask)).logits
            s = student[:, -width - 1 : -1]
            t = teacher[:, -width - 1 : -1]
            finish(gkd(s, t, labels=labels[:, -width:], beta=0.5))

        steps["trl"] = trl
    return steps


def trl_gkd_loss() -> Any:
    try:
        from trl import GKDTrainer  # type: ignore
    except Exception:  # noqa: BLE001 - moved in newer TRL, or not installed
        try:
            from trl.experimental.gkd import GKDTrainer  # type: ignore
        except Exception:  # noqa: BLE001
            return None
    return GKDTrainer.generalized_jsd_loss


# -- memory ---------------------------------------------------------------------------------------


def memory_case(kind: str, length: int, device: str) -> float:
    """MB of peak memory the DistIL loss (forward + backward) adds, measured in this process."""
    from distil_core.losses import reference as losses
    from distil_core.losses.chunked import ExpertHead, chunked_loss

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, length, HIDDEN, generator=g).to(device).requires_grad_(True)
    weight = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.02).to(device).requires_grad_(True)
    expert_hidden = torch.randn(1, length, HIDDEN, generator=g).to(device)
    tokens = torch.randint(0, VOCAB, (1, length), generator=g).to(device)
    mask = torch.ones(1, length, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        base = _rss_mb()
    if kind == "full":
        logits = F.linear(hidden, weight)
        with torch.no_grad():
            teacher = F.linear(expert_hidden, weight)
        loss = losses.distil_loss(logits, teacher, tokens, mask)
    else:
        loss = chunked_loss("distil", hidden, weight, tokens, mask, ExpertHead(expert_hidden, weight), chunk_size=256)
    loss.backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return _peak_rss_mb() - base


def _reset_peak_rss() -> None:
    """Linux: make the peak resident size (VmHWM) start again from the current size."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_memory(kind: str, length: int, device: str) -> float:
    if device.startswith("cuda"):
        return memory_case(kind, length, device)
    # a fresh process per case: the peak resident size only ever grows
    out = subprocess.run(
        [sys.executable, __file__, "--memory-case", kind, str(length), "--device", device],
        capture_output=True, text=True, check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


# -- generation -----------------------------------------------------------------------------------


class _Ids:
    """A tokenizer stand-in for random ids: decode writes the ids out."""

    pad_token_id, eos_token_id = 0, 2

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def generation(model: Any, data: Batch, n: int, new_tokens: int, repeats: int, device: str) -> tuple[float, float]:
    from distil_core.rollouts.local import Generator, SamplingParams
    from distil_core.models.padding import pad_batch

    model.config.use_cache = True
    generator = Generator(model, _Ids(), SamplingParams(max_new_tokens=new_tokens, temperature=1.0))
    ids, mask = pad_batch(data.prompts, 0, side="left", device=device)
    counts = {}

    def ours() -> None:
        rollouts = generator.sample(data.prompts, [str(i) for i in range(len(data.prompts))], n)
        counts["ours"] = sum(len(r.response_ids) for r in rollouts)

    @torch.no_grad()
    def bare() -> None:
        out = model.generate(input_ids=ids, attention_mask=mask, num_return_sequences=n, do_sample=True,
                             temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                             pad_token_id=0, eos_token_id=2, use_cache=True)
        counts["bare"] = int((out[:, ids.shape[1]:] != 0).sum())

    model.eval()
    ours()
    bare()  # warm-up; then alternate the two, so that drift in the machine's speed hits both
    t_ours, t_bare = [], []
    for _ in range(repeats):
        for fn, acc in ((ours, t_ours), (bare, t_bare)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            acc.append(time.perf_counter() - start)
    t_ours, t_bare = statistics.median(t_ours), statistics.median(t_bare)
    model.train()
    model.config.use_cache = False
    return counts["ours"] / t_ours, counts["bare"] / t_bare


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=30, help="decoder layers (SmolLM2-135M has 30)")
    parser.add_argument("--batch", type=int, default=4, help="rollouts per step")
    parser.add_argument("--group", type=int, default=2, help="rollouts per prompt (group_loo baseline)")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--feedback", type=int, default=0, help="extra tokens in the expert's context")
    parser.add_argument("--response", type=int, default=96, help="response tokens")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per rollout in the generation test")
    parser.add_argument("--repeats", type=int, default=3, help="timed update steps per variant")
    parser.add_argument("--gen-repeats", type=int, default=8,
                        help="timed generation calls per side, alternated (single calls vary by ±15%% on 2 cores)")
    parser.add_argument("--memory-lengths", type=int, nargs="*", default=[256, 1024, 4096])
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--only", nargs="+", choices=["sft", "sft_plain", "distil", "distil_full", "trl"],
                        help="time only these steps (sft and sft_plain are always kept: the baseline)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--memory-case", nargs=2, metavar=("KIND", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        print(memory_case(args.memory_case[0], int(args.memory_case[1]), args.device))
        return 0
    if args.batch % args.group:
        parser.error("--batch must be a multiple of --group")
    torch.set_grad_enabled(True)
    report: dict[str, Any] = {"device": args.device, "layers": args.layers, "batch": args.batch,
                              "prompt": args.prompt, "feedback": args.feedback, "response": args.response}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPU threads"
    print(f"model: SmolLM2-135M shape, {args.layers} layers, V = {VOCAB}, float32, random weights; {where}")
    print(f"batch: {args.batch} rollouts × ({args.prompt} prompt + {args.response} response tokens); "
          f"expert context +{args.feedback} tokens; median of {args.repeats} after a warm-up\n")
    model = build_model(args.layers, args.device)
    data = Batch(args.batch, args.prompt, args.response, args.feedback, args.device)
    steps = make_steps(model, data, args.group)
    if args.skip_trl:
        steps.pop("trl", None)
    if args.only:
        steps = {name: fn for name, fn in steps.items() if name in {"sft", "sft_plain", *args.only}}
    times = timed_alternating(steps, args.repeats, args.device)
    report["step_s"] = times
    sft = min(times["sft"], times["sft_plain"])  # the faster SFT step is the baseline
    labels = {"sft": "sft step (response_logits)", "sft_plain": "sft step (plain slicing)",
              "distil": "distil step (ours, chunked)", "distil_full": "distil step, full logits",
              "trl": "trl gkd step (generalized JSD)"}
    for name, seconds in times.items():
        print(f"{labels[name]:<34} {seconds * 1000:9.1f} ms   {seconds / sft:5.2f}× sft")
    print(f"\nsft step, response_logits / plain slicing: {times['sft'] / times['sft_plain']:.2f}× (target ≤ 1.1)")
    if "distil" in times:
        print(f"distil / sft step time: {times['distil'] / sft:.2f}× (floor ≈ 1.33, target ≤ 1.5)")
    if "trl" in times:
        print(f"distil / trl gkd step time: {times['distil'] / times['trl']:.2f}× (below 1 = ours faster)")
    elif not args.skip_trl and (not args.only or "trl" in args.only):
        print("trl gkd: TRL is not installed (pip install trl) — not measured")

    if args.memory_lengths:
        print(f"\npeak memory of the DistIL loss (forward + backward), V = {VOCAB}, one sequence:")
        print(f"{'T':>6} {'full logits MB':>15} {'chunked MB':>11} {'ratio':>6}")
        memory = {}
        for length in args.memory_lengths:
            full = measure_memory("full", length, args.device)
            chunked = measure_memory("chunked", length, args.device)
            memory[length] = {"full_mb": full, "chunked_mb": chunked}
            print(f"{length:>6} {full:>15.0f} {chunked:>11.0f} {full / max(chunked, 1e-9):>5.1f}×")
        report["loss_memory"] = memory

    tok_ours, tok_bare = generation(model, data, args.group, args.new_tokens, args.gen_repeats, args.device)
    report["generation_tokens_per_s"] = {"ours": tok_ours, "bare_generate": tok_bare}
    print(f"\ngeneration: ours {tok_ours:,.0f} tok/s, bare HF generate {tok_bare:,.0f} tok/s: "
          f"{tok_ours / tok_bare:.2f}× (target ≥ 0.95)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
