"""Builders shared by the api-expert tests: the core's tiny model and tokenizer (one model for
the session), a second tokenizer that splits words differently, queries, experts."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import pytest

from distil_core import ContextTemplate, ExpertQuery, Feedback, Rollout, resolve
from distil_core.builtin import DigitsTask
from distil_core.context import ContextBuilder
from distil_core.models.tiny import build_model, build_tokenizer
from distil_core.serving import FaultyServer, LocalOpenAIServer
from distil_core.testing import tiny_model as untrained_tiny_model
from distil_core.testing import tiny_tokenizer, wait_until

TEMPLATE = ContextTemplate()
SAMPLED = {"temperature": 1.0, "seed": 0}
"""Options for tests that need the served model to write an answer: the untrained tiny model's
greedy choice is a special token, which decodes to nothing, and an empty answer is a failed query
(nothing to train on). Sampled, its tokens are mostly text; the seed makes each answer the same on
every run, since an unseeded sample is now and then end-of-text at once."""


@functools.lru_cache(maxsize=None)
def tiny_model():
    """The core's untrained tiny model over :func:`tiny_tokenizer`, one for the session."""
    return untrained_tiny_model().eval()


@functools.lru_cache(maxsize=None)
def other_tokenizer():
    """Byte-level BPE too, but merged on different text: a different tokenisation of words."""
    prose = ["the quick brown fox jumps over the lazy dog " * 4, "sorting sorted sorts resort " * 6,
             "wrong answers are wrongly answered " * 5]
    return build_tokenizer(prose, vocab_size=290)


@functools.lru_cache(maxsize=None)
def other_model():
    tok = other_tokenizer()
    return build_model(len(tok), hidden_size=32, layers=1, heads=2, seed=1,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id).eval()


def runtime(tokenizer=None, model=None, max_new_tokens: int = 6):
    tok = tokenizer or tiny_tokenizer()
    return SimpleNamespace(tokenizer=tok, model=model, pad_id=tok.pad_token_id,
                           config=SimpleNamespace(rollout=SimpleNamespace(max_new_tokens=max_new_tokens)))


def queries(count: int = 4, *, response: str | None = None, tokenizer=None, start: int = 0) -> list[ExpertQuery]:
    """Expert queries on held-out digits problems: feedback in the context, a response to score."""
    tok = tokenizer or tiny_tokenizer()
    task = DigitsTask(train_size=60, test_size=40)
    builder = ContextBuilder(tok, TEMPLATE)
    out = []
    for i, problem in enumerate(task.problems("test")[start : start + count]):
        text = response if response is not None else problem.reference[::-1]
        ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
        rollout = Rollout(problem_id=problem.id, group_index=0, response_text=text, response_ids=ids)
        feedback = [Feedback(source="answer_check", kind="answer_check",
                             text=f"Your answer {text} is wrong. The expected answer is {problem.reference}.")]
        out.append(builder.build(problem, i, rollout, feedback))
    return out


def api_expert(server, **options):
    from distil_api_expert import ApiExpert

    options.setdefault("model", "tiny")
    options.setdefault("api_base", server.base_url + "/v1")
    options.setdefault("k", 5)
    options.setdefault("backoff_s", 0.01)
    options.setdefault("timeout_s", 20.0)
    tokenizer = options.pop("tokenizer", None)
    return ApiExpert(runtime(tokenizer), **options)


def score(expert, qs):
    return resolve(expert.score(qs))


@pytest.fixture(scope="session")
def served():
    """The tiny model served as 'tiny' on 127.0.0.1, with a fault schedule the tests fill."""
    with FaultyServer(tiny_model(), tiny_tokenizer(), model_name="tiny") as server:
        yield server


@pytest.fixture
def server(served):
    """The session's server with an empty fault schedule and fresh counters (once the requests an
    earlier test left behind, such as one its client stopped waiting for, are answered)."""
    served.clear_faults()
    wait_until(lambda: served.stats["in_flight"] == 0, what="the earlier tests' requests to end")
    served.reset_stats()
    yield served
    served.clear_faults()


class RewritingServer(LocalOpenAIServer):
    """The tiny model served for real, each answer's log-probs changed in place by
    ``rewrite(logprobs)`` as a hostile endpoint or a proxy on the way might (None: honest)."""

    rewrite = None

    def complete(self, path, raw):
        status, headers, body = super().complete(path, raw)
        if self.rewrite is None or status != 200:
            return status, headers, body
        answer = json.loads(body)
        for choice in answer["choices"]:
            if isinstance(choice.get("logprobs"), dict):
                self.rewrite(choice["logprobs"])
        return status, headers, json.dumps(answer).encode()  # NaN goes out as the bare NaN token
