"""A tiny causal LM and tokenizer, built offline, for the embedded default and the tests.

The tokenizer is a byte-level BPE (any text encodes) whose digits are always single tokens,
trained in milliseconds on a corpus the caller gives; its chat template is

    <|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>

The model is a small Llama (RoPE, RMSNorm, SwiGLU) from ``transformers``, randomly initialised
from a seed. Nothing is downloaded.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

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
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 256,
    seed: int = 0,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` of about ``12 * layers * hidden_size**2`` weights."""
    import torch
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
