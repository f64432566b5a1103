"""Rows that share a prompt, computed once or once per row: the update's and the expert's pass.

    python benchmarks/shared_prefix.py [--prompts 8] [--samples 8] [--prompt-tokens 10]
        [--feedback-tokens 0] [--response-tokens 6] [--repeats 20] [--base tiny|PATH] [--json FILE]

``response_logits`` over ``--prompts`` × ``--samples`` rows (each prompt's samples share it,
responses of ragged lengths up to ``--response-tokens``), timed two ways in one run, taking
turns: with the shared-prompt pass (the default) and with one pass over every whole row
(sharing turned off). With ``--feedback-tokens N``, each row's prefix is its prompt and then
N tokens of its own, as an expert's contexts are: the question, then each rollout's feedback;
the rows then share only the prompt. Two cases: a training pass (forward, a loss over the response positions,
backward), as in the update, and a pass without gradients, as in a local expert's scoring.
Prints the median of ``--repeats`` timings of each and their ratio, and the token positions
each way. The model is the default run's cached tiny base (``--base tiny``, built on first use)
or any local causal LM directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Callable


def build(base: str) -> Any:
    from transformers import AutoModelForCausalLM

    if base == "tiny":
        from distil_core.config import load_config
        from distil_core.plugin_host import get_host
        from distil_core.training.runtime import build_component, load_policy

        config = load_config(None, [])
        task = build_component(get_host(), "task", config.task.name, config.task.options)
        return load_policy(config, task)[0]
    return AutoModelForCausalLM.from_pretrained(base)


def rows(args: argparse.Namespace, vocab: int) -> tuple[list[list[int]], list[list[int]]]:
    import torch

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (args.prompt_tokens,), generator=g).tolist() for _ in range(args.prompts)]
    prefixes = [p + torch.randint(3, vocab, (args.feedback_tokens,), generator=g).tolist()
                for p in prompts for _ in range(args.samples)]
    lengths = [max(1, args.response_tokens - (j % 3)) for j in range(len(prefixes))]
    return prefixes, [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def timed(fn: Callable[[], None], repeats: int, share: bool) -> list[float]:
    from distil_core.models import shared_prefix

    saved = shared_prefix.MIN_SAVING
    shared_prefix.MIN_SAVING = saved if share else 2.0  # 2.0: no plan ever saves that much
    try:
        fn()  # warm-up
        out = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return out
    finally:
        shared_prefix.MIN_SAVING = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=10)
    parser.add_argument("--feedback-tokens", type=int, default=0, help="tokens of each row's own after its prompt")
    parser.add_argument("--response-tokens", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--base", default="tiny", help="'tiny' (the default run's base) or a model directory")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import torch

    from distil_core.models.forward import projects_plainly, response_logits
    from distil_core.models.shared_prefix import plan_sharing

    model = build(args.base)
    pad = model.config.pad_token_id or 0
    prefixes, responses = rows(args, model.config.vocab_size)
    plan = plan_sharing(prefixes, responses)
    if plan is None:
        raise SystemExit("shared_prefix: at this shape sharing would save under 25 % of the positions; "
                         "give more --samples or longer --prompt-tokens")
    projects_plainly(model)  # settled once, outside the timings

    def train_pass() -> None:
        logits, tokens, mask = response_logits(model, prefixes, responses, pad)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
        (nll * mask).sum().backward()
        model.zero_grad(set_to_none=True)

    def scoring_pass() -> None:  # as a local expert scores: eval mode, no gradients
        model.eval()
        try:
            with torch.no_grad():
                response_logits(model, prefixes, responses, pad)
        finally:
            model.train()

    single = len(prefixes) * max(len(p) + len(r) for p, r in zip(prefixes, responses))
    shared = len(plan.heads) * max(map(len, plan.heads)) + len(prefixes) * plan.width
    print(f"{args.prompts} prompts × {args.samples} samples, prompt {args.prompt_tokens} tokens"
          f"{f' + {args.feedback_tokens} of its own per row' if args.feedback_tokens else ''}, responses ≤ "
          f"{args.response_tokens}; {torch.get_num_threads()} torch threads; token positions: {shared} shared, "
          f"{single} one pass per row ({shared / single:.2f}×); median of {args.repeats}")
    figures: dict[str, Any] = {"positions_shared": shared, "positions_single": single}
    model.train()
    for name, fn in (("training pass", train_pass), ("scoring pass", scoring_pass)):
        on, off = [], []
        for _ in range(2):  # take turns, so that a slow stretch of the machine falls on both
            on += timed(fn, args.repeats // 2 or 1, share=True)
            off += timed(fn, args.repeats // 2 or 1, share=False)
        a, b = statistics.median(on), statistics.median(off)
        figures[name] = {"shared_ms": a * 1000, "single_ms": b * 1000, "speedup": b / a}
        print(f"{name:<14} shared {a * 1000:7.1f} ms   one pass per row {b * 1000:7.1f} ms   {b / a:.2f}× faster")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
