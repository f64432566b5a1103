"""``distil serve``: load a model and serve it over the OpenAI-compatible API until interrupted.

Loading lives here rather than in :mod:`distil_core.serving` because the tiny base model is
built by the training runtime, which the serving package must not import.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
from typing import Any, Sequence

from distil_core.errors import ConfigError, DistilError

__all__ = ["load_for_serving", "main_serve", "served_name"]

QUANT_TAG = re.compile(r"[.-](?:I?Q\d\w*|[Ff](?:16|32)|BF16|bf16)$")
"""A GGUF file name's quantisation tag (``.Q4_1``, ``-Q4_K_M``, ``.f16``): not part of the model's name."""


def served_name(source: str) -> str:
    """The name ``distil serve`` answers to by default for the model directory ``source``.

    A converted GGUF model is cached as ``gguf-<file stem>-<content digest>`` (the digest keeps
    two different files with the same name apart in the cache); it is served under the GGUF
    file's name without its quantisation tag (``SmolLM2-135M-Instruct``), which its
    ``source.json`` records. A Hugging Face cache snapshot (``models--org--name/snapshots/<hash>``)
    is served as ``name``; any other directory under its own name.
    """
    path = os.path.normpath(source)
    try:
        with open(os.path.join(path, "source.json"), encoding="utf-8") as fh:
            gguf_file = json.load(fh).get("gguf_file")
    except (OSError, ValueError, AttributeError):
        gguf_file = None
    if isinstance(gguf_file, str) and gguf_file.lower().endswith(".gguf"):
        stem = os.path.basename(gguf_file)[: -len(".gguf")]
        return QUANT_TAG.sub("", stem) or stem
    parent, base = os.path.split(path)
    repo = os.path.basename(os.path.dirname(parent))
    if os.path.basename(parent) == "snapshots" and repo.startswith("models--"):
        return repo.split("--")[-1]
    return base


def load_for_serving(model: str, overrides: Sequence[str] = (), *, progress: bool = True) -> tuple[Any, Any, str]:
    """(model, tokenizer, served name) for ``distil serve --model``: ``tiny`` or a local directory."""
    from distil_core.config import load_config
    from distil_core.plugin_host import get_host
    from distil_core.training.runtime import load_policy, pick_device

    config = load_config(None, [f"model.name={model}", *overrides])
    task = get_host().build("task", config.task.name, config.task.options) if model == "tiny" else None
    policy, tokenizer, source = load_policy(config, task, progress=progress)
    policy.to(pick_device(config.model.device))
    policy.eval()
    name = "tiny" if model == "tiny" else served_name(source)
    return policy, tokenizer, name


def main_serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; with ``--fault`` the server answers through a fault schedule."""
    from distil_core.serving import FaultyServer, LocalOpenAIServer, parse_fault
    from distil_core.serving.connections import MAX_CONNECTIONS, check_port

    try:
        faults = [parse_fault(f) for f in args.faults]
    except ValueError as exc:
        raise ConfigError(f"--fault: {exc}") from None
    check_port(args.port)  # before the model loads
    limit = getattr(args, "max_connections", None)
    model, tokenizer, name = load_for_serving(args.model, args.overrides)
    options = dict(model_name=args.name or name, host=args.host, port=args.port, api_key=args.api_key,
                   verbose=args.verbose, max_connections=MAX_CONNECTIONS if limit is None else limit)
    if getattr(args, "max_request_rows", None) is not None:
        options["max_request_rows"] = args.max_request_rows
    server = FaultyServer(model, tokenizer, faults=faults, **options) if faults else \
        LocalOpenAIServer(model, tokenizer, **options)
    try:
        base = server.start()
    except OSError as exc:  # a port taken or not allowed (its range is checked above), or a host that is none here
        import errno
        import socket

        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            fix = "give an address of this machine as --host (127.0.0.1, or 0.0.0.0 for every interface)"
        else:
            fix = "pick another --port"
        raise DistilError(f"distil serve: cannot listen on {args.host}:{args.port} ({exc}); {fix}.") from None
    print(f"Serving {server.model_name!r} at {base}/v1 (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
