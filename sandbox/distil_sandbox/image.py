"""The sandbox image, built locally from a few kilobytes: nothing is pulled from a registry.

The image holds only an empty root (mount points, ``/bin``-style links into ``/usr``, a passwd
entry for the ``sandbox`` user, uid 65534). At run time the Docker host's ``/usr`` is
bind-mounted read-only over it, so containers run the host's ``/usr/bin/python3`` and ``bash``.
That host is the machine running the Docker engine (the one ``DOCKER_HOST`` names).

    distil-sandbox image build          # or: python -m distil_sandbox.image
"""

from __future__ import annotations

import io
import sys
import tarfile
from typing import Any

from . import __version__

IMAGE = f"distil-sandbox:{__version__}"
SANDBOX_UID = 65534
LABEL = "distil-sandbox"  # every image and container this package makes carries LABEL=1

_DIRECTORIES = {"usr": 0o755, "etc": 0o755, "tmp": 0o1777, "work": 0o755, "proc": 0o555, "dev": 0o755, "sys": 0o555}
_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
_FILES = {
    "etc/passwd": f"root:x:0:0::/root:/bin/sh\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}::/work:/bin/sh\n",
    "etc/group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\n",
}


def root_filesystem_tar() -> bytes:
    """The image's whole root filesystem as an uncompressed tar; the same bytes on every call."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, mode in sorted(_DIRECTORIES.items()):
            tar.addfile(_entry(name, tarfile.DIRTYPE, mode))
        for name, target in sorted(_LINKS.items()):
            entry = _entry(name, tarfile.SYMTYPE, 0o777)
            entry.linkname = target
            tar.addfile(entry)
        for name, text in sorted(_FILES.items()):
            data = text.encode()
            entry = _entry(name, tarfile.REGTYPE, 0o644)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def _entry(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type = kind
    entry.mode = mode
    entry.mtime = 0
    entry.uid = entry.gid = 0
    entry.uname = entry.gname = "root"
    return entry


def build_image(client: Any, tag: str = IMAGE) -> str:
    """Import the root filesystem as ``tag`` (``docker import``, no pull); returns the image id.

    An image this replaces under ``tag`` is removed unless a container still uses it.
    """
    import docker.errors

    try:
        previous = client.images.get(tag).id
    except docker.errors.ImageNotFound:
        previous = None
    repository, _, version = tag.rpartition(":")
    client.api.import_image_from_data(
        root_filesystem_tar(),
        repository=repository or tag,
        tag=version if repository else None,
        changes=[f"LABEL {LABEL}=1", f"USER {SANDBOX_UID}:{SANDBOX_UID}", "WORKDIR /work"],
    )
    image_id = client.images.get(tag).id
    if previous and previous != image_id:
        try:
            client.images.remove(previous)
        except docker.errors.APIError:  # still in use by a container, or tagged elsewhere too
            pass
    return image_id


def ensure_image(client: Any, tag: str = IMAGE) -> str:
    """The id of ``tag``, building it first when the engine does not have it."""
    import docker.errors

    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        return build_image(client, tag)


if __name__ == "__main__":  # the same as `distil-sandbox image build [--tag TAG]`
    from .cli import main

    sys.exit(main(["image", "build", *sys.argv[1:]]))
