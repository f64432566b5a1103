"""DistIL toolkit: train language models from rich feedback with Distributional DAgger."""

__version__ = "0.1.0"
