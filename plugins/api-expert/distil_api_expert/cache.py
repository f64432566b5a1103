"""The answers on disk, so that a request asked again (a rerun, a resumed run) is neither
sent nor paid for again."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any, Optional

from distil_core.io import atomic_write_json


class ResponseCache:
    """Answers on disk, one JSON file per request hash; each written whole or not at all, so a
    run killed mid-write never leaves an answer that reads as garbage.

    The cache only saves requests: a file that cannot be read back (damaged, even nested too
    deeply for the JSON reader) is a miss, and a write the disk refuses (full, read-only) is
    warned about once and the run goes on uncached, since the answer itself has arrived.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.write_failed = False
        os.makedirs(directory, exist_ok=True)

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], key + ".json")

    def get(self, key: str) -> Optional[dict[str, Any]]:
        try:
            with open(self._path(key), encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError, RecursionError):  # missing, or damaged by something other than us
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        try:
            atomic_write_json(self._path(key), value)
        except OSError as exc:
            if not self.write_failed:
                self.write_failed = True
                warnings.warn(f"expert 'api': cannot write to the answer cache {self.directory} ({exc}); answers "
                              "are used but not cached. Free some space there, or change options.cache_dir.",
                              RuntimeWarning, stacklevel=2)
