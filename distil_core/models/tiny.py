"""A tiny causal LM and tokenizer, built offline, for the embedded default and the tests.

The tokenizer is a byte-level BPE (any text encodes) whose digits are always single tokens,
trained in milliseconds on a corpus the caller gives; its chat template is

    <|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>

The model is a small Llama (RoPE, RMSNorm, SwiGLU) from ``transformers``, randomly initialised
from a seed. Nothing is downloaded.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
from typing import Any, Iterable, Optional, Sequence

from distil_core.builtin import AnswerCheckFeedback, ExactMatchVerifier, wrong_answer
from distil_core.config import TinyBase

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 400) -> Any:
    """A ``PreTrainedTokenizerFast`` trained on ``corpus`` (deterministic for a given corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        additional_special_tokens=SPECIAL_TOKENS[2:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(
    vocab_size: int,
    *,
    hidden_size: int = 128, layers: int = 2, heads: int = 4, max_positions: int = 256,
    seed: int = 0, pad_token_id: int = 0, eos_token_id: int = 1,
) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` of about ``12 * layers * hidden_size**2`` weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=pad_token_id,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=True,
    )
    with _seeded(seed):
        model = LlamaForCausalLM(config)
    return model


class _seeded:
    """Seed torch's global RNG for a block and restore it afterwards."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self) -> None:
        import torch

        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.random.set_rng_state(self.state)


def save_pretrained(model: Any, tokenizer: Any, path: str) -> None:
    """Write model and tokenizer so ``from_pretrained(path)`` reloads them."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def default_cache_dir() -> str:
    root = os.environ.get("DISTIL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "distil"
    )
    return root


def cached_path(name: str, cache_dir: Optional[str] = None) -> str:
    return os.path.join(cache_dir or default_cache_dir(), name)


def announce(text: str) -> None:
    """One line on stderr for a slow first-use phase (building or converting a model), shown
    even under ``--quiet``: minutes of silence look like a hang."""
    print(f"distil: {text}", file=sys.stderr, flush=True)


# -- the embedded default's base model ----------------------------------------------------------


class BaseFeedback:
    """What the base's pretraining examples show: answers, wrong answers and their feedback.

    ``verifier`` and ``sources`` are the run's own (the base learns to read the feedback text the
    run will give); by default ``exact_match`` and ``answer_check``. A task may define
    ``answer_text(problem) -> str`` (the response to learn; default ``str(problem.reference)``)
    and ``wrong_answer(problem, rng) -> str`` (default: one or two characters changed).

    ``pool`` > 0 bounds the work: feedback is computed once, concurrently, for ``pool`` drawn
    (problem, wrong answer) pairs, and every feedback example reuses one of them (for sources
    that run code in a sandbox). 0 computes it afresh for every example.
    """

    def __init__(self, task: Any = None, verifier: Any = None, sources: Any = None, pool: int = 0,
                 names: Optional[Sequence[str]] = None):
        self.task = task
        self.verifier = verifier if verifier is not None else ExactMatchVerifier()
        self.sources = list(sources) if sources else [AnswerCheckFeedback()]
        # the verifier's and each source's registered name, for an error about what one returned
        self.names = list(names) if names else [type(c).__name__ for c in (self.verifier, *self.sources)]
        self.pool_size = pool
        self.pool: Optional[list] = None

    def answer(self, problem) -> Optional[str]:
        hook = getattr(self.task, "answer_text", None)
        return hook(problem) if callable(hook) else str(problem.reference)

    def wrong(self, problem, answer: str, rng: random.Random) -> str:
        hook = getattr(self.task, "wrong_answer", None)
        return hook(problem, rng) if callable(hook) else wrong_answer(answer, rng)

    def feedback_many(self, pairs) -> list:
        """Feedback for each (problem, wrong answer), graded and rendered concurrently."""
        from distil_core.protocols import resolve_all
        from distil_core.types import Feedback, Rollout, Verdict, checked

        rollouts = [Rollout(problem_id=p.id, group_index=0, response_text=w, response_ids=[]) for p, w in pairs]
        verdicts = checked(resolve_all([self.verifier.verify(p, r) for (p, _), r in zip(pairs, rollouts)]),
                           Verdict, self.names[0])
        out: list = [[] for _ in pairs]
        for name, source in zip(self.names[1:], self.sources):
            items = resolve_all([source.feedback(p, r, v, [(r, v)]) for (p, _), r, v in zip(pairs, rollouts, verdicts)])
            for k, items_k in enumerate(items):
                out[k].extend(checked(items_k, Feedback, name))
        return out

    def fill_pool(self, problems, rng: random.Random) -> None:
        if self.pool_size <= 0 or self.pool is not None:
            return
        pairs = []
        for _ in range(self.pool_size):
            problem = rng.choice(problems)
            pairs.append((problem, self.wrong(problem, self.answer(problem), rng)))
        self.pool = [(p, fb) for (p, _), fb in zip(pairs, self.feedback_many(pairs))]


def base_examples(problems, template, rng: random.Random, count: int, plain_fraction: float, teacher=None):
    """(messages, answer) pairs: bare prompts, or expert contexts with feedback/demonstration."""
    from distil_core.context import ContextBuilder

    builder = ContextBuilder(tokenizer=None, template=template)
    teacher = teacher or BaseFeedback()
    teacher.fill_pool(problems, rng)
    for _ in range(count):
        problem = rng.choice(problems)
        answer = teacher.answer(problem)
        if rng.random() < plain_fraction:
            yield problem.messages(), answer
            continue
        style = rng.random()
        feedback = []
        if style < 0.7:
            if teacher.pool:
                problem, feedback = rng.choice(teacher.pool)
                answer = teacher.answer(problem)
            else:
                wrong = teacher.wrong(problem, answer, rng)
                feedback = teacher.feedback_many([(problem, wrong)])[0]
        demo = answer if style > 0.4 else None
        yield builder.expert_messages(problem, feedback, demo), answer


def build_tiny_base(problems, template, recipe: TinyBase, progress: bool = True, teacher: Optional[BaseFeedback] = None):
    """Train the tiny base model from scratch; returns (model, tokenizer). About a minute on 2 cores.

    ``teacher`` gives the answers, wrong answers and feedback the examples show (default: the
    ``digits`` task's, with ``answer_check`` feedback).
    """
    import torch

    from distil_core.models.padding import pad_batch, position_ids

    teacher = teacher or BaseFeedback()
    problems = [p for p in problems if teacher.answer(p) is not None]
    if not problems:
        raise ValueError("no training problem has an answer to pretrain the tiny base on")
    rng = random.Random(recipe.seed)
    corpus = []
    for messages, answer in base_examples(problems[:400], template, rng, 800, 0.5, teacher):
        corpus.extend([m["content"] for m in messages] + [answer])
    tokenizer = build_tokenizer(corpus, vocab_size=recipe.vocab_size)
    model = build_model(
        len(tokenizer), hidden_size=recipe.hidden_size, layers=recipe.layers, heads=recipe.heads,
        seed=recipe.seed, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20))
    examples = base_examples(problems, template, rng, recipe.steps * recipe.batch_size, recipe.plain_fraction, teacher)
    bar = _progress(recipe.steps, "building tiny base model", progress)
    model.train()
    for _ in range(recipe.steps):
        inputs, labels = [], []
        for messages, answer in itertools.islice(examples, recipe.batch_size):
            prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
            target = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id]
            inputs.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
        ids, mask = pad_batch(inputs, tokenizer.pad_token_id)
        lab, _ = pad_batch(labels, -100)
        loss = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update()
    bar.close()
    model.eval()
    return model, tokenizer


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
