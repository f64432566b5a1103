"""Which process started a sandbox container, and removing those that outlived it.

A process killed outright (SIGKILL, the OOM killer) removes none of its containers: they stop
once their supervisor's input closes, and stay on the engine. Every container is labelled with
its owner (:func:`owner_of`), and each docker backend, on first use, removes the containers whose
owner is gone (:func:`remove_orphans`), as the memory cgroups of killed processes are removed by
the next one (:mod:`._cgroup`).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from .image import LABEL

OWNER_LABEL = f"{LABEL}.owner"
_HERE: Optional[str] = None


def _here() -> str:
    """This machine's boot and this process's pid namespace: where a pid names one process."""
    global _HERE
    if _HERE is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as fh:
                boot = fh.read().strip()
            _HERE = f"{boot}/{os.readlink('/proc/self/ns/pid')}"
        except OSError:
            _HERE = ""
    return _HERE


def _started(pid: int) -> Optional[str]:
    """When process ``pid`` started (clock ticks since boot), or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[19].decode()
    except (OSError, IndexError):
        return None


def owner_of(pid: int) -> str:
    """The ``distil-sandbox.owner`` label of a container that process ``pid`` starts: this machine's
    boot, the pid namespace, the pid and the process's start time ("" where /proc cannot say)."""
    here, started = _here(), _started(pid)
    return f"{here}/{pid}/{started}" if here and started else ""


def remove_orphans(client: Any) -> int:
    """Remove the sandbox containers whose owner (``distil-sandbox.owner``) was a process of this
    machine's boot and pid namespace that no longer runs; how many went.

    Only this machine's processes are judged (an engine may serve several machines, or
    containers with pid namespaces of their own), and a pid counts as the same process only with
    the same start time. Never raises: what cannot be listed or removed stays."""
    from .docker_container import engine_errors

    here = _here()
    if not here:
        return 0
    try:
        found = client.api.containers(all=True, filters={"label": [f"{LABEL}=1", OWNER_LABEL]})
    except engine_errors():
        return 0
    removed = 0
    for entry in found:
        owner = (entry.get("Labels") or {}).get(OWNER_LABEL, "")
        if not owner.startswith(here + "/"):
            continue
        pid, _, started = owner[len(here) + 1:].partition("/")
        if not pid.isdigit() or not started or _started(int(pid)) == started:
            continue
        try:
            client.api.remove_container(entry["Id"], force=True)
            removed += 1
        except engine_errors():
            continue
    return removed
