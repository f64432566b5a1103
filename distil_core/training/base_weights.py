"""The base model a run starts from: recorded in its checkpoints, checked when it resumes.

A checkpoint of a LoRA run holds the adapters alone; resumed, they are put back on whatever
weights the base model's directory holds then. A directory whose model was re-exported or
replaced between two sessions would train on (and evaluate) adapters on weights they were never
trained for, with nothing said (pass@1 57.8 → 0.0). So every checkpoint records the base
directory's weights fingerprint (:func:`~distil_core.io.weights_fingerprint`), and a resume
whose base reads back differently is refused in one line naming the directory.

A full-weight checkpoint holds the whole policy and a frozen or EMA ``self`` expert's copy, so
there the base matters again only where the run rebuilds something from it: the ``initial``
reference of ``loss.kl_to_reference`` when no frozen expert lends its copy. That is checked
too; otherwise a changed base is no reason to refuse (a tiny base rebuilt on another machine
can differ), and the base is hashed only where that is cheap (a tiny base: its fingerprint is
what ``summary.json`` records, and a resumed run keeps the one it started from).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from distil_core.io import weights_fingerprint
from distil_core.models.lora import adapter_base, is_adapter_dir, is_lora


def base_directory(model_source: str) -> str:
    """The directory of the base weights under ``model_source`` (an adapter directory's base)."""
    return adapter_base(model_source) if is_adapter_dir(model_source) else model_source


def reads_base(learner: Any) -> Optional[str]:
    """Why a resumed run reads the base model's weights again, or None where the checkpoint holds
    all it trains: LoRA adapters sit on them, or the ``initial`` KL reference is rebuilt from them."""
    if is_lora(learner.model):
        return "the checkpoint holds LoRA adapters trained on those weights"
    reference = learner.reference
    if reference is None or reference.copy is None:
        return None
    lent = getattr(learner.runtime.expert, "initial_copy", None)
    if callable(lent) and lent() is reference.copy:  # the frozen expert's copy, which the checkpoint restores
        return None
    return "the run's KL reference (loss.kl_to_reference, reference: initial) is a copy of those weights"


def starting_weights(learner: Any, tiny: bool) -> Optional[dict[str, str]]:
    """What a checkpoint records of the base (``path`` and ``sha256``), or None: the base is not
    read again on resume (:func:`reads_base`) and is not a cheap ``tiny`` one, or it has no
    safetensors to hash (a hub name, a ``.bin`` model)."""
    if not (tiny or reads_base(learner)):
        return None
    path = os.path.abspath(base_directory(learner.runtime.model_source))
    sha = weights_fingerprint(path)
    return {"path": path, "sha256": sha} if sha else None


def changed_base(checkpoint: str, recorded: Any, current: Optional[dict[str, str]], learner: Any) -> Optional[str]:
    """The one line refusing to resume ``checkpoint`` on a base that changed, or None (no record:
    a checkpoint from before the record, which resumes as it did; or a base the run does not read)."""
    why = reads_base(learner)
    if not (why and isinstance(recorded, dict) and isinstance(recorded.get("sha256"), str) and current):
        return None
    if recorded["sha256"] == current["sha256"]:
        return None
    path, then = current["path"], recorded.get("path")
    moved = f" (it was {then})" if then and then != path else ""
    return (f"{checkpoint}: the run started from the base model in {path}{moved} with weights fingerprint "
            f"{recorded['sha256']}, and that directory now holds other weights ({current['sha256']}); {why}, and "
            f"resumed on others the run would silently train something else. Put the run's base model back in "
            f"{path}, or start the run again (--overwrite).")


__all__ = ["base_directory", "reads_base", "starting_weights", "changed_base"]
