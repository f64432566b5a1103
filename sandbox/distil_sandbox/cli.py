"""The ``distil-sandbox`` command.

    distil-sandbox backends                      which backends work here, and why not; for
                                                 those that do, how memory_mb holds (whole job
                                                 or per process) and the namespaces they add
    distil-sandbox image build [--tag TAG]       build the docker image locally (no pull)
    distil-sandbox run FILE [--backend B] [--timeout S] [--stdin PATH]
                                                 run FILE in a sandbox, print the result as JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

from .backends import BackendUnavailable, available_backends
from .image import IMAGE

_LANGUAGES = {".sh": "bash", ".bash": "bash"}  # anything else runs as Python


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="distil-sandbox", description="Run untrusted code in isolation.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backends", help="list the backends and why each unavailable one is")
    image = commands.add_parser("image", help="the docker backend's image")
    image_commands = image.add_subparsers(dest="image_command", required=True)
    build = image_commands.add_parser("build", help="build the image from a local root filesystem (no pull)")
    build.add_argument("--tag", default=IMAGE, help=f"image tag (default {IMAGE})")
    run = commands.add_parser("run", help="run a file in a sandbox and print the result as JSON")
    run.add_argument("file", type=Path)
    run.add_argument("--backend", default="auto", help="auto, bwrap, docker or process (default auto)")
    run.add_argument("--timeout", type=float, default=10.0, help="wall-clock limit in seconds (default 10)")
    run.add_argument("--memory-mb", type=int, default=512, help="memory limit (default 512)")
    run.add_argument("--language", choices=("python", "bash"), help="default: from the file name (.sh is bash)")
    run.add_argument("--stdin", type=Path, help="a file whose contents are the program's stdin")
    args = parser.parse_args(argv)

    if args.command == "backends":
        return _backends()
    if args.command == "image":
        return _build_image(args.tag)
    return _run(args)


def _backends() -> int:
    from .backends import get_backend

    reasons = available_backends()
    width = max(map(len, reasons))
    for name, why in reasons.items():
        print(f"{name:<{width}}  {'available' if not why else 'unavailable: ' + why}")
        guarantees = getattr(get_backend(name), "guarantees", None) if not why else None
        for topic, how in (guarantees() if guarantees else {}).items():
            print(f"{'':<{width}}    {topic}: {how}")
    return 0 if any(not why for why in reasons.values()) else 1


def _build_image(tag: str) -> int:
    try:
        import docker
    except ImportError:
        print("error: the docker Python SDK is not installed: pip install docker", file=sys.stderr)
        return 1
    from .docker_backend import DockerBackend
    from .docker_container import engine_errors
    from .image import build_image

    backend = DockerBackend(image=tag)
    try:
        client = backend.client()
    except engine_errors() as exc:  # the same words as `distil-sandbox backends`
        print(f"error: {backend.unreachable(exc)}", file=sys.stderr)
        return 1
    try:
        image_id = build_image(client, tag)
    except docker.errors.DockerException as exc:
        print(f"error: cannot build {tag}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach the Docker engine at {backend.engine_address()}: {exc}", file=sys.stderr)
        return 1
    print(f"built {tag} ({image_id})")
    return 0


# Job fields as the command line names them, for its error messages.
_OPTIONS = {"timeout_s": "--timeout", "memory_mb": "--memory-mb"}


def _run(args: argparse.Namespace) -> int:
    """Run the file; a job the sandbox refuses (a bad limit or backend, a file that is not UTF-8
    text) is a usage error: one line and exit code 2, as argparse's own."""
    from . import run

    try:
        data = args.file.read_bytes()
        stdin = args.stdin.read_bytes() if args.stdin else None
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        code = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        print(f"error: {args.file} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}): "
              "save the program as UTF-8", file=sys.stderr)
        return 2
    language = args.language or _LANGUAGES.get(args.file.suffix, "python")
    try:
        result = run(code, language=language, stdin=stdin, timeout_s=args.timeout, memory_mb=args.memory_mb,
                     backend=args.backend)
    except BackendUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        message = str(exc)
        for field, option in _OPTIONS.items():
            if message.startswith(field + " "):
                message = option + message[len(field):]
        print(f"error: {message}", file=sys.stderr)
        return 2
    report = {k: v for k, v in dataclasses.asdict(result).items() if not isinstance(v, bytes)}
    report["ok"] = result.ok
    print(json.dumps(report, indent=2))
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
