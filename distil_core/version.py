"""The toolkit's version: one place, read by the package metadata, ``distil --version``, run
summaries and the plugin host, which checks each plugin's ``distil-toolkit`` requirement
against it (:func:`unmet_requirement`) before importing the plugin."""

from __future__ import annotations

from typing import Any, Optional

__version__ = "0.1.0"


def core_version() -> str:
    """The running ``distil-toolkit`` version (what plugins' requirements are checked against)."""
    return __version__


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
