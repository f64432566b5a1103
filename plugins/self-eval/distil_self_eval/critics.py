"""Who writes the critiques: the student, another local model, or a registered expert that writes text.

Every critic takes a batch of chat conversations and returns one :class:`Critique` each, in
one call, so the feedback source can critique a whole step's rollouts at once.

    model: student                                   the run's policy (live weights)
    model: /models/critic                            a local directory transformers can load
    model: {expert: my_api, options: {...}}          a registered expert with generate(prompts)
"""

from __future__ import annotations

import inspect
import os
from typing import Any, NamedTuple, Optional, Sequence

from distil_core import prompt_ids
from distil_core import ConfigError, PluginError, did_you_mean, nearest

Messages = list[dict[str, str]]


class Critique(NamedTuple):
    text: str
    tokens: Optional[int] = None  # generated tokens, end-of-turn included; None when not known
    finished: Optional[bool] = None  # False when cut off by max_new_tokens


class LocalCritic:
    """A causal LM and its tokenizer: the prompts go through the tokenizer's chat template."""

    def __init__(self, model: Any, tokenizer: Any, label: str):
        self.model, self.tokenizer, self.label = model, tokenizer, label
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_ids = _stop_ids(model, tokenizer)

    def refusal(self, messages: Messages) -> Optional[str]:
        """What the chat template says when it cannot render ``messages`` (``None`` when it can):
        the trial rendering done when the source is built, through the same :func:`prompt_ids`
        that :meth:`write` uses, so that a template that refuses the critique request stops the
        run before it starts instead of at its first critique."""
        try:
            prompt_ids(self.tokenizer, messages)
        except ConfigError as exc:
            cause = exc.__context__  # the template's own error, which prompt_ids wraps
            return f"{type(cause).__name__}: {' '.join(str(cause).split())[:200]}" if cause is not None else str(exc)
        return None

    def write(self, conversations: Sequence[Messages], max_new_tokens: int, temperature: float) -> list[Critique]:
        """One ``generate`` call for the whole batch; decoded with special tokens skipped."""
        import torch

        from distil_core.models import pad_batch

        prompts = [prompt_ids(self.tokenizer, messages) for messages in conversations]
        device = next(self.model.parameters()).device
        ids, mask = pad_batch(prompts, self.pad_id, side="left", device=device)
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
        else:
            sampling = {"do_sample": False}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.pad_id,
                    eos_token_id=sorted(self.stop_ids) or None,
                    use_cache=True,
                    **sampling,
                )
        finally:
            self.model.train(was_training)
        sequences = out.sequences if hasattr(out, "sequences") else out
        critiques = []
        for row in sequences[:, ids.shape[1] :].tolist():
            stop = next((i for i, t in enumerate(row) if t in self.stop_ids), None)
            body = row if stop is None else row[:stop]
            text = self.tokenizer.decode(body, skip_special_tokens=True)
            critiques.append(Critique(text, len(body) + (stop is not None), stop is not None))
        return critiques


class TextExpertCritic:
    """A registered expert that writes text: ``generate(prompts) -> list[str]``.

    ``prompts`` is a list of chat conversations (lists of ``{"role", "content"}`` messages).
    ``max_new_tokens`` and ``temperature`` are passed as keywords when ``generate`` accepts them.
    """

    def __init__(self, expert: Any, label: str):
        self.expert, self.label = expert, label
        self._keywords = _accepted_keywords(expert.generate, ("max_new_tokens", "temperature"))

    def write(self, conversations: Sequence[Messages], max_new_tokens: int, temperature: float) -> list[Critique]:
        from distil_core import resolve

        wanted = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        prompts = [list(c) for c in conversations]
        texts = resolve(self.expert.generate(prompts, **{k: wanted[k] for k in self._keywords}))
        one_each = isinstance(texts, (list, tuple)) and len(texts) == len(conversations)
        if not one_each or not all(isinstance(t, str) for t in texts):
            raise PluginError(
                f"self_eval: {self.label}.generate returned {_describe(texts)} for {len(conversations)} "
                "prompts; it must return one string per prompt."
            )
        return [Critique(t) for t in texts]


def build_critic(spec: Any, runtime: Any, where: str) -> Any:
    """The critic that ``model:`` names (see the module docstring)."""
    if spec == "student":
        if runtime is None or getattr(runtime, "model", None) is None:
            raise ConfigError(
                f"{where} is 'student', but no run is there to lend its model; build the source "
                "through the plugin host with runtime=."
            )
        return LocalCritic(runtime.model, runtime.tokenizer, "student")
    if isinstance(spec, str):
        return _local_directory_critic(spec, runtime, where)
    if isinstance(spec, dict):
        return _expert_critic(spec, runtime, where)
    raise ConfigError(
        f"{where} must be 'student', a local model directory or {{expert: NAME, options: {{...}}}} (got {spec!r})."
    )


def _local_directory_critic(path: str, runtime: Any, where: str) -> LocalCritic:
    if not os.path.isdir(path):
        guess = " Did you mean 'student'?" if nearest(path, ["student"]) else ""
        raise ConfigError(
            f"{where}: {path!r} is neither 'student' nor a local model directory.{guess} Give 'student' "
            "(the run's policy), the path of a directory transformers' from_pretrained can read, or "
            "{expert: NAME} for a registered expert that writes text."
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = getattr(runtime, "config", None)
    dtype = getattr(torch, config.model.dtype) if config is not None else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot load a model from {path!r}: {' '.join(str(exc).split())}") from None
    if tokenizer.chat_template is None:
        raise ConfigError(
            f"{where}: the tokenizer at {path!r} has no chat template; the critique prompt is a chat message."
        )
    model.to(getattr(runtime, "device", None) or "cpu")
    model.requires_grad_(False)
    return LocalCritic(model, tokenizer, path)


def _expert_critic(spec: dict, runtime: Any, where: str) -> TextExpertCritic:
    unknown = [k for k in spec if k not in ("expert", "options")]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}.{did_you_mean(str(unknown[0]), ['expert', 'options'])}")
    name, options = spec.get("expert"), spec.get("options") or {}
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: {{expert: NAME}} needs the registered name of an expert (got {name!r}).")
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: the options of expert {name!r} must be a mapping (got {options!r}).")
    host = getattr(runtime, "host", None)
    if host is None:
        from distil_core import get_host

        host = get_host()
    reg = host.get("expert", name)
    cannot = (
        f"{where}: expert {name!r} (from plugin {reg.plugin!r}) cannot write text: self_eval calls "
        "generate(prompts) -> list[str] on it, and it has no generate method. Use 'student', a local "
        "model directory, or an expert that generates text."
    )
    if inspect.isclass(reg.factory) and not callable(getattr(reg.factory, "generate", None)):
        raise ConfigError(cannot)  # known before building it (which may load a model)
    expert = host.build("expert", name, options, runtime=runtime)
    if not callable(getattr(expert, "generate", None)):
        raise ConfigError(cannot)
    return TextExpertCritic(expert, f"expert {name!r}")


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-turn ids: the tokenizer's eos and whatever the model's generation config adds."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return ids


def _accepted_keywords(fn: Any, names: Sequence[str]) -> list[str]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return list(names)
    return [n for n in names if n in params]


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{len(value)} items ({', '.join(sorted({type(v).__name__ for v in value})) or 'empty'})"
    return f"a {type(value).__name__}"
