"""Where the corrections store lives: its default path, and whether this process may write it.

A store is one file that reviewers, imports and training runs share, so its default must be
the same for all of them (``$DISTIL_HUMAN_DB``, else one file under the user's data folder). A
store whose file or folder this process cannot write (read-only media, another user's file)
is still a store: :class:`~distil_human.store.CorrectionStore` opens it read-only, with the
reason found here.
"""

from __future__ import annotations

import os

ENV_DB = "DISTIL_HUMAN_DB"


def default_db_path() -> str:
    """``$DISTIL_HUMAN_DB``, else ``~/.local/share/distil/human.sqlite``."""
    return os.environ.get(ENV_DB) or os.path.join(os.path.expanduser("~"), ".local", "share", "distil", "human.sqlite")


def not_writable(path: str) -> str:
    """Why this process cannot write the store at ``path`` (an existing file), or "": SQLite
    needs the file and, for its WAL and shared-memory files, the folder."""
    folder = os.path.dirname(path)
    if not os.access(path, os.W_OK):
        return f"the file {path} is not writable"
    if not os.access(folder, os.W_OK):
        return f"its folder {folder} is not writable"
    return ""
