"""Why a model or adapter directory cannot be loaded, in one line that names the file.

transformers and peft report a directory copied in part (a run's ``final/``) or a file cut short
as a traceback about what they tried; the loaders here find which file is missing or damaged and
say that instead. A failure whose files look whole is left as it was: it has another cause.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator, Optional

from safetensors import SafetensorError

from distil_core.errors import ConfigError


STUDENT = "model.name, or the run given to distil eval"
"""Where a user names the student's model directory: what :func:`unloadable` says to fix."""


def unloadable(kind: str, path: str, problem: str, named_by: str = STUDENT) -> ConfigError:
    """The one line for a ``kind`` ("model" or "adapter") directory that cannot be loaded;
    ``named_by`` is where the user gave that directory."""
    return ConfigError(f"{kind} directory {path!r} cannot be loaded: {problem}. Restore that file, or give a "
                       f"complete model directory ({named_by}).")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
JSON_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json")
"""What from_pretrained reads of a model directory, as :func:`model_dir_problem` looks for it."""


@contextlib.contextmanager
def reading_model_dir(path: str, part: str, named_by: str = STUDENT) -> Iterator[None]:
    """Loading the ``part`` (``tokenizer`` or ``weights``) of model directory ``path``: when a file
    of it is missing or damaged (a run's ``final/`` copied in part, a download cut short), the
    one line names the directory and the file instead of transformers' traceback. A failure
    whose files look whole is not converted: it has another cause. A directory that needs its own
    Python code (``auto_map``) is refused before transformers is asked (:func:`remote_code_problem`).
    ``named_by`` is where the user gave the directory (the student's by default)."""
    problem = remote_code_problem(path)
    if problem is not None:
        raise unloadable("model", path, problem, named_by)
    try:
        yield
    except (OSError, ValueError, SafetensorError) as exc:
        problem = model_dir_problem(path, part, exc)
        if problem is None:
            raise
        raise unloadable("model", path, problem, named_by) from None


def remote_code_problem(path: str) -> Optional[str]:
    """What in ``path`` would make transformers run the directory's own Python code (an ``auto_map``
    for a model or tokenizer class it does not have; transformers asks on stdin whether to run it),
    as a short phrase; None when transformers loads it with its own classes. distil never runs it."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    for name in ("config.json", "tokenizer_config.json"):
        try:
            with open(os.path.join(path, name), encoding="utf-8") as fh:
                found = json.load(fh)
        except (OSError, ValueError):
            continue  # missing or damaged: model_dir_problem names it if loading fails
        if not isinstance(found, dict) or not found.get("auto_map"):
            continue
        if name == "config.json" and found.get("model_type") not in CONFIG_MAPPING:
            what = f"model_type {found.get('model_type')!r}"
        elif name == "tokenizer_config.json" and found.get("tokenizer_class") and \
                tokenizer_class_from_name(str(found["tokenizer_class"])) is None:
            what = f"tokenizer_class {found['tokenizer_class']!r}"
        else:
            continue
        return (f"{name} maps {what}, which transformers does not have, to Python code in the directory "
                "(auto_map), and distil never runs a model directory's code; use a model of an architecture "
                "transformers has")
    return None


def model_dir_problem(path: str, part: str, exc: BaseException) -> Optional[str]:
    """Which file of model directory ``path`` kept its ``part`` from loading, and how, as a short
    phrase; None when none is missing or damaged."""
    found = {}
    for name in JSON_FILES:
        try:
            with open(os.path.join(path, name), encoding="utf-8") as fh:
                found[name] = json.load(fh)
        except FileNotFoundError:
            continue
        except ValueError:  # not JSON, or not text at all
            return f"{name} is damaged (not valid JSON)"
    if part == "tokenizer" and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        return f"it has no tokenizer file ({' or '.join(TOKENIZER_FILES)})"
    if "config.json" not in found:
        return "it has no config.json"
    if not isinstance(found["config.json"], dict) or "model_type" not in found["config.json"]:
        return "config.json names no model_type"
    if part != "weights":
        return None
    if isinstance(exc, SafetensorError):
        files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
        return f"{files[0] if len(files) == 1 else 'a .safetensors weights file'} is damaged ({exc})"
    if not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES):
        return f"it has no weights file ({WEIGHT_FILES[0]})"
    return None


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_weights_problem(path: str) -> Optional[str]:
    """What is wrong with the adapter weights in ``path`` (missing, or a safetensors file whose
    header cannot be read), as a short phrase; None when they look whole."""
    present = [name for name in ADAPTER_WEIGHTS if os.path.isfile(os.path.join(path, name))]
    if not present:
        return f"it has no adapter weights ({ADAPTER_WEIGHTS[0]})"
    if present[0].endswith(".safetensors"):
        try:
            adapter_shapes(path)
        except ValueError as exc:
            return str(exc)
    return None


def adapter_shapes(path: str) -> dict[str, list[int]]:
    """The shape of every tensor in ``path``/adapter_model.safetensors, read from its header
    alone (no weights are loaded). A header that cannot be read raises ValueError with a short
    phrase naming the file, so a check and a loader read the header once between them."""
    from safetensors import safe_open

    name = ADAPTER_WEIGHTS[0]
    try:
        with safe_open(os.path.join(path, name), framework="pt") as fh:
            return {key: list(fh.get_slice(key).get_shape()) for key in fh.keys()}
    except Exception as exc:  # SafetensorError, or an OSError for a file that is not one
        raise ValueError(f"{name} is damaged ({' '.join(str(exc).split())[:120]})") from exc
