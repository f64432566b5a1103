"""distil-human: human corrections of failed rollouts, kept in SQLite and fed to the expert.

    store            :class:`CorrectionStore` (SQLite, WAL, safe with concurrent writers)
    entries          :class:`Correction` (:mod:`distil_human.records`), one per row or JSONL line
    distil review    the terminal review of a run's failed rollouts (:mod:`distil_human.review`)
    distil corrections export|import   JSONL exchange (:mod:`distil_human.exchange`)
    feedback source ``human``          corrections → ``human_correction``, solutions → ``demonstration``
"""

from .exchange import export_jsonl, import_jsonl, read_jsonl
from .feedback import HumanFeedback
from .location import default_db_path
from .records import Correction
from .review import ReviewSession, load_failed_rollouts
from .schema import SCHEMA_VERSION
from .store import CorrectionStore

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
