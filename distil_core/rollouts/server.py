"""Rollouts sampled by an OpenAI-compatible inference server, with its policy kept in step with training.

``rollout.backend: server`` puts a :class:`ServerGenerator` where the in-process
:class:`~distil_core.rollouts.local.Generator` would be. It offers the same ``sample`` (problem-major
rollouts with token ids and sampling log-probs), and the trainer calls its ``after_update``
after every training step (one batch, however many optimizer steps), which is when the server
gets the new policy:

    sample     one ``POST /v1/completions`` per prompt, up to ``max_concurrency`` at once:
               token-id prompt, ``n``, ``temperature``, ``top_p``, ``max_tokens``, ``seed``,
               ``logprobs`` and vLLM's ``return_tokens_as_token_ids`` (so tokens come back as
               ``token_id:N`` with their log-probs, and are never re-tokenised)
    sync lora  ``model.save_pretrained`` of the peft adapters into a fresh directory (atomic),
               then ``POST /v1/load_lora_adapter {lora_name, lora_path, load_inplace}``;
               requests then name the adapter as their ``model``
    sync weights  full safetensors weights into a fresh directory (atomic), then
               ``POST /collective_rpc {method: reload_weights, kwargs: {weights_path}}``
    after either  ``POST /reset_prefix_cache``, so no KV computed by older weights is reused

Versions count training steps: the server's ``policy_version`` is the step whose weights it
holds, and a step's ``staleness`` is how many updates its rollouts' policy lacked (0 when
syncing after every step). ``after_update`` returns both, with ``sync_s`` and ``sync_bytes``,
and the trainer writes them into that step's row of ``metrics.jsonl``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence

import torch

from distil_core.io import atomic_directory
from distil_core.errors import ConfigError
from distil_core.models.forward import vocab_size
from distil_core.rollouts.answers import choices_of, sampled_tokens, served_models
from distil_core.rollouts.client import ServerClient, ServerError
from distil_core.rollouts.sampling import SamplingParams
from distil_core.types import Rollout

KEEP_VERSIONS = 2  # the served version and the one before it stay on disk


# -- syncing the policy ---------------------------------------------------------------------------


class PolicySync:
    """Writes the policy for the server to read and tells the server to load it.

    ``mode`` is ``lora`` (peft adapters, hot-loaded under ``adapter_name``) or ``weights``
    (every weight, reloaded in place). Each version goes to its own directory in ``sync_dir``,
    renamed into place only once complete, so the server never reads a half-written one.
    """

    def __init__(self, client: ServerClient, mode: str, settings: Any, sync_dir: str):
        self.client, self.mode, self.settings, self.dir = client, mode, settings, sync_dir
        self.served_name: str = settings.model  # what completions ask for: the base until adapters load
        self._written: list[str] = []
        self._serial = 0
        self._reset_cache = settings.reset_prefix_cache

    def push(self, model: Any, write: bool = True) -> int:
        """Write ``model``'s policy and load it into the server; returns the bytes written.

        ``write=False`` only advances to the name the pushed policy is served under (the other
        ranks of a run, whose rank 0 pushes).
        """
        self._serial += 1
        if not write:
            if self.mode == "lora":
                self.served_name = self._adapter_name()
            return 0
        path = os.path.join(self.dir, f"{self.mode}-{self._serial:06d}")
        with atomic_directory(path, durable=False) as tmp:  # read at once, never after a crash
            model.save_pretrained(tmp)  # peft: adapter_config.json + adapter_model.safetensors
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        if self.mode == "lora":
            self._load_adapter(path)
        else:
            self._reload_weights(path)
        if self._reset_cache:
            self._reset_prefix_cache()
        self._written.append(path)
        for old in self._written[:-KEEP_VERSIONS]:
            shutil.rmtree(old, ignore_errors=True)
        self._written = self._written[-KEEP_VERSIONS:]
        return size

    def _adapter_name(self) -> str:
        s = self.settings
        return s.adapter_name if s.lora_inplace else f"{s.adapter_name}-{self._serial}"

    def _load_adapter(self, path: str) -> None:
        s = self.settings
        name = self._adapter_name()
        body = {"lora_name": name, "lora_path": os.path.abspath(path), **({"load_inplace": True} if s.lora_inplace else {})}
        try:
            self.client.post("/v1/load_lora_adapter", body)
        except ServerError as exc:
            raise ServerError(f"{exc} {_lora_hint(exc, s.lora_inplace)}", exc.status) from None
        previous, self.served_name = self.served_name, name
        if not s.lora_inplace and previous != s.model:
            try:
                self.client.post("/v1/unload_lora_adapter", {"lora_name": previous})
            except ServerError as exc:
                if exc.status != 404:
                    raise

    def _reload_weights(self, path: str) -> None:
        body = {"method": "reload_weights", "kwargs": {"weights_path": os.path.abspath(path)}}
        try:
            self.client.post("/collective_rpc", body)
        except ServerError as exc:
            hint = ""
            if exc.status == 404:
                hint = (" The server has no /collective_rpc: start vLLM with VLLM_SERVER_DEV_MODE=1 (the endpoint "
                        "exists in development mode only), or use rollout.server.sync: lora.")
            raise ServerError(f"{exc}{hint}", exc.status) from None

    def _reset_prefix_cache(self) -> None:
        try:
            self.client.post("/reset_prefix_cache")
        except ServerError as exc:
            if exc.status != 404:
                raise
            self._reset_cache = False
            warnings.warn("The rollout server has no /reset_prefix_cache (vLLM: VLLM_SERVER_DEV_MODE=1), so "
                          "prompts cached before a sync may reuse KV computed by older weights. Start it in "
                          "development mode, or set rollout.server.reset_prefix_cache: false to silence this.",
                          stacklevel=2)


def _lora_hint(exc: ServerError, inplace: bool) -> str:
    if exc.status == 404:
        return ("The server has no /v1/load_lora_adapter: start vLLM with --enable-lora (and --max-lora-rank >= "
                "model.lora.r) and the environment VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.")
    if inplace and "already" in str(exc):
        return ("This server cannot replace a loaded adapter (load_inplace is recent in vLLM); set "
                "rollout.server.lora_inplace: false to load each version under a new name.")
    return ("Check that the server can read rollout.server.sync_dir at the same path, and that it serves the base "
            "model the adapters were trained on.")


# -- the generator --------------------------------------------------------------------------------


class ServerGenerator:
    """Samples rollouts through an OpenAI-compatible server and keeps its policy in step.

    Same interface as :class:`~distil_core.rollouts.local.Generator` (``sample``, ``model``,
    ``params``), plus ``after_update(model, step)``, which the trainer calls after every step.
    """

    def __init__(self, model: Any, tokenizer: Any, settings: Any, params: SamplingParams, *, mode: str,
                 sync_dir: str, api_key: Optional[str] = None, sync_steps: Sequence[int] = (), world: Any = None):
        self.model, self.tokenizer, self.settings, self.params, self.mode = model, tokenizer, settings, params, mode
        self.world = world  # the trainer's ranks (``main``, ``barrier()``); None: one process
        self.eos_id = tokenizer.eos_token_id
        self.vocab_size = vocab_size(model, tokenizer)  # what a sampled id may index
        self.client = ServerClient(settings.base_url, api_key, settings.timeout_s, settings.retries)
        self.sync = PolicySync(self.client, mode, settings, os.path.abspath(sync_dir))
        self._sync_steps = set(sync_steps)  # evaluations and the last step need the current policy
        self._pool: Optional[ThreadPoolExecutor] = None  # made on first use, again after close()
        self._started = False
        self._version: Optional[int] = None  # step whose weights the server holds; None: the start
        self._rollouts_version: Optional[int] = None

    # -- sampling

    def sample(self, prompts: Sequence[Sequence[int]], problem_ids: Sequence[str], n: int, *,
               params: Optional[SamplingParams] = None, key: Optional[int] = None) -> list[Rollout]:
        """Rollouts ordered problem-major: rows ``i*n .. i*n+n-1`` belong to ``prompts[i]``.

        Each request carries a ``seed``: with ``key``, a hash of (key, problem id), so a
        problem's samples do not depend on the problems sent with it (as far as the server's
        sampling is deterministic); without, a draw from torch's global generator.
        """
        p = params or self.params
        if not self._started:
            self._start()
        if key is None:
            seeds = torch.randint(0, 2 ** 31 - 1, (len(prompts),)).tolist()
        else:
            seeds = [_seed(key, pid) for pid in problem_ids[: len(prompts)]]
        bodies = [self._body(prompt, n, p, seed) for prompt, seed in zip(prompts, seeds)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.settings.max_concurrency, thread_name_prefix="distil-rollouts")
        answers = list(self._pool.map(lambda body: self.client.post("/v1/completions", body), bodies))
        rollouts = []
        for i, answer in enumerate(answers):
            for j, choice in enumerate(choices_of(answer, n, f"{self.client.root}/v1/completions")):
                rollouts.append(self._rollout(choice, prompts[i], problem_ids[i], j, p.max_new_tokens))
        self._rollouts_version = self._version
        return rollouts

    def _body(self, prompt: Sequence[int], n: int, p: SamplingParams, seed: int) -> dict[str, Any]:
        body = {"model": self.sync.served_name, "prompt": list(prompt), "n": n, "max_tokens": p.max_new_tokens,
                "temperature": p.temperature, "top_p": p.top_p, "seed": seed, "logprobs": 1,
                "return_tokens_as_token_ids": True, "skip_special_tokens": True}
        if p.top_k:
            body["top_k"] = p.top_k
        return body

    def _rollout(self, choice: dict[str, Any], prompt: Sequence[int], problem_id: str, group_index: int,
                 max_tokens: int) -> Rollout:
        url = f"{self.client.root}/v1/completions"
        ids, logprobs = sampled_tokens(choice, url, self.vocab_size, max_tokens)
        finished = choice.get("finish_reason") == "stop"
        if finished and (not ids or (ids[-1] != self.eos_id and choice.get("stop_reason") != ids[-1])):
            raise ServerError(f"{url} stopped a completion without returning the stop token; the rollouts need it "
                              "(vLLM returns EOS among the tokens). Do not configure stop strings on the server.")
        return Rollout(
            problem_id=problem_id, group_index=group_index,
            response_text=self.tokenizer.decode(ids, skip_special_tokens=True),
            response_ids=ids, prompt_ids=list(prompt), sampling_logprobs=logprobs,
            finished=finished,
        )

    # -- keeping the server's policy in step

    def _start(self) -> None:
        """Check that the server serves the configured model, then push the starting policy."""
        served = served_models(self.client.get("/v1/models"), f"{self.client.root}/v1/models")
        if self.settings.model not in served:
            raise ConfigError(f"rollout.server.model {self.settings.model!r} is not served at {self.client.root} "
                              f"(it serves {', '.join(map(repr, served)) or 'nothing'}); set it to the base "
                              "model's served name.")
        self._started = True
        if self.mode == "none" or not self.settings.initial_sync:
            return
        if self.mode == "lora":
            from distil_core.models.lora import adapters_are_identity

            if adapters_are_identity(self.model):
                return  # fresh adapters change nothing: the base model is the policy
        self._push(self.model)

    def after_update(self, model: Any, step: int) -> dict[str, Any]:
        """After optimizer step ``step``: this step's rollout version and staleness, and a sync
        when one is due (``sync_every``, evaluations, the last step)."""
        if self._version is None:
            self._version = step - 1  # the weights at the start are those before this step
        version = self._rollouts_version if self._rollouts_version is not None else step - 1
        row: dict[str, Any] = {"policy_version": version, "staleness": step - 1 - version, "sync_s": 0.0,
                               "sync_bytes": 0}
        if self.mode != "none" and (step % self.settings.sync_every == 0 or step in self._sync_steps):
            seconds, size = self._push(model)
            self._version = step
            row.update(sync_s=seconds, sync_bytes=size)
        self._rollouts_version = None
        return row

    def _push(self, model: Any) -> tuple[float, int]:
        """Sync ``model`` to the server. Under torchrun every rank holds the same weights: rank 0
        writes and loads them, and the others wait for it before sampling again."""
        world = self.world
        start = time.perf_counter()
        size = self.sync.push(model, write=world is None or world.main)
        if world is not None:
            world.barrier()
        return time.perf_counter() - start, size

    def close(self) -> None:
        """Stop the request threads (the trainer does when the run ends); sampling again makes new ones."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)



def _seed(key: int, problem_id: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{problem_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


# -- building one from the config -----------------------------------------------------------------


def server_generator(config: Any, model: Any, tokenizer: Any, params: SamplingParams,
                     world: Any = None) -> ServerGenerator:
    """The :class:`ServerGenerator` that ``config.rollout.server`` describes, checked against the policy.

    ``world`` is the trainer's ranks, handed in by the caller (rollouts sit below training and
    cannot look it up): under torchrun rank 0 syncs the policy while the others wait.
    """
    from distil_core.models.lora import is_lora

    s = config.rollout.server
    mode = s.sync if s.sync != "auto" else ("lora" if is_lora(model) else "weights")
    if mode == "lora" and not is_lora(model):
        raise ConfigError("rollout.server.sync: lora sends LoRA adapters, but the policy has none; set model.lora "
                          "(e.g. --set model.lora={}) or use rollout.server.sync: weights.")
    if mode == "weights" and is_lora(model):
        raise ConfigError("rollout.server.sync: weights sends full weights, but the policy trains LoRA adapters "
                          "(model.lora); use rollout.server.sync: lora, which hot-loads the adapters.")
    api_key = s.api_key
    if s.api_key_env:
        api_key = os.environ.get(s.api_key_env)
        if not api_key:
            raise ConfigError(f"rollout.server.api_key_env names {s.api_key_env!r}, which is not set in the "
                              "environment; export it or give rollout.server.api_key.")
    sync_dir = s.sync_dir or (os.path.join(config.train.output_dir, "sync") if config.train.output_dir else None)
    generator = ServerGenerator(model, tokenizer, s, params, mode=mode, sync_dir=sync_dir or tempfile.mkdtemp(
        prefix="distil-sync-"), api_key=api_key, sync_steps=_eval_steps(config), world=world)
    if sync_dir is None:  # a temporary directory goes when the generator does
        weakref.finalize(generator, shutil.rmtree, generator.sync.dir, True)
    return generator


def _eval_steps(config: Any) -> list[int]:
    """Steps after which the trainer evaluates (and the last step): the server must be current."""
    steps, every = config.train.steps, config.train.eval_every
    return sorted({steps, *(range(every, steps + 1, every) if every else ())})
