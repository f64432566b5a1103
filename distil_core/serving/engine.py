"""A local causal LM answering OpenAI's completions and chat requests, with real log-probs.

:class:`LocalLM` is the model side of ``distil serve`` (:mod:`distil_core.serving.http` is the HTTP
side). It takes a request body as a dict and returns the response body, in OpenAI's shapes:

    completions       prompt (text or token ids), max_tokens, temperature, top_p, top_k, n, seed, stop,
                      logprobs (top-k, legacy format), echo (prompt scoring with max_tokens=0),
                      prompt_logprobs (vLLM's format), return_tokens_as_token_ids
    chat_completions  messages (the model's chat template), logprobs + top_logprobs

Log-probs are ``log_softmax`` of the model's logits (before temperature, top-k or top-p, as
vLLM's default ``raw_logprobs``), so an echoed prompt's log-probs are exactly what the model
assigns to each prompt token. A sample that ends at EOS keeps the EOS token (with its log-prob)
among its tokens but not in its text, as vLLM does. A request's ``model`` may name a LoRA
adapter loaded onto the served model (:mod:`distil_core.serving.weights`).

Generation runs on one model thread (:class:`_Batcher`): requests that arrive together and
share an adapter, ``max_tokens`` and sampling parameters are decoded as one left-padded,
KV-cached batch, each request answered as soon as its own rows end. Sampling is keyed as in
:mod:`distil_core.rollouts.local`: row ``j`` of prompt ``p`` draws its token at position ``t`` by
inverse CDF at a uniform hashed from (the request's ``seed``, ``p``, ``j``, ``t``), so a seeded
request gets the same samples whether it is decoded alone or beside others. One lock serialises
the forward passes (batches and prompt scoring) and the weight changes.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

MAX_LOGPROBS = 20


# -- token bytes --------------------------------------------------------------------------------


def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's printable stand-ins for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except Exception:
        return False
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders") or []]
    return "ByteLevel" in kinds


_HEX_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def token_bytes_table(tokenizer: Any) -> list[bytes]:
    """The bytes each token id contributes to decoded text, indexed by id.

    Byte-level BPE tokens map back through the byte table; SentencePiece pieces turn ``▁`` into
    a space and ``<0xNN>`` into that byte; added and special tokens are their content. Anything
    else falls back to decoding the id alone (a partial UTF-8 character then reads as U+FFFD).
    """
    size = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    byte_level = _is_byte_level(tokenizer)
    table = _byte_decoder() if byte_level else {}
    out: list[bytes] = []
    for i, piece in enumerate(pieces):
        if i in added:
            out.append(added[i].encode("utf-8"))
        elif piece is None:
            out.append(b"")
        elif byte_level and all(c in table for c in piece):
            out.append(bytes(table[c] for c in piece))
        elif _HEX_BYTE.match(piece):
            out.append(bytes([int(_HEX_BYTE.match(piece).group(1), 16)]))
        elif "\u2581" in piece:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
        else:
            out.append(tokenizer.decode([i]).encode("utf-8"))
    return out


def token_string(raw: bytes) -> str:
    """OpenAI's spelling of one token: its text, or ``bytes:\\xNN…`` when not valid UTF-8 alone."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class ApiError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class LocalLM:
    """``model`` (a HF causal LM) and its ``tokenizer`` behind OpenAI's request and response shapes."""

    def __init__(self, model: Any, tokenizer: Any, model_name: str = "local", source: Optional[str] = None, *,
                 max_batch_rows: int = 256, on_batch: Optional[Callable[[int, int], None]] = None):
        """``max_batch_rows``: the most rows one batch gathers from several requests (a request
        with more is decoded alone). ``on_batch(requests, rows)`` is called for every batch."""
        from distil_core.serving.weights import ServedWeights

        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.weights = ServedWeights(model, source)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.token_bytes = token_bytes_table(tokenizer)
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        # transformers renamed `past_key_values` to `cache`; pass whichever this version takes
        forward = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._model_lock = threading.Lock()
        self._batcher = _Batcher(self._decode, max_batch_rows)
        self.on_batch = on_batch

    def close(self) -> None:
        """Stop the model thread; requests still waiting for it are answered 503."""
        self._batcher.close()

    def completions(self, body: dict[str, Any], adapter: Optional[str] = None) -> dict[str, Any]:
        """``adapter``: the loaded LoRA adapter to answer with (None: the base weights)."""
        prompts = _prompts(body.get("prompt"), len(self.token_bytes))
        max_tokens = _int(body, "max_tokens", 16, 0)
        n = _int(body, "n", 1, 1, 128)
        logprobs = body.get("logprobs")
        logprobs = None if logprobs is None else _int(body, "logprobs", 0, 0, MAX_LOGPROBS)
        prompt_k = body.get("prompt_logprobs")
        prompt_k = None if prompt_k is None else _int(body, "prompt_logprobs", 0, 0, MAX_LOGPROBS)
        echo = bool(body.get("echo", False))
        as_ids = bool(body.get("return_tokens_as_token_ids", False))
        sampling = self._sampling(body)
        all_ids = [prompt if isinstance(prompt, list) else self._encode(prompt) for prompt in prompts]
        for ids in all_ids:
            if not ids:
                raise ApiError(400, "The prompt is empty.", param="prompt")
            self._check_length(len(ids) + max_tokens)
        # every prompt's n samples in one batched generation
        generations = self._generate(all_ids, n, max_tokens, sampling, logprobs or 0, adapter)
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for p_index, ids in enumerate(all_ids):
            prompt_tokens += len(ids)
            scored = self._score(ids, max(logprobs or 0, prompt_k or 0), adapter) if (echo and logprobs is not None) or prompt_k is not None else None
            for j in range(n):
                gen = generations[p_index * n + j]
                completion_tokens += len(gen.ids)
                choice: dict[str, Any] = {"index": p_index * n + j, "finish_reason": gen.finish_reason}
                prompt_text = self._text(ids) if echo else ""
                choice["text"] = prompt_text + gen.text
                if logprobs is not None:
                    lp = _Legacy(self, as_ids)
                    if echo:
                        lp.add_prompt(ids, scored, logprobs)
                    lp.add_generated(gen, len(prompt_text), sampling["skip_special"])
                    choice["logprobs"] = lp.out
                else:
                    choice["logprobs"] = None
                if prompt_k is not None:
                    choice["prompt_logprobs"] = self._vllm_prompt_logprobs(ids, scored, prompt_k)
                choices.append(choice)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": adapter or self.model_name, "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    def chat_completions(self, body: dict[str, Any], adapter: Optional[str] = None) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects.", param="messages")
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ApiError(400, f"The model {self.model_name!r} has no chat template; use /v1/completions.")
        ids = self._chat_ids(messages)
        room = self._max_positions() - len(ids)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = _int({"max_tokens": max_tokens}, "max_tokens", max(min(room, 512), 0), 0)
        self._check_length(len(ids) + max_tokens)
        n = _int(body, "n", 1, 1, 128)
        want = bool(body.get("logprobs", False))
        top = _int(body, "top_logprobs", 0, 0, MAX_LOGPROBS)
        if top and not want:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
        sampling = self._sampling(body)
        choices, completion_tokens = [], 0
        for j, gen in enumerate(self._generate([ids], n, max_tokens, sampling, top, adapter)):
            completion_tokens += len(gen.ids)
            content = None
            if want:
                content = [
                    {**self._chat_token(t, lp), "top_logprobs": [self._chat_token(a, b) for a, b in alts]}
                    for t, lp, alts in zip(gen.ids, gen.logprobs, gen.top)
                ]
            choices.append({
                "index": j, "finish_reason": gen.finish_reason,
                "message": {"role": "assistant", "content": gen.text},
                "logprobs": {"content": content} if want else None,
            })
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": adapter or self.model_name, "choices": choices, "usage": _usage(len(ids), completion_tokens),
        }

    # -- model work

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def _chat_ids(self, messages: list[Any]) -> list[int]:
        from distil_core.context import prompt_ids

        clean = []
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise ApiError(400, "each message needs a 'role' and 'content'.", param="messages")
            content = m.get("content") or ""
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            clean.append({"role": m["role"], "content": content})
        return prompt_ids(self.tokenizer, clean)

    def _text(self, ids: Sequence[int], skip_special: bool = False) -> str:
        kept = (i for i in ids if not (skip_special and i in self.special_ids))
        return b"".join(self.token_bytes[i] for i in kept).decode("utf-8", errors="replace")

    def _max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)

    def _check_length(self, total: int) -> None:
        limit = self._max_positions()
        if total > limit:
            raise ApiError(400, f"This model's maximum context length is {limit} tokens; the request needs "
                                f"{total} (prompt plus max_tokens).", param="max_tokens", code="context_length_exceeded")

    def _sampling(self, body: dict[str, Any]) -> dict[str, Any]:
        temperature = body.get("temperature", 1.0)
        top_p = body.get("top_p", 1.0)
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ApiError(400, "'temperature' must be a number >= 0.", param="temperature")
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ApiError(400, "'top_p' must be in (0, 1].", param="top_p")
        top_k = body.get("top_k", -1)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < -1:
            raise ApiError(400, "'top_k' must be an integer; -1 or 0 turns it off.", param="top_k")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        seed = body.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise ApiError(400, "'seed' must be an integer.", param="seed")
        return {"temperature": float(temperature), "top_p": float(top_p), "top_k": max(top_k, 0), "stop": stop,
                "seed": seed, "skip_special": bool(body.get("skip_special_tokens", True))}

    @contextlib.contextmanager
    def _inference(self, adapter: Optional[str] = None) -> Iterator[tuple[Any, Any]]:
        """(module, device) for one forward pass or one generation, under the model lock, in
        eval mode without gradients; ``adapter`` picks the loaded LoRA adapter (None: base)."""
        import torch

        with self._model_lock, torch.no_grad(), self.weights.active(adapter) as module:
            was_training = module.training
            module.eval()
            try:
                yield module, next(module.parameters()).device
            finally:
                module.train(was_training)

    @contextlib.contextmanager
    def updating(self) -> Iterator[Any]:
        """The served weights (:class:`~distil_core.serving.weights.ServedWeights`), for one
        change, while no request is being answered."""
        with self._model_lock:
            yield self.weights

    def _score(self, ids: list[int], k: int, adapter: Optional[str] = None) -> dict[str, Any]:
        """Log-prob of every prompt token given the ones before it, and the top-k there."""
        import torch

        with self._inference(adapter) as (model, device):
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)[:-1]  # row j-1 predicts ids[j]
            target = torch.tensor(ids[1:], device=device)
            chosen = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            ranks = (logp > chosen.unsqueeze(-1)).sum(-1) + 1
            top_lp, top_ids = torch.topk(logp, k, dim=-1) if k else (None, None)
        return {
            "chosen": chosen.tolist(), "ranks": ranks.tolist(),
            "top_ids": top_ids.tolist() if k else [[] for _ in ids[1:]],
            "top_lp": top_lp.tolist() if k else [[] for _ in ids[1:]],
        }

    def _generate(self, prompts: list[list[int]], n: int, max_tokens: int, sampling: dict[str, Any], k: int,
                  adapter: Optional[str] = None) -> list["_Generation"]:
        """``n`` samples of each prompt, rows prompt-major, decoded on the model thread in one
        batch with each other and with the rows of other requests that can share it.

        Row ``j`` of prompt ``p`` is keyed by (``seed``, ``p``, ``j``); without a seed, by a
        random one.
        """
        from distil_core.rollouts.local import row_key

        job = _Job([ids for ids in prompts for _ in range(n)], max_tokens, sampling, k, adapter)
        if max_tokens == 0:
            return job.gens
        if sampling["temperature"] > 0:
            seed = sampling["seed"] if sampling["seed"] is not None else int.from_bytes(uuid.uuid4().bytes[:7], "big")
            job.keys = [row_key(seed, str(p), j) for p in range(len(prompts)) for j in range(n)]
        for gen in self._batcher.run(job):
            if gen.cut_text is not None:
                gen.text = gen.cut_text
            else:  # EOS ends the text without appearing in it, as in vLLM
                kept = gen.ids[:-1] if gen.finish_reason == "stop" else gen.ids
                gen.text = self._text(kept, skip_special=sampling["skip_special"])
        return job.gens

    def _decode(self, jobs: list["_Job"]) -> None:
        """Decode ``jobs`` (same adapter, max_tokens and sampling parameters) as one batch.

        Prompts are left-padded into one KV-cached batch; each step draws every live row's
        token, and a row stops at EOS (kept, with its log-prob, as vLLM returns it), at one of
        its request's stop strings or at ``max_tokens``. A request is released when its rows
        have all stopped.
        """
        import torch

        from distil_core.rollouts.local import SamplingParams, sampling_warpers, inverse_cdf, keyed_uniform
        from distil_core.models.forward import pad_batch, position_ids

        first = jobs[0]
        s, max_tokens = first.sampling, first.max_tokens
        rows = [(job, gen) for job in jobs for gen in job.gens]
        k = max(job.k for job in jobs)
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
                logits = out.logits[:, -1].float()
                logp = torch.log_softmax(logits, dim=-1)
                if greedy:
                    tokens = torch.argmax(logits, dim=-1)
                else:  # the warpers ignore their ids argument
                    scores = logits
                    for warp in warpers:
                        scores = warp(ids, scores)
                    tokens = inverse_cdf(torch.log_softmax(scores, dim=-1), keyed_uniform(keys, step)).squeeze(-1)
                chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).tolist()
                top = torch.topk(logp, k, dim=-1) if k else None
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
                live = [row for row in live if not rows[row][1].done]
                for job in jobs:
                    if all(gen.done for gen in job.gens):
                        job.finished.set()
                if not live:
                    break
                mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
                positions = positions[:, -1:] + 1
                out = model(input_ids=tokens.unsqueeze(-1), attention_mask=mask, position_ids=positions,
                            use_cache=True, **{self._cache_arg: _cache_of(out)})
        for job in jobs:  # the rows that reached max_tokens
            job.finished.set()

    def _hit_stop(self, gen: "_Generation", stops: list[str], skip_special: bool) -> bool:
        """Cut the generation before the first stop string; True when one was found."""
        text = self._text(gen.ids, skip_special)
        hits = [text.find(s) for s in stops if s and s in text]
        if not hits:
            return False
        cut, kept, used = min(hits), 0, 0
        while kept < len(gen.ids) and used < cut:
            used += len(self._text(gen.ids[kept : kept + 1], skip_special))
            kept += 1
        del gen.ids[kept:], gen.logprobs[kept:], gen.top[kept:]
        gen.finish_reason = "stop"
        gen.cut_text = text[:cut]
        return True

    # -- log-prob formats

    def _token(self, token_id: int, as_ids: bool = False) -> str:
        return f"token_id:{token_id}" if as_ids else token_string(self.token_bytes[token_id])

    def _chat_token(self, token_id: int, logprob: float) -> dict[str, Any]:
        raw = self.token_bytes[token_id]
        return {"token": token_string(raw), "logprob": logprob, "bytes": list(raw)}

    def _vllm_prompt_logprobs(self, ids: list[int], scored: dict[str, Any], k: int) -> list[Optional[dict[str, Any]]]:
        out: list[Optional[dict[str, Any]]] = [None]
        for j in range(1, len(ids)):
            entry = {}
            for rank, (tid, lp) in enumerate(zip(scored["top_ids"][j - 1][:k], scored["top_lp"][j - 1][:k]), start=1):
                entry[str(tid)] = {"logprob": lp, "rank": rank, "decoded_token": token_string(self.token_bytes[tid])}
            if str(ids[j]) not in entry:
                entry[str(ids[j])] = {"logprob": scored["chosen"][j - 1], "rank": scored["ranks"][j - 1],
                                      "decoded_token": token_string(self.token_bytes[ids[j]])}
            out.append(entry)
        return out


@dataclass
class _Generation:
    ids: list = None  # type: ignore[assignment]
    logprobs: list = None  # type: ignore[assignment]
    top: list = None  # type: ignore[assignment]
    text: str = ""
    finish_reason: str = "length"
    cut_text: Optional[str] = None
    done: bool = False

    def __post_init__(self) -> None:
        self.ids, self.logprobs, self.top = [], [], []


class _Job:
    """One request's rows to generate, how to sample them, and (once decoded) their generations."""

    def __init__(self, rows: list[list[int]], max_tokens: int, sampling: dict[str, Any], k: int,
                 adapter: Optional[str]):
        self.rows, self.max_tokens, self.sampling, self.k, self.adapter = rows, max_tokens, sampling, k, adapter
        self.keys: Optional[list[int]] = None  # each row's sampling key; None: greedy
        self.gens = [_Generation() for _ in rows]
        self.error: Optional[BaseException] = None
        self.finished = threading.Event()

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can be decoded in one batch."""
        s = self.sampling
        return self.adapter, self.max_tokens, s["temperature"], s["top_p"], s["top_k"]


class _Batcher:
    """The model thread: decodes the waiting jobs that can share a batch together.

    A request's thread queues its job and waits. The model thread takes the oldest job, lets
    the jobs that arrive right behind it join (until ``GATHER_S`` passes without a new one, at
    most ``MAX_GATHER_S``), and decodes it with every waiting job of the same batch key, up to
    ``max_rows`` rows; the others wait for the next batch, oldest first.
    """

    GATHER_S, MAX_GATHER_S = 0.003, 0.02

    def __init__(self, decode: Callable[[list[_Job]], None], max_rows: int):
        self._decode, self.max_rows = decode, max_rows
        self._cond = threading.Condition()
        self._waiting: list[_Job] = []
        self._thread: Optional[threading.Thread] = None

    def run(self, job: _Job) -> list["_Generation"]:
        """Queue ``job``, wait until its rows are decoded, and return its generations."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="distil-serve-model", daemon=True)
                self._thread.start()
            self._waiting.append(job)
            self._cond.notify_all()
        job.finished.wait()
        if job.error is not None:
            raise job.error
        return job.gens

    def close(self) -> None:
        """End the model thread after its batch; the jobs still waiting fail (a later job starts a new one)."""
        with self._cond:
            self._thread = None
            self._fail(self._waiting, ApiError(503, "The server is shutting down.", "service_unavailable"))
            self._waiting = []
            self._cond.notify_all()

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._waiting and self._thread is me:
                    self._cond.wait()
                if self._thread is not me:
                    return
                self._gather()
                if self._thread is not me:  # closed while gathering: close() failed the waiting jobs
                    return
                batch = self._take()
            try:
                self._decode(batch)
            except Exception as exc:  # answered to every request of the batch (a 500)
                self._fail(batch, exc)
            finally:  # no request waits for ever, whatever stopped the decoding
                self._fail(batch, RuntimeError("The model thread stopped before this request's rows were decoded."))

    def _gather(self) -> None:
        """Wait (holding the condition's lock only between waits) while jobs keep arriving."""
        deadline = time.monotonic() + self.MAX_GATHER_S
        while True:
            seen, left = len(self._waiting), deadline - time.monotonic()
            if left <= 0 or self._rows(self._waiting) >= self.max_rows:
                return
            self._cond.wait(min(self.GATHER_S, left))
            if len(self._waiting) == seen:
                return

    def _take(self) -> list[_Job]:
        """The oldest job and the waiting jobs that can share its batch, within ``max_rows``."""
        key, rows, batch, rest = self._waiting[0].batch_key(), 0, [], []
        for job in self._waiting:
            if job.batch_key() == key and (not batch or rows + len(job.rows) <= self.max_rows):
                batch.append(job)
                rows += len(job.rows)
            else:
                rest.append(job)
        self._waiting = rest
        return batch

    @staticmethod
    def _rows(jobs: list[_Job]) -> int:
        return sum(len(job.rows) for job in jobs)

    @staticmethod
    def _fail(jobs: list[_Job], error: BaseException) -> None:
        for job in jobs:
            if not job.finished.is_set():
                job.error = error
                job.finished.set()


class _Legacy:
    """The legacy completions ``logprobs`` object: tokens, token_logprobs, top_logprobs, text_offset."""

    def __init__(self, lm: LocalLM, as_ids: bool):
        self.lm, self.as_ids = lm, as_ids
        self.out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        self.offset = 0

    def _add(self, token_id: int, logprob: Optional[float], top: Optional[dict[str, float]], skip_special: bool = False) -> None:
        self.out["tokens"].append(self.lm._token(token_id, self.as_ids))
        self.out["token_logprobs"].append(logprob)
        self.out["top_logprobs"].append(top)
        self.out["text_offset"].append(self.offset)
        self.offset += len(self.lm._text([token_id], skip_special))

    def add_prompt(self, ids: list[int], scored: dict[str, Any], k: int) -> None:
        for j, tid in enumerate(ids):
            if j == 0:
                self._add(tid, None, None)
                continue
            pairs = zip(scored["top_ids"][j - 1][:k], scored["top_lp"][j - 1][:k])
            self._add(tid, scored["chosen"][j - 1], {self.lm._token(a, self.as_ids): b for a, b in pairs})

    def add_generated(self, gen: _Generation, start: int, skip_special: bool) -> None:
        self.offset = start
        for tid, lp, alts in zip(gen.ids, gen.logprobs, gen.top):
            self._add(tid, lp, {self.lm._token(a, self.as_ids): b for a, b in alts}, skip_special)


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _prompts(prompt: Any, vocab: int) -> list[Any]:
    """The request's prompt(s): one text, token ids, or a list of either."""
    def ids_ok(p: Any) -> bool:
        return isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)

    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif ids_ok(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or ids_ok(p) for p in prompt):
        prompts = list(prompt)
    else:
        raise ApiError(400, "'prompt' must be a string, a list of token ids, or a list of those.", param="prompt")
    for p in prompts:
        if isinstance(p, list) and any(not 0 <= t < vocab for t in p):
            raise ApiError(400, f"'prompt' holds a token id outside the vocabulary (size {vocab}).", param="prompt")
    return prompts


def _int(body: dict[str, Any], key: str, default: int, low: int, high: Optional[int] = None) -> int:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ApiError(400, f"'{key}' must be an integer {bound} (got {value!r}).", param=key)
    return value


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
