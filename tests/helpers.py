"""Small builders shared by the tests: an untrained tiny model and tokenizer, test configs."""

from __future__ import annotations

import contextlib
import functools
import os

from distil_core.builtin import DigitsTask
from distil_core.context import ContextBuilder, ContextTemplate
from distil_core.models.tiny import build_model, build_tokenizer


@functools.lru_cache(maxsize=None)
def tiny_tokenizer():
    task = DigitsTask(train_size=50, test_size=10)
    template = ContextTemplate()
    corpus = [template.render(p.user_text(), [], p.reference) for p in task.problems("train")]
    corpus.append("Feedback on an earlier unsuccessful attempt: Your answer 1 is wrong. The expected answer is 2.")
    return build_tokenizer(corpus, vocab_size=300)


def tiny_model(seed: int = 0, hidden_size: int = 32):
    tok = tiny_tokenizer()
    return build_model(len(tok), hidden_size=hidden_size, layers=1, heads=2, seed=seed,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


def builder(system_prompt=None, **template):
    return ContextBuilder(tiny_tokenizer(), ContextTemplate(**template), system_prompt)


FAST_RUN = [
    "model.tiny={hidden_size: 64, layers: 2, heads: 2, steps: 60, batch_size: 32, lr: 0.005, plain_fraction: 0.3}",
    "task.options={length: 2, train_size: 80, test_size: 16}",
    "rollout.problems_per_step=4",
    "rollout.samples_per_problem=4",
    "eval.problems=16",
    "eval.samples=4",
    "eval.ks=[1, 4]",
    "train.steps=4",
    "train.save_every=2",
    "train.progress=false",
]


@contextlib.contextmanager
def distil_cache(path):
    """DISTIL_CACHE points at ``path`` inside the block (tiny bases built there), then is restored."""
    old = os.environ.get("DISTIL_CACHE")
    os.environ["DISTIL_CACHE"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("DISTIL_CACHE", None)
        else:
            os.environ["DISTIL_CACHE"] = old
