"""The toolkit's version: one place, read by the package metadata, ``distil --version``, run
summaries and the plugin host, which checks each plugin's ``distil-toolkit`` requirement
against it (:func:`unmet_requirement`) before importing the plugin. And, in a checkout, the git
revision of its source (:func:`source_revision`): every run's ``summary.json`` records it, and a
bench report names the revisions its runs were trained at beside the one that wrote the report,
since reports are often rewritten from finished runs and a number must trace to the code that
produced it, not to the code that last printed it."""

from __future__ import annotations

import os
import subprocess
from typing import Any, Optional

__version__ = "0.1.0"


def core_version() -> str:
    """The running ``distil-toolkit`` version (what plugins' requirements are checked against)."""
    return __version__


def source_revision() -> Optional[str]:
    """The git revision of the toolkit's source (``-dirty`` with uncommitted changes) when it runs
    from a checkout of the toolkit; None for an installed wheel, including one installed inside
    some other git repository (a virtual environment in a project's folder), whose revision is
    not the toolkit's: the revision counts only when git tracks this very file."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", os.path.basename(__file__)], cwd=here,
                                 capture_output=True, text=True, timeout=10)
        if tracked.returncode != 0:
            return None
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=here,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def unmet_requirement(dist: Any, requirement: str, version: str) -> Optional[str]:
    """Why ``dist`` cannot run against ``requirement`` at ``version``, or None when it can.

    ``dist`` is an installed distribution (``importlib.metadata``); its declared dependency on
    the distribution named ``requirement`` must admit ``version``. A plugin built for another
    release of the core would otherwise fail later, deep inside a run, on a changed signature.
    A dependency under an extra or an environment marker that does not apply is ignored, and so
    is the check when ``packaging`` (which ``pip`` and ``transformers`` bring) is missing.
    """
    try:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.utils import canonicalize_name
    except ImportError:
        return None
    wanted = canonicalize_name(requirement)
    for line in getattr(dist, "requires", None) or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) != wanted:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            return (
                f"requires {req.name}{req.specifier} but {requirement} {version} is running; install a "
                f"release of {dist.metadata['Name']} made for {requirement} {version}"
            )
    return None
