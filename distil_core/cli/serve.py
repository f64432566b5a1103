"""``distil serve``: load a model and serve it over the OpenAI-compatible API until interrupted.

Loading lives here rather than in :mod:`distil_core.serving` because the tiny base model is
built by the training runtime, which the serving package must not import.
"""

from __future__ import annotations

import argparse
import os
import threading
from typing import Any, Sequence

from distil_core.errors import ConfigError, DistilError

__all__ = ["load_for_serving", "main_serve"]


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
    name = "tiny" if model == "tiny" else os.path.basename(os.path.normpath(source))
    return policy, tokenizer, name


def main_serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; with ``--fault`` the server answers through a fault schedule."""
    from distil_core.serving import FaultyServer, LocalOpenAIServer, parse_fault

    try:
        faults = [parse_fault(f) for f in args.faults]
    except ValueError as exc:
        raise ConfigError(f"--fault: {exc}") from None
    model, tokenizer, name = load_for_serving(args.model, args.overrides)
    options = dict(model_name=args.name or name, host=args.host, port=args.port, api_key=args.api_key,
                   verbose=args.verbose)
    server = FaultyServer(model, tokenizer, faults=faults, **options) if faults else \
        LocalOpenAIServer(model, tokenizer, **options)
    try:
        base = server.start()
    except OSError as exc:
        raise DistilError(f"distil serve: cannot listen on {args.host}:{args.port} ({exc}); pick another --port.") from None
    print(f"Serving {server.model_name!r} at {base}/v1 (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
