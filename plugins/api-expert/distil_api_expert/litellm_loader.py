"""The one place ``litellm`` is imported.

Importing litellm takes seconds and, left to itself, fetches the model cost map over the
network; the plugin must stay cheap to import and work offline. Both the litellm transport
(:mod:`.transports`) and litellm's prices (:class:`~distil_api_expert.usage.Pricing`) need it,
and only when chosen, so each calls :func:`import_litellm` when first used.
"""

from __future__ import annotations

import os
import warnings
from typing import Any


def import_litellm() -> Any:
    """litellm, without its network fetch of the model cost map (it ships a local copy)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with warnings.catch_warnings():  # its pydantic models warn at import; nothing for our users to act on
        warnings.simplefilter("ignore")
        import litellm

    litellm.suppress_debug_info = True
    # its pydantic models warn when first used; nothing for our users to act on
    warnings.filterwarnings("ignore", message=".*is using the `ReadOnly` qualifier.*", category=UserWarning)
    return litellm
