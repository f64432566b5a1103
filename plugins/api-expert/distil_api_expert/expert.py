"""The ``api`` expert: a model behind the ``openai`` SDK or ``litellm``, at the best access level it offers.

Access levels, best first (``access: auto`` probes them once, in this order):

- ``prompt_scoring``: the expert context plus the student's exact response is sent as a prompt
  (completions with ``echo`` + ``logprobs`` + ``max_tokens: 0``, or vLLM's ``prompt_logprobs``);
  the top-k log-probs at every response position become ``ExpertSignal(access="topk")`` on the
  student's token ids (see :mod:`distil_api_expert.align` for how positions are matched).
- ``topk``: the expert writes its own answer with top-k log-probs (chat ``logprobs`` +
  ``top_logprobs``). Those log-probs are on the expert's path, not the student's, so the answer
  is used as text; the log-probs are only checked to be there.
- ``text``: the expert writes its own answer; ``ExpertSignal(access="text")``, re-tokenised by
  the engine and trained with sequence cross-entropy.

Failures: authentication and unknown-model errors raise :class:`ConfigError` (at the probe,
before training, or at the first call that meets them); transient errors are retried; a query
whose retries run out, whose answer misses the ``timeout_s`` deadline or the ``max_answer_mb``
cap, or whose answer is malformed (not a JSON object, log-probs that are not numbers ≤ 0 or rows
holding more than all the probability), lacks log-probs or has no text to train on, gets a
failed signal: ``score`` does not raise for what one answer says. The key and the secrets among
``litellm_kwargs`` are replaced by ``***`` in every message the expert produces.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from distil_core import ConfigError, ExpertCapability, ExpertQuery, ExpertSignal, prompt_ids, redacted, redacted_url, resolve

from . import align
from .answers import echo_tokens, prompt_logprobs_tokens, written_text
from .cache import ResponseCache
from .errors import CallError, FatalApiError
from .options import validated_options
from .redaction import redact, secret_values
from .session import Session, retry_policy
from .transports import LiteLLMTransport, OpenAITransport
from .usage import Pricing, Usage

LEVELS = ("prompt_scoring", "topk", "text")
PROBE_MESSAGES = [{"role": "user", "content": "Sort the digits 3 1 2."}]
PROBE_RESPONSE = "The sorted digits are 1 2 3."


def context_seed(seed: int, context: Any) -> int:
    """The request seed for one context: ``seed`` and the context hashed together. The same seed
    and context give the same answer; different contexts never share their random draws (with
    one seed for every request, a server that keys its sampling on the seed would draw the same
    numbers for every query, and the answers would be correlated)."""
    digest = hashlib.sha256(json.dumps([seed, context], ensure_ascii=False, default=str).encode("utf-8", "replace"))
    return int.from_bytes(digest.digest()[:4], "big") >> 1  # 31 bits: every server takes it


@dataclass
class Probe:
    """What the endpoint offers, found once."""

    level: str  # prompt_scoring | topk | text
    variant: str = ""  # prompt scoring: "echo" or "prompt_logprobs"
    same_tokenizer: bool = False
    send_ids: bool = False  # prompt scoring sends the student's token ids (same tokenizer, accepted)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Outcome:
    signal: Optional[ExpertSignal]  # None: prompt scoring could not be aligned
    usage: Usage
    reason: str = ""


class ApiExpert:
    """Any model behind the openai SDK or litellm (OpenAI, vLLM, SGLang, `distil serve`, …)."""

    def __init__(
        self,
        runtime: Any = None,
        model: str = "",
        api_base: Optional[str] = None,
        api_key: Optional[str] = None,
        api_key_env: str = "OPENAI_API_KEY",
        client: str = "openai",
        access: str = "auto",
        k: int = 20,
        max_concurrency: int = 8,
        max_retries: int = 4,
        timeout_s: float = 60.0,
        max_answer_mb: float = 64.0,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        cache_dir: Optional[str] = None,
        price_prompt_per_1k: Optional[float] = None,
        price_completion_per_1k: Optional[float] = None,
        temperature: float = 0.0,
        max_tokens: Optional[int] = None,
        seed: Optional[int] = None,
        text_endpoint: str = "chat",
        misaligned: str = "text",
        probe: bool = True,
        litellm_kwargs: Optional[dict[str, Any]] = None,
    ):
        values = {name: value for name, value in locals().items() if name not in ("self", "runtime")}
        self.options = opts = validated_options(values)
        tokenizer = getattr(runtime, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("expert 'api' needs the student's tokenizer (the trainer passes its runtime).")
        self.tokenizer = tokenizer
        self.vocab = align.StudentVocab(tokenizer)
        config = getattr(runtime, "config", None)
        self.max_tokens = opts.max_tokens or getattr(getattr(config, "rollout", None), "max_new_tokens", None) or 256
        self.where = (redacted_url(opts.api_base) if opts.api_base else
                      "the OpenAI API" if opts.client == "openai" else "litellm's endpoint for the model")
        self.api_key = opts.api_key or os.environ.get(opts.api_key_env) or None
        # never in a message we produce: the key, secret-named options, and a password or key in api_base
        self.secrets = secret_values(self.api_key, opts.litellm_kwargs, opts.api_base)
        if self.api_key is None and opts.api_base is not None:
            self.api_key = "EMPTY"  # servers started without a key accept anything
        if self.api_key is None and opts.client == "openai":
            raise ConfigError(
                f"expert 'api': no API key for {opts.model!r}. Set the {opts.api_key_env} environment "
                "variable, or options.api_key / options.api_key_env; a local server needs options.api_base."
            )
        self.cache = ResponseCache(opts.cache_dir) if opts.cache_dir else None
        self.pricing = Pricing(opts.price_prompt_per_1k, opts.price_completion_per_1k, opts.model,
                               use_litellm=opts.client == "litellm")
        self.retry = retry_policy(opts.max_retries, opts.backoff_s, opts.backoff_max_s)
        self.probe_result: Optional[Probe] = None
        if opts.access == "topk":  # the level's name reads as the signal's: say what it trains on
            warnings.warn("expert 'api': access 'topk' trains on the answer the expert writes, as text (its "
                          "log-probs follow its own tokens, not the student's); a top-k signal on the student's "
                          "tokens needs access 'prompt_scoring' (or 'auto', which tries it first).", UserWarning,
                          stacklevel=2)
        if opts.probe:
            resolve(self.probe())
        elif opts.access != "auto":
            # no probe: trust the configured level; prompt scoring then sends text and aligns by bytes
            self.probe_result = Probe(opts.access, "echo" if opts.access == "prompt_scoring" else "")

    # -- the Expert protocol

    @property
    def capability(self) -> ExpertCapability:
        probe = self.probe_result or resolve(self.probe())
        if probe.level == "prompt_scoring":
            return ExpertCapability(access="topk", k=self.options.k, same_tokenizer=probe.same_tokenizer)
        return ExpertCapability(access="text", same_tokenizer=False)

    async def score(self, queries: Sequence[ExpertQuery]) -> list[ExpertSignal]:
        probe = await self.probe()
        async with self._session() as session:
            try:
                if probe.level == "prompt_scoring":
                    outcomes = await self._prompt_scoring_batch(session, probe, queries)
                else:
                    outcomes = await _all([self._write(session, q, probe.level == "topk") for q in queries])
            except FatalApiError as exc:
                raise self._config_error(exc) from None
        signals = []
        for outcome in outcomes:
            signal = outcome.signal
            signal.usage = outcome.usage.as_dict()
            if signal.error:  # what the provider said may quote the key; it reaches metrics.jsonl
                signal.error = self._redact(signal.error)
            signals.append(signal)
        return signals

    # -- probing

    async def probe(self) -> Probe:
        """Find (once) the best access level the endpoint offers; ConfigError if it offers none.

        Authentication and unknown-model errors surface here, before training starts.
        """
        if self.probe_result is not None:
            return self.probe_result
        wanted = LEVELS if self.options.access == "auto" else (self.options.access,)
        notes: list[str] = []
        async with self._session(use_cache=False) as session:
            for level in wanted:
                try:
                    found = await getattr(self, f"_probe_{level}")(session, notes)
                except FatalApiError as exc:
                    if exc.kind == "not_found" and self.options.access == "auto" and level != "text" \
                            and "model" not in str(exc).lower():
                        notes.append(f"{level}: {exc}")  # an endpoint this server lacks, not the model
                        continue
                    raise self._config_error(exc) from None
                except CallError as exc:
                    if exc.kind == "transient":
                        raise ConfigError(
                            f"expert 'api': no answer from {self.options.model!r} at {self.where} while probing "
                            f"({self._redact(str(exc))}). Check that the server is up and reachable, or raise "
                            "options.timeout_s / options.max_retries."
                        ) from None
                    notes.append(f"{level}: {exc}")
                    continue
                if found is not None:
                    found.notes = [self._redact(note) for note in notes]
                    self.probe_result = found
                    if self.options.access == "auto" and found.level != LEVELS[0]:
                        # a top-k signal on the student's tokens was wanted; say why it is text instead
                        warnings.warn(
                            f"expert 'api': {self.options.model!r} at {self.where} offers no prompt scoring, so "
                            f"training uses the answers it writes, as text (access {found.level!r}): "
                            f"{'; '.join(found.notes)}. Set options.access: text, which trains the same, to silence this.",
                            UserWarning, stacklevel=2)
                    return found
        raise ConfigError(
            f"expert 'api': {self.options.model!r} at {self.where} offers none of the access levels tried "
            f"({', '.join(wanted)}): {self._redact('; '.join(notes))}. Pick another access level or endpoint."
        )

    def _probe_query(self) -> ExpertQuery:
        tok = self.tokenizer
        context = prompt_ids(tok, PROBE_MESSAGES) if getattr(tok, "chat_template", None) else tok.encode(PROBE_MESSAGES[0]["content"])
        response = list(tok.encode(PROBE_RESPONSE, add_special_tokens=False))
        if tok.eos_token_id is not None:
            response.append(tok.eos_token_id)
        return ExpertQuery(problem_id="probe", rollout_index=0, context_messages=PROBE_MESSAGES,
                           context_ids=list(context), response_ids=response, response_text=PROBE_RESPONSE)

    async def _probe_prompt_scoring(self, session: Session, notes: list[str]) -> Optional[Probe]:
        query = self._probe_query()
        text = self._prompt_text(query)
        canonical = list(self.tokenizer.encode(text, add_special_tokens=False))
        try:
            tokens, _ = await session.call("completions", self._echo_params(text), echo_tokens, use_cache=False)
        except CallError as exc:
            if exc.kind == "transient":
                raise
            notes.append(f"echo: {exc}")
            return await self._probe_prompt_logprobs(session, query, notes)
        if not align.same_tokenization(tokens, canonical, self.vocab):
            return Probe("prompt_scoring", "echo", same_tokenizer=False)
        ids = query.context_ids + query.response_ids
        try:
            tokens, _ = await session.call("completions", self._echo_params(ids), echo_tokens, use_cache=False)
            send_ids = align.rows_by_id(tokens, query.context_ids, query.response_ids, self.vocab, self.options.k).ok
        except CallError as exc:
            if exc.kind == "transient":
                raise
            notes.append(f"echo with token ids: {exc}")
            send_ids = False
        return Probe("prompt_scoring", "echo", same_tokenizer=True, send_ids=send_ids)

    async def _probe_prompt_logprobs(self, session: Session, query: ExpertQuery, notes: list[str]) -> Optional[Probe]:
        ids = query.context_ids + query.response_ids
        try:
            tokens, _ = await session.call("completions", self._prompt_logprobs_params(ids),
                                           lambda a: prompt_logprobs_tokens(a, ids), use_cache=False)
        except CallError as exc:
            if exc.kind == "transient":
                raise
            notes.append(f"prompt_logprobs: {exc}")
            return None
        # ids only mean the same thing if the API spells them as the student does
        if not align.rows_by_id(tokens, query.context_ids, query.response_ids, self.vocab, self.options.k).ok:
            notes.append("prompt_logprobs: the API's tokenizer differs from the student's")
            return None
        return Probe("prompt_scoring", "prompt_logprobs", same_tokenizer=True, send_ids=True)

    async def _probe_topk(self, session: Session, notes: list[str]) -> Optional[Probe]:
        await self._write(session, self._probe_query(), True, use_cache=False, max_tokens=4, strict=True)
        return Probe("topk")

    async def _probe_text(self, session: Session, notes: list[str]) -> Optional[Probe]:
        await self._write(session, self._probe_query(), False, use_cache=False, max_tokens=4, strict=True)
        return Probe("text")

    # -- prompt scoring

    def _prompt_text(self, query: ExpertQuery) -> str:
        return self.vocab.text(query.context_ids + query.response_ids).decode("utf-8", errors="replace")

    def _echo_params(self, prompt: Any) -> dict[str, Any]:
        return {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": self.options.k, "temperature": 0.0}

    def _prompt_logprobs_params(self, ids: list[int]) -> dict[str, Any]:
        return {"prompt": ids, "max_tokens": 1, "temperature": 0.0, "extra_body": {"prompt_logprobs": self.options.k}}

    async def _prompt_scoring_batch(self, session: Session, probe: Probe, queries: Sequence[ExpertQuery]) -> list[_Outcome]:
        outcomes = await _all([self._score_one(session, probe, q) for q in queries])
        unaligned = [i for i, o in enumerate(outcomes) if o.signal is None]
        if not unaligned:
            return outcomes
        if self.options.misaligned == "skip":
            for i in unaligned:
                outcomes[i].usage.misaligned += 1
                outcomes[i].signal = ExpertSignal(access="topk", ok=False, error=f"not aligned: {outcomes[i].reason}")
            return outcomes
        # One step trains on one loss path: when some responses cannot be aligned, the whole
        # batch is answered as text (the failed ones stay failed).
        redo = [i for i, o in enumerate(outcomes) if o.signal is None or o.signal.ok]
        written = await _all([self._write(session, queries[i], False) for i in redo])
        for i, outcome in zip(redo, written):
            outcome.usage = outcomes[i].usage.add(outcome.usage)
            outcomes[i] = outcome
        for i in unaligned:
            outcomes[i].usage.misaligned += 1
        return outcomes

    async def _score_one(self, session: Session, probe: Probe, query: ExpertQuery) -> _Outcome:
        import torch

        k = self.options.k
        if probe.send_ids:
            ids = list(query.context_ids) + list(query.response_ids)
            if probe.variant == "prompt_logprobs":
                params, parse = self._prompt_logprobs_params(ids), (lambda a: prompt_logprobs_tokens(a, ids))
            else:
                params, parse = self._echo_params(ids), echo_tokens

            def check(answer: dict[str, Any]) -> align.Alignment:
                return align.rows_by_id(parse(answer), query.context_ids, query.response_ids, self.vocab, k)
        else:
            text = self._prompt_text(query)
            sent = text.encode("utf-8")
            context = self.vocab.text(query.context_ids)
            params = self._echo_params(text)

            def check(answer: dict[str, Any]) -> align.Alignment:
                return align.rows_by_bytes(echo_tokens(answer), sent, context, query.response_ids, self.vocab, k)

        try:
            result, usage = await session.call("completions", params, check)
        except CallError as exc:
            return _Outcome(ExpertSignal(access="topk", ok=False, error=str(exc)), exc.usage)
        if not result.ok:
            return _Outcome(None, usage, result.reason)
        signal = ExpertSignal(
            access="topk",
            topk_ids=torch.tensor(result.ids, dtype=torch.long).reshape(len(query.response_ids), k),
            topk_logprobs=torch.tensor(result.logprobs, dtype=torch.float32).reshape(len(query.response_ids), k),
        )
        return _Outcome(signal, usage)

    # -- the expert writes its own answer

    async def _write(self, session: Session, query: ExpertQuery, with_logprobs: bool, *, use_cache: bool = True,
                     max_tokens: Optional[int] = None, strict: bool = False) -> _Outcome:
        opts = self.options
        params: dict[str, Any] = {"max_tokens": max_tokens or self.max_tokens, "temperature": opts.temperature}
        chat = opts.text_endpoint == "chat"
        if chat:
            params["messages"] = query.context_messages
            if with_logprobs:
                params.update(logprobs=True, top_logprobs=opts.k)
        else:
            params["prompt"] = self.vocab.text(query.context_ids).decode("utf-8", errors="replace")
            if with_logprobs:
                params["logprobs"] = opts.k
        if opts.seed is not None:  # sampled answers repeat where the server honours a seed
            params["seed"] = context_seed(opts.seed, params.get("messages", params.get("prompt")))

        def check(answer: dict[str, Any]) -> str:
            return written_text(answer, chat, with_logprobs, usable=not strict)

        try:
            text, usage = await session.call("chat" if chat else "completions", params, check, use_cache=use_cache)
        except CallError as exc:
            if strict:
                raise
            return _Outcome(ExpertSignal(access="text", ok=False, error=str(exc)), exc.usage)
        return _Outcome(ExpertSignal(access="text", text=text), usage)

    # -- plumbing

    def _session(self, use_cache: bool = True) -> Session:
        opts = self.options
        if opts.client == "litellm":
            transport: Any = LiteLLMTransport(opts.model, opts.api_base, self.api_key, opts.timeout_s, opts.litellm_kwargs)
        else:
            transport = OpenAITransport(opts.model, opts.api_base, self.api_key, opts.timeout_s,
                                        max_answer_bytes=int(opts.max_answer_mb * 2**20))
        # The address names the deployment that answers; a password or key written in it does not
        # change the answer, so a rotated one keeps the cache (and none is hashed into a file name).
        # A user part without a password is masked whole: it is read as a token, not as a name.
        address = redacted_url(opts.api_base) if opts.api_base else None
        scope: dict[str, Any] = {"client": opts.client, "api_base": address, "model": opts.model}
        if opts.litellm_kwargs:  # they shape the answer (a seed, a region); their secrets do not
            scope["litellm_kwargs"] = redacted(opts.litellm_kwargs)  # an answer does not depend on credentials
        return Session(transport, self.retry, self.pricing, opts.max_concurrency,
                       cache=self.cache if use_cache else None, cache_scope=scope)

    def _redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def _config_error(self, exc: FatalApiError) -> ConfigError:
        opts = self.options
        said = self._redact(str(exc)).rstrip(". ")
        if exc.kind == "auth":
            return ConfigError(
                f"expert 'api': {self.where} rejected the credentials for model {opts.model!r}: {said}. "
                f"Set options.api_key, or the {opts.api_key_env} environment variable, to a valid key."
            )
        return ConfigError(
            f"expert 'api': model {opts.model!r} was not found at {self.where}: {said}. Check options.model "
            "(the name the server serves; with client litellm, with its provider prefix such as openai/) "
            "and options.api_base (OpenAI-compatible servers usually end in /v1)."
        )


async def _all(coroutines: list[Any]) -> list[Any]:
    """gather, but a raising task cancels the others (a fatal error stops the whole call)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
