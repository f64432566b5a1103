"""distil-human: human corrections of failed rollouts, kept in SQLite and fed to the expert.

    store            :class:`CorrectionStore` (SQLite, WAL, safe with concurrent writers)
    distil review    the terminal review of a run's failed rollouts (:mod:`distil_human.review`)
    distil corrections export|import   JSONL exchange (:mod:`distil_human.exchange`)
    feedback source ``human``          corrections → ``human_correction``, solutions → ``demonstration``
"""

from .exchange import export_jsonl, import_jsonl, read_jsonl
from .feedback import HumanFeedback
from .review import ReviewSession, load_failed_rollouts
from .store import SCHEMA_VERSION, Correction, CorrectionStore, default_db_path

__version__ = "0.1.0"
__all__ = [
    "Correction",
    "CorrectionStore",
    "HumanFeedback",
    "ReviewSession",
    "SCHEMA_VERSION",
    "default_db_path",
    "export_jsonl",
    "import_jsonl",
    "load_failed_rollouts",
    "read_jsonl",
]
