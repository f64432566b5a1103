"""A local causal LM answering OpenAI's completions and chat requests, with real log-probs.

:class:`LocalLM` is the model side of ``distil serve`` (:mod:`distil_core.serving.http` is the HTTP
side). It takes a validated request (:mod:`distil_core.serving.requests`) and returns the
response body, in OpenAI's shapes:

    completions       prompt (text or token ids), max_tokens, temperature, top_p, top_k, n, seed, stop,
                      logprobs (top-k, legacy format), echo (prompt scoring with max_tokens=0),
                      prompt_logprobs (vLLM's format), return_tokens_as_token_ids
    chat_completions  messages (the model's chat template; the roles taken and how ``developer``
                      reaches the template: :mod:`distil_core.serving.requests`), logprobs +
                      top_logprobs; messages the template refuses (its ``raise_exception``, as
                      templates that allow no system message do) are a 400 with its words

Log-probs are ``log_softmax`` of the model's logits (before temperature, top-k or top-p, as
vLLM's default ``raw_logprobs``), so an echoed prompt's log-probs are exactly what the model
assigns to each prompt token. They are over all the model's ids, but the tokens answered
(sampled, or among the top-k) are only ever ids the tokenizer has, for a model whose head is
padded past its tokenizer (:mod:`distil_core.serving.next_token`). A sample that ends at EOS
keeps the EOS token (with its log-prob) among its tokens but not in its text, as vLLM does. A
request's ``model`` may name a LoRA adapter loaded onto the served model
(:mod:`distil_core.serving.weights`). A temperature under ``GREEDY_BELOW``
(:mod:`distil_core.serving.requests`) is greedy decoding.

Generation runs on one model thread (:mod:`distil_core.serving.batcher`): requests that arrive
together and share an adapter, ``max_tokens`` and sampling parameters are decoded as one
left-padded, KV-cached batch, each request answered as soon as its own rows end. Sampling is
keyed as in :mod:`distil_core.rollouts.sampling`: row ``j`` of prompt ``p`` draws its token at
position ``t`` by inverse CDF at a uniform hashed from (the request's ``seed``, ``p``, ``j``,
``t``), so a seeded request gets the same samples whether it is decoded alone or beside others.
One lock serialises the forward passes (batches and prompt scoring) and the weight changes.
:meth:`LocalLM.stream` is :meth:`LocalLM.generate` seen step by step, for streamed answers
(:mod:`distil_core.serving.streaming`).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
import uuid
from typing import Any, Callable, Iterator, Optional

from distil_core.serving.batcher import Batcher, Generation, Job, held_while_watched
from distil_core.serving.limits import MAX_REQUEST_ROWS, check_rows, check_text_fits
from distil_core.serving.logprobs import LegacyLogprobs, chat_logprobs, vllm_prompt_logprobs
from distil_core.serving.next_token import checked_logprobs, next_tokens
from distil_core.serving.requests import ApiError, ChatRequest, CompletionRequest, template_messages, token_usage
from distil_core.serving.text import generation_text
from distil_core.serving.tokens import Vocabulary

__all__ = ["LocalLM", "MAX_REQUEST_ROWS"]


class LocalLM:
    """``model`` (a HF causal LM) and its ``tokenizer`` behind OpenAI's request and response shapes."""

    def __init__(self, model: Any, tokenizer: Any, model_name: str = "local", source: Optional[str] = None, *,
                 max_batch_rows: int = 256, max_request_rows: int = MAX_REQUEST_ROWS,
                 on_batch: Optional[Callable[[int, int], None]] = None):
        """``max_batch_rows``: the most rows one batch gathers from several requests (a request
        with more is decoded alone); ``max_request_rows``: the most one request may ask for
        (:mod:`distil_core.serving.limits`). ``on_batch(requests, rows)`` is called for every batch."""
        from distil_core.serving.weights import ServedWeights

        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.weights = ServedWeights(model, source)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.vocab = Vocabulary(tokenizer)
        self.max_request_rows = max_request_rows
        self.longest_token = max((len(b) for b in self.vocab.bytes), default=1)
        # transformers renamed `past_key_values` to `cache`; pass whichever this version takes
        forward = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._model_lock = threading.Lock()
        self._batcher = Batcher(self.decode, max_batch_rows)
        self.on_batch = on_batch

    def open(self) -> None:
        """Answer requests again after :meth:`close` (the server started again)."""
        self._batcher.open()

    def close(self) -> None:
        """Stop the model thread; requests still waiting for it, or queued later, are answered 503."""
        self._batcher.close()

    # -- the endpoints

    def resolve(self, name: Any) -> Optional[str]:
        """The adapter a request's ``model`` names (None: the base model). A missing or
        non-string ``model`` is a 400, a name nothing is served under a 404."""
        if name is None:
            raise ApiError(400, f"You must provide a model parameter: 'model' names the model to answer with "
                                f"({self._served()}).", param="model")
        if not isinstance(name, str):
            raise ApiError(400, f"'model' must be a string naming a served model ({self._served()}); got a "
                                f"{type(name).__name__}.", param="model")
        if name == self.model_name:
            return None
        if name not in self.weights.adapters:
            raise self._not_served(name)
        return name

    def _served(self) -> str:
        return "this server serves " + ", ".join(repr(s) for s in [self.model_name, *self.weights.adapters])

    def _not_served(self, name: str, *, waited: bool = False) -> ApiError:
        why = "was unloaded while this request waited" if waited else "does not exist"
        return ApiError(404, f"The model {name!r} {why}; {self._served()}.", param="model", code="model_not_found")

    def completions(self, request: CompletionRequest, adapter: Optional[str] = None) -> dict[str, Any]:
        """``adapter``: the loaded LoRA adapter to answer with (None: the base weights)."""
        r = request
        all_ids = self.completion_prompts(r)
        # every prompt's n samples in one batched generation
        generations = self.generate(all_ids, r.n, r.max_tokens, r.sampling(), r.logprobs or 0, adapter)
        choices = []
        for p_index, ids in enumerate(all_ids):
            wants_scores = (r.echo and r.logprobs is not None) or r.prompt_logprobs is not None
            scored = self.score(ids, max(r.logprobs or 0, r.prompt_logprobs or 0), adapter) if wants_scores else None
            for j in range(r.n):
                index = p_index * r.n + j
                choices.append(self._completion_choice(r, index, ids, generations[index], scored))
        prompt_tokens = sum(len(ids) for ids in all_ids)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": adapter or self.model_name, "choices": choices,
            "usage": token_usage(prompt_tokens, sum(len(gen.ids) for gen in generations)),
        }

    def completion_prompts(self, r: CompletionRequest) -> list[list[int]]:
        """The token ids of every prompt of a completions request, checked to fit the model."""
        vocab = len(self.vocab)
        check_rows(len(r.prompt), r.n, self.max_request_rows)
        if any(isinstance(p, list) and any(not 0 <= t < vocab for t in p) for p in r.prompt):
            raise ApiError(400, f"'prompt' holds a token id outside the vocabulary (size {vocab}).", param="prompt")
        all_ids = [prompt if isinstance(prompt, list) else self.encode(prompt) for prompt in r.prompt]
        for ids in all_ids:
            if not ids:
                raise ApiError(400, "The prompt is empty.", param="prompt")
            self.check_length(len(ids) + r.max_tokens)
        return all_ids

    def _completion_choice(self, r: CompletionRequest, index: int, ids: list[int], gen: Generation,
                           scored: Optional[dict[str, Any]]) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": gen.finish_reason}
        prompt_text = self.vocab.text(ids) if r.echo else ""
        choice["text"] = prompt_text + gen.text
        choice["logprobs"] = None
        if r.logprobs is not None:
            lp = LegacyLogprobs(self.vocab, r.return_tokens_as_token_ids)
            if r.echo:
                lp.add_prompt(ids, scored, r.logprobs)
            lp.add_generated(gen, len(prompt_text), r.skip_special_tokens)
            choice["logprobs"] = lp.out
        if r.prompt_logprobs is not None:
            choice["prompt_logprobs"] = vllm_prompt_logprobs(self.vocab, ids, scored, r.prompt_logprobs)
        return choice

    def chat_completions(self, request: ChatRequest, adapter: Optional[str] = None) -> dict[str, Any]:
        r = request
        ids, max_tokens = self.chat_prompt(r)
        generations = self.generate([ids], r.n, max_tokens, r.sampling(), r.top_logprobs, adapter)
        choices = [{
            "index": j, "finish_reason": gen.finish_reason,
            "message": {"role": "assistant", "content": gen.text},
            "logprobs": {"content": chat_logprobs(self.vocab, gen)} if r.logprobs else None,
        } for j, gen in enumerate(generations)]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": adapter or self.model_name, "choices": choices,
            "usage": token_usage(len(ids), sum(len(gen.ids) for gen in generations)),
        }

    def chat_prompt(self, r: ChatRequest) -> tuple[list[int], int]:
        """(the prompt's token ids through the chat template, max_tokens) of a chat request."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ApiError(400, f"The model {self.model_name!r} has no chat template; use /v1/completions.")
        from jinja2 import TemplateError, TemplateSyntaxError

        from distil_core.context import chat_ids

        check_rows(1, r.n, self.max_request_rows)
        text = sum(len(str(m.get("content") or "").encode("utf-8", "surrogatepass")) for m in r.messages)
        check_text_fits(text, self.max_positions(), self.longest_token, param="messages")
        try:
            ids = chat_ids(self.tokenizer, template_messages(self.tokenizer.chat_template, r.messages))
        except TemplateSyntaxError:  # the template itself is broken: the server's fault (a 500)
            raise
        except TemplateError as exc:  # the template refused these messages (``raise_exception``)
            raise ApiError(400, f"The chat template of {self.model_name!r} refused the messages: {exc}",
                           param="messages") from None
        room = self.max_positions() - len(ids)
        max_tokens = r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens
        max_tokens = max(min(room, 512), 0) if max_tokens is None else max_tokens
        self.check_length(len(ids) + max_tokens)
        if r.top_logprobs and not r.logprobs:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
        return ids, max_tokens

    # -- model work

    def encode(self, text: str) -> list[int]:
        """``text``'s token ids; a text too long to fit is refused before it is tokenized."""
        check_text_fits(len(text.encode("utf-8", "surrogatepass")), self.max_positions(), self.longest_token)
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)

    def check_length(self, total: int) -> None:
        limit = self.max_positions()
        if total > limit:
            raise ApiError(400, f"This model's maximum context length is {limit} tokens; the request needs "
                                f"{total} (prompt plus max_tokens).", param="max_tokens", code="context_length_exceeded")

    @contextlib.contextmanager
    def _inference(self, adapter: Optional[str] = None) -> Iterator[tuple[Any, Any]]:
        """(module, device) for one forward pass or one generation, under the model lock, in
        eval mode without gradients; ``adapter`` picks the loaded LoRA adapter (None: base). An
        adapter unloaded while the request waited for the lock is a 404 for that request only; after
        :meth:`close`, a 503."""
        import torch

        if self._batcher.closed:  # a scoring request read before its server stopped runs no forward pass
            raise ApiError(503, "The server is shutting down.", "service_unavailable")
        with held_while_watched(self._model_lock):  # a scoring request whose client left stops waiting
            if adapter is not None and adapter not in self.weights.adapters:
                raise self._not_served(adapter, waited=True)  # its name was checked before the request queued
            with torch.no_grad(), self.weights.active(adapter) as module:
                was_training = module.training
                module.eval()
                try:
                    yield module, next(module.parameters()).device
                finally:
                    module.train(was_training)

    def open_jobs(self) -> int:
        """Generation requests queued for the model thread or being decoded now."""
        return self._batcher.open_jobs()

    @contextlib.contextmanager
    def updating(self) -> Iterator[Any]:
        """The served weights (:class:`~distil_core.serving.weights.ServedWeights`), for one
        change, while no request is being answered."""
        with self._model_lock:
            yield self.weights

    def score(self, ids: list[int], k: int, adapter: Optional[str] = None) -> dict[str, Any]:
        """Log-prob of every prompt token given the ones before it, its rank, and the top-k there."""
        import torch

        with self._inference(adapter) as (model, device):
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
            logp = checked_logprobs(logits)[:-1]  # row j-1 predicts ids[j]
            target = torch.tensor(ids[1:], device=device)
            chosen = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            spelt = logp[:, : len(self.vocab)]  # ids past the tokenizer's (a padded head) are no tokens
            ranks = (spelt > chosen.unsqueeze(-1)).sum(-1) + 1
            top_lp, top_ids = torch.topk(spelt, k, dim=-1) if k else (None, None)
        return {
            "chosen": chosen.tolist(), "ranks": ranks.tolist(),
            "top_ids": top_ids.tolist() if k else [[] for _ in ids[1:]],
            "top_lp": top_lp.tolist() if k else [[] for _ in ids[1:]],
        }

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int, sampling: dict[str, Any], k: int,
                 adapter: Optional[str] = None) -> list[Generation]:
        """``n`` samples of each prompt, rows prompt-major, decoded on the model thread in one
        batch with each other and with the rows of other requests that can share it.

        Row ``j`` of prompt ``p`` is keyed by (``seed``, ``p``, ``j``); without a seed, by a
        random one.
        """
        job = self._job(prompts, n, max_tokens, sampling, k, adapter)
        if max_tokens == 0:
            return job.gens
        for gen in self._batcher.run(job):
            gen.text = generation_text(self.vocab, gen, sampling["skip_special"])
        return job.gens

    def stream(self, prompts: list[list[int]], n: int, max_tokens: int, sampling: dict[str, Any],
               adapter: Optional[str] = None) -> Iterator[list[Generation]]:
        """The rows of :meth:`generate` (same keys, so the same samples), yielded as they grow:
        a copy of every row after each decoding step that reaches this request, the last one
        after all rows ended. Closing the iterator early stops the decoding of its rows."""
        job = self._job(prompts, n, max_tokens, sampling, 0, adapter)
        if max_tokens == 0:
            yield job.gens
            return
        yield from self._batcher.stream(job)

    def _job(self, prompts: list[list[int]], n: int, max_tokens: int, sampling: dict[str, Any], k: int,
             adapter: Optional[str]) -> Job:
        from distil_core.rollouts.sampling import row_key

        job = Job([ids for ids in prompts for _ in range(n)], max_tokens, sampling, k, adapter)
        if sampling["temperature"] > 0:
            seed = sampling["seed"] if sampling["seed"] is not None else int.from_bytes(uuid.uuid4().bytes[:7], "big")
            job.keys = [row_key(seed, str(p), j) for p in range(len(prompts)) for j in range(n)]
        return job

    def decode(self, jobs: list[Job]) -> None:
        """Decode ``jobs`` (same adapter, max_tokens and sampling parameters) as one batch.

        Prompts are left-padded into one KV-cached batch; each step draws every live row's
        token (:meth:`_step`). A request is released when its rows have all stopped.
        """
        import torch

        from distil_core.models.padding import pad_batch, position_ids
        from distil_core.rollouts.sampling import SamplingParams, sampling_warpers

        first = jobs[0]
        s, max_tokens = first.sampling, first.max_tokens
        rows = [(job, gen) for job in jobs for gen in job.gens]
        greedy = s["temperature"] == 0
        warpers = [] if greedy else sampling_warpers(SamplingParams(max_tokens, s["temperature"], s["top_p"], s["top_k"]))
        if self.on_batch is not None:
            self.on_batch(len(jobs), len(rows))
        with self._inference(first.adapter) as (model, device):
            keys = None if greedy else torch.tensor([key for job in jobs for key in job.keys], device=device)
            ids, mask = pad_batch([ids for job in jobs for ids in job.rows], self.pad_id, side="left", device=device)
            positions = position_ids(mask)
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            live = list(range(len(rows)))
            for step in range(max_tokens):
                tokens = self._step(out.logits[:, -1].float(), ids, warpers, keys, step, rows, live)
                for job in jobs:
                    if job.cancelled:  # its client hung up: its rows end here
                        for gen in job.gens:
                            gen.done = True
                live = [row for row in live if not rows[row][1].done]
                for job in jobs:
                    if not job.finished.is_set():
                        job.publish()
                        if all(gen.done for gen in job.gens):
                            job.finish()
                if not live:
                    break
                mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
                positions = positions[:, -1:] + 1
                out = model(input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=positions,
                            use_cache=True, **{self._cache_arg: _cache_of(out)})
        for job in jobs:  # the rows that reached max_tokens
            if not job.finished.is_set():
                job.publish()
                job.finish()

    def _step(self, logits: Any, ids: Any, warpers: list[Any], keys: Any, step: int,
              rows: list[tuple[Job, Generation]], live: list[int]) -> Any:
        """Draw every row's next token (:func:`~distil_core.serving.next_token.next_tokens`; greedy
        without ``keys``) and append it to the live rows.

        A row stops at EOS (kept, with its log-prob, as vLLM returns it) or at one of its
        request's stop strings.
        """
        import torch

        logp = checked_logprobs(logits)  # the model's own log-probs, over all its ids
        tokens = next_tokens(logits, len(self.vocab), ids, warpers, keys, step)
        chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).tolist()
        k = max(job.k for job, _ in rows)
        top = torch.topk(logp[:, : len(self.vocab)], k, dim=-1) if k else None
        top_ids, top_lp = (top.indices.tolist(), top.values.tolist()) if k else (None, None)
        token_list = tokens.tolist()
        for row in live:
            (job, gen), token = rows[row], token_list[row]
            gen.ids.append(token)
            gen.logprobs.append(chosen[row])
            gen.top.append(list(zip(top_ids[row][: job.k], top_lp[row][: job.k])) if job.k else [])
            if token == self.eos_id:
                gen.finish_reason, gen.done = "stop", True
            elif job.sampling["stop"] and self._hit_stop(gen, job.sampling["stop"], job.sampling["skip_special"]):
                gen.done = True
        return tokens

    def _hit_stop(self, gen: Generation, stops: list[str], skip_special: bool) -> bool:
        """Cut the generation before the first stop string; True when one was found."""
        text = self.vocab.text(gen.ids, skip_special)
        hits = [text.find(s) for s in stops if s and s in text]
        if not hits:
            return False
        cut, counts = min(hits), self.vocab.char_counts(gen.ids, skip_special)
        kept = next(k for k, count in enumerate(counts) if count >= cut or k == len(gen.ids))  # up to the stop
        del gen.ids[kept:], gen.logprobs[kept:], gen.top[kept:]
        gen.finish_reason = "stop"
        gen.cut_text = text[:cut]
        return True


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
