"""The builders the core's tests share, from distil_core.testing (where plugins' tests get them too)."""

from distil_core.testing import FAST_RUN, context_builder as builder, tiny_model, tiny_tokenizer, use_cache as distil_cache

__all__ = ["FAST_RUN", "builder", "tiny_model", "tiny_tokenizer", "distil_cache"]
