"""Builders and an isolated environment for the tests of distil-toolkit and its plugins.

Installing distil-toolkit registers :mod:`distil_core.testing.plugin` with pytest (the
``pytest11`` entry point), which provides the fixtures ``plugin_host`` and ``tiny_base_cache``;
this module holds what a test calls directly. Nothing here imports torch until a builder that
needs a model is called.

Isolation (:func:`isolate`) makes a test session independent of the machine it runs on: no
network for Hugging Face or litellm, none of the installed plugins (a test registers the ones
it needs), no allow-list from the shell. A project asks for it with ``distil_isolate = true``
under ``[tool.pytest.ini_options]`` (applied before any conftest is imported), or by calling
:func:`isolate` at the top of its ``conftest.py``; a project that does neither runs as it
always did — the plugin changes nothing for it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from types import SimpleNamespace
from typing import Any, Iterable, Iterator, Optional

from distil_core.types import Problem, Rollout, Verdict

ISOLATED_ENV = {
    "HF_HUB_OFFLINE": "1",  # read when huggingface_hub is imported: set before transformers loads
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",  # forked test subprocesses would warn about it otherwise
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # litellm fetches its price list at import otherwise
    "DISTIL_NO_ENTRYPOINTS": "1",  # only the built-ins: installed plugins cannot change a result
}
UNSET_ENV = ("DISTIL_PLUGINS", "DISTIL_TRACEBACK")  # a developer's debugging setting changes what a command prints

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
"""``--set`` overrides for a run of a few seconds on a CPU: a small tiny base, a few steps."""

EARLIER_DISTIL = ["loss.expert_temperature=1.0", "loss.future_reduce=sum", "loss.reward_weight=1.0",
                  "loss.baseline=group_loo"]
"""``--set`` overrides for ``distil``'s settings before their defaults moved (τ 1, the summed
future cost, the success weight 1, the group baseline): a test that pins figures measured then sets these, so that
the next change of a default does not change what it measures."""

_state = {"isolated": False}


def isolate(beside: Optional[str] = None, unset: Iterable[str] = ()) -> None:
    """Set :data:`ISOLATED_ENV` in this process and remove ``DISTIL_PLUGINS`` and ``unset``;
    ``beside`` (a conftest's ``__file__``): its folder becomes importable, so the test helpers
    that sit beside it can be imported by name.

    From then on the pytest plugin also gives every test a fresh process-wide plugin host and
    points ``DISTIL_CACHE`` at the session's shared cache (see ``tiny_base_cache``).
    """
    if beside is not None:
        folder = os.path.dirname(os.path.abspath(beside))
        if folder not in sys.path:
            sys.path.insert(0, folder)
    os.environ.update(ISOLATED_ENV)
    for key in (*UNSET_ENV, *unset):
        os.environ.pop(key, None)
    _state["isolated"] = True


def is_isolated() -> bool:
    """Whether :func:`isolate` ran in this process."""
    return _state["isolated"]


@contextlib.contextmanager
def use_cache(path: Any) -> Iterator[str]:
    """``DISTIL_CACHE`` (where tiny bases are built and kept) is ``path`` inside the block."""
    old = os.environ.get("DISTIL_CACHE")
    os.environ["DISTIL_CACHE"] = str(path)
    try:
        yield str(path)
    finally:
        if old is None:
            os.environ.pop("DISTIL_CACHE", None)
        else:
            os.environ["DISTIL_CACHE"] = old


def distil_env(plugins: Iterable[str] = (), **extra: str) -> dict[str, str]:
    """The environment of a ``distil`` subprocess that loads exactly the entry points ``plugins``."""
    env = {k: v for k, v in os.environ.items() if k != "DISTIL_NO_ENTRYPOINTS"}
    env["DISTIL_PLUGINS"] = ",".join(plugins)
    env.update(extra)
    return env


# -- data -------------------------------------------------------------------------------------


def problem(reference: Any = None, pid: str = "p", prompt: str = "solve it", **metadata: Any) -> Problem:
    return Problem(id=pid, prompt=prompt, reference=reference, metadata=metadata)


def rollout(text: str, pid: str = "p", *, ids: Iterable[int] = (), group_index: int = 0, finished: bool = True) -> Rollout:
    """A rollout of ``text``; ``ids`` are its token ids when the test needs them."""
    return Rollout(problem_id=pid, group_index=group_index, response_text=text, response_ids=list(ids), finished=finished)


def verdict(passed: bool, score: Optional[float] = None, answer: Optional[str] = None, **details: Any) -> Verdict:
    return Verdict(score=float(passed) if score is None else score, passed=passed, answer=answer, details=details)


# -- models -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (vocabulary 300) with a chat template, trained on digits problems
    rendered in the default expert template: the vocabulary the tiny models speak."""
    from distil_core.builtin import DigitsTask
    from distil_core.context import ContextTemplate
    from distil_core.models.tiny import build_tokenizer

    template = ContextTemplate()
    corpus = [template.render(p.user_text(), [], p.reference) for p in DigitsTask(train_size=50, test_size=10).problems("train")]
    corpus.append("Feedback on an earlier unsuccessful attempt: Your answer 1 is wrong. The expected answer is 2.")
    return build_tokenizer(corpus, vocab_size=300)


def tiny_model(seed: int = 0, hidden_size: int = 32) -> Any:
    """An untrained one-layer model over :func:`tiny_tokenizer` (a new one per call)."""
    from distil_core.models.tiny import build_model

    tok = tiny_tokenizer()
    return build_model(len(tok), hidden_size=hidden_size, layers=1, heads=2, seed=seed,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


def context_builder(system_prompt: Optional[str] = None, **template: Any) -> Any:
    """A ContextBuilder over :func:`tiny_tokenizer`; ``template`` sets ContextTemplate fields."""
    from distil_core.context import ContextBuilder, ContextTemplate

    return ContextBuilder(tiny_tokenizer(), ContextTemplate(**template), system_prompt)


def stub_runtime(model: Any = None, tokenizer: Any = None, **attrs: Any) -> SimpleNamespace:
    """What a factory that asks for ``runtime`` reads, without building a run: the tiny tokenizer,
    ``model`` (None unless given), the CPU, no config, host or generator; ``attrs`` override."""
    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    values: dict[str, Any] = dict(config=None, model=model, tokenizer=tok, device="cpu", host=None, task=None,
                                  verifier=None, feedback_sources=[], expert=None, generator=None, context=None,
                                  model_source="", pad_id=tok.pad_token_id)
    values.update(attrs)
    return SimpleNamespace(**values)


def wait_until(condition: Any, timeout_s: float = 30.0, what: str = "the condition") -> None:
    """Poll ``condition()`` until it is true; an AssertionError after ``timeout_s`` seconds.

    What a test waits on (a server thread ending, a counter moving) is a condition, never a
    fixed sleep: a slow machine only makes the wait longer, not the test wrong.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not come true within {timeout_s:g} s"
        time.sleep(0.01)


@contextlib.contextmanager
def scripted_server(answer: Any) -> Iterator[tuple[str, list[bytes]]]:
    """``(url, request lines seen)`` of an HTTP server on 127.0.0.1 that reads each request whole,
    then lets ``answer(connection, request_line)`` send whatever it likes (a broken reply, a
    hostile one), and closes the connection: for clients facing what no real server would send."""
    import re
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # the test is over
                return
            with connection:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := connection.recv(65536)):
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                while length and len(body) < int(length.group(1)) and (chunk := connection.recv(65536)):
                    body += chunk
                seen.append(head.split(b"\r\n")[0])
                with contextlib.suppress(OSError):  # the client may be gone
                    answer(connection, seen[-1])

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", seen
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()


__all__ = [
    "ISOLATED_ENV", "UNSET_ENV", "FAST_RUN", "EARLIER_DISTIL", "isolate", "is_isolated", "use_cache", "distil_env",
    "problem", "rollout", "verdict", "tiny_tokenizer", "tiny_model", "context_builder", "stub_runtime",
    "wait_until", "scripted_server",
]
