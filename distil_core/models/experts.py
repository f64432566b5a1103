"""Built-in experts: ``self`` (the policy with feedback in context) and ``hf`` (another local model).

Both score a batch of queries in one forward pass over ``context + response`` and return the
logits at the response positions: row t predicts ``response_ids[t]``, exactly the positions
at which the student is trained.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Any, Literal, Optional, Sequence

from distil_core.errors import ConfigError
from distil_core.hookspecs import hookimpl
from distil_core.types import ExpertCapability, ExpertQuery, ExpertSignal

# torch is imported where it is used, so that registering these experts (every `distil`
# command does) stays cheap.

Access = Literal["dense", "topk"]
Scored = Literal["dense", "topk", "hidden"]


def score_queries(
    model: Any,
    queries: Sequence[ExpertQuery],
    pad_id: int,
    *,
    access: Scored = "dense",
    k: Optional[int] = None,
    batch_size: int = 64,
    vocab: Optional[int] = None,
) -> list[ExpertSignal]:
    """One batched prefill per ``batch_size`` queries; logits at the student's response positions.

    ``access="hidden"``: the last hidden states there instead, with the model's output
    projection (shared, not copied), for the chunked losses. ``vocab``: only the first ``vocab``
    columns (a model whose padded vocabulary is wider than the student's logits).
    """
    import torch

    from distil_core.models.forward import topk_with_tail
    from distil_core.models.forward import output_projection, response_hidden, response_logits

    if access == "hidden":
        weight, bias = output_projection(model)
        head = (weight.detach()[:vocab], bias.detach()[:vocab] if bias is not None else None)

    was_training = model.training
    model.eval()
    signals: list[ExpertSignal] = []
    try:
        for start in range(0, len(queries), batch_size):
            chunk = queries[start : start + batch_size]
            with torch.no_grad():
                if access == "hidden":
                    hidden, _, _ = response_hidden(model, [q.context_ids for q in chunk], [q.response_ids for q in chunk], pad_id)
                    signals.extend(
                        ExpertSignal(access="hidden", hidden=hidden[row, : len(q.response_ids)], head=head)
                        for row, q in enumerate(chunk)
                    )
                    continue
                logits, _, _ = response_logits(model, [q.context_ids for q in chunk], [q.response_ids for q in chunk], pad_id)
            for row, query in enumerate(chunk):
                resp = logits[row, : len(query.response_ids), :vocab].float()
                if access == "topk":
                    top_ids, top_logprobs = topk_with_tail(resp, k)
                    signals.append(ExpertSignal(access="topk", topk_ids=top_ids, topk_logprobs=top_logprobs))
                else:
                    signals.append(ExpertSignal(access="dense", logits=resp))
    finally:
        model.train(was_training)
    return signals


class _LocalModelExpert:
    access: Access
    k: Optional[int]
    model: Any
    pad_id: int
    vocab: Optional[int] = None  # cut signals to the student's logits' width (HFExpert, padded vocabularies)

    def _check_access(self, access: str, k: Optional[int]) -> None:
        if access not in ("dense", "topk"):
            raise ConfigError(f"expert access must be 'dense' or 'topk', not {access!r}")
        if access == "topk" and not k:
            raise ConfigError("expert access 'topk' needs k (for example k: 20)")

    @property
    def capability(self) -> ExpertCapability:
        return ExpertCapability(access=self.access, k=self.k if self.access == "topk" else None)

    def score(self, queries: Sequence[ExpertQuery]) -> list[ExpertSignal]:
        with self._scoring():
            return score_queries(self.model, queries, self.pad_id, access=self.access, k=self.k, vocab=self.vocab)

    def score_hidden(self, queries: Sequence[ExpertQuery]) -> list[ExpertSignal]:
        """Hidden states instead of [T, V] logits, for the trainer's chunked losses
        (``loss.chunk_size``); a top-k expert answers with its top-k as usual."""
        with self._scoring():
            access = "hidden" if self.access == "dense" else self.access
            return score_queries(self.model, queries, self.pad_id, access=access, k=self.k, vocab=self.vocab)

    def _scoring(self) -> Any:
        return contextlib.nullcontext()


class SelfExpert(_LocalModelExpert):
    """The policy itself with feedback in its context.

    ``weights``: ``frozen`` (the default) the initial weights; ``live`` the student's current
    weights (the same module, no copy; a small model taught this way can collapse); ``ema`` a
    copy updated in place after every training step (one batch, however many optimizer steps),
    ``θ_T ← (1 - ema_rate) θ_T + ema_rate θ``.

    Under LoRA (``model.lora``) no copy of the model is made: ``frozen`` scores with the same
    module, its adapters switched off (the base weights are the initial weights, since they are
    never trained; adapters loaded from a directory are kept as a snapshot instead and swapped
    in), and ``ema`` keeps an average of the adapter weights alone, swapped in for the duration
    of each scoring call.
    """

    def __init__(
        self,
        runtime: Any,
        weights: Literal["live", "frozen", "ema"] = "frozen",
        ema_rate: float = 0.05,
        access: Access = "dense",
        k: Optional[int] = None,
    ):
        from distil_core.models.lora import adapter_weights, adapters_are_identity, is_lora

        if weights not in ("live", "frozen", "ema"):
            raise ConfigError(f"expert 'self': weights must be live, frozen or ema (got {weights!r})")
        if not 0.0 < ema_rate <= 1.0:
            raise ConfigError(f"expert 'self': ema_rate must be in (0, 1] (got {ema_rate})")
        self._check_access(access, k)
        self.weights, self.ema_rate, self.access, self.k = weights, ema_rate, access, k
        self.policy = runtime.model
        self.pad_id = runtime.pad_id
        self.lora = is_lora(self.policy)
        self.ema_adapters: Optional[dict[str, Any]] = None  # adapter weights swapped in to score
        self.adapters_off = False
        if weights == "live" or self.lora:
            self.model = self.policy
            if weights == "frozen" and self.lora and adapters_are_identity(self.policy):
                self.adapters_off = True
            elif weights != "live":
                self.ema_adapters = adapter_weights(self.policy)
        else:
            self.model = copy.deepcopy(self.policy)
            self.model.requires_grad_(False)
            if weights == "frozen":
                self.model.eval()

    def initial_copy(self) -> Optional[Any]:
        """The frozen copy of the policy's starting weights this expert scores with, or None.

        ``loss.kl_to_reference``'s ``initial`` reference is the same weights: it reuses this copy
        instead of holding a second one (a whole model's worth of memory). Only ``frozen``
        without LoRA holds such a copy; ``ema`` changes its copy, ``live`` and LoRA hold none.
        """
        frozen = self.weights == "frozen" and self.model is not self.policy
        return self.model if frozen else None

    def _scoring(self) -> Any:
        """The weights to score with: adapters off (frozen under LoRA), the EMA adapters, or as is."""
        if self.adapters_off:
            return self.policy.disable_adapter()
        if self.ema_adapters is not None:
            from distil_core.models.lora import swapped_adapters

            return swapped_adapters(self.policy, self.ema_adapters)
        return contextlib.nullcontext()

    def on_policy_update(self, policy: Any) -> None:
        """Called by the trainer after each training step that moved the weights."""
        if self.weights != "ema":
            return
        import torch

        with torch.no_grad():
            if self.ema_adapters is not None:  # LoRA: the adapters alone
                current = dict(policy.named_parameters())
                for name, teacher in self.ema_adapters.items():
                    teacher.lerp_(current[name].detach(), self.ema_rate)
                return
            for teacher, student in zip(self.model.parameters(), policy.parameters()):
                teacher.lerp_(student.detach(), self.ema_rate)

    def state_dict(self) -> dict[str, Any]:
        if self.ema_adapters is not None:
            return {"adapters": self.ema_adapters}
        return {} if self.model is self.policy else {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.ema_adapters is not None:
            if "adapters" in state:
                for name, value in state["adapters"].items():
                    self.ema_adapters[name].copy_(value)
            return
        if self.model is not self.policy and "model" in state:
            self.model.load_state_dict(state["model"])


class HFExpert(_LocalModelExpert):
    """Another local causal LM (a directory ``from_pretrained`` can read) with the student's tokenizer."""

    def __init__(self, runtime: Any, path: str, access: Access = "dense", k: Optional[int] = None, dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from distil_core.models.model_dir import reading_model_dir, remote_code_problem

        self._check_access(access, k)
        self.access, self.k = access, k
        if not os.path.isdir(path):
            raise ConfigError(f"expert 'hf': cannot load a model from {path!r}: it is not a local model directory. "
                              "Give expert.options.path as a directory that transformers' from_pretrained can read "
                              "(models are never downloaded at run time).")
        problem = remote_code_problem(path)
        if problem is not None:
            raise ConfigError(f"expert 'hf': cannot load a model from {path!r}: {problem}")
        named_by = "expert.options.path"
        try:  # never the directory's own code, never a download; a missing or damaged file named
            with reading_model_dir(path, "tokenizer", named_by):
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            with reading_model_dir(path, "weights", named_by):
                self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                                  local_files_only=True, trust_remote_code=False)
        except ConfigError as exc:
            raise ConfigError(f"expert 'hf': {exc}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"expert 'hf': cannot load a model from {path!r}: {' '.join(str(exc).split())}") from None
        if tokenizer.get_vocab() != runtime.tokenizer.get_vocab():
            raise ConfigError(
                f"expert 'hf': the tokenizer at {path!r} differs from the student's. Dense and "
                "top-k signals need the same vocabulary; use a text-level expert (the API expert "
                "plugin) for a model with another tokenizer."
            )
        self.vocab = self._check_vocab(path, tokenizer, runtime)
        self.model.to(runtime.device)
        self.model.requires_grad_(False)
        self.pad_id = runtime.pad_id

    def _check_vocab(self, path: str, tokenizer: Any, runtime: Any) -> Optional[int]:
        """The width of the student's logits when this model's is larger (a padded vocabulary: its
        signals are cut to it), else None; a ConfigError when the widths cannot be matched."""
        rows = self.model.get_input_embeddings().weight.shape[0]
        if rows < len(tokenizer):
            raise ConfigError(f"expert 'hf': the model at {path!r} has {rows} token embeddings, fewer than the "
                              f"{len(tokenizer)} tokens of its tokenizer; its config.json vocab_size does not fit it")
        from distil_core.models.forward import output_projection, vocab_size

        student = vocab_size(runtime.model, runtime.tokenizer)  # what check_signals holds signals to
        width = output_projection(self.model)[0].shape[0]
        if width < student and self.access == "dense":
            raise ConfigError(f"expert 'hf': the model at {path!r} scores {width} tokens, the student {student} (a "
                              "padded vocabulary); dense signals need the same width: use access: topk")
        return student if width > student else None


@hookimpl
def register_experts(register):
    register("self", SelfExpert, description="The policy itself, with feedback in its context.")
    register("hf", HFExpert, description="Another local HF model with the student's tokenizer.")
