"""Which requests a local HTTP server answers: only its own clients, never a web page's.

A server on 127.0.0.1 is reachable from every page the user's browser opens. A page cannot
read a cross-site answer (no CORS headers are sent), but it can *send*: a form or a ``fetch``
with a ``text/plain`` body is a "simple" request that goes without a preflight, so without a
check any page could reload the served weights or load an adapter. And a page whose own name
it re-points at 127.0.0.1 (DNS rebinding) is same-origin with the server and can read the
answers too. On a server without an API key two checks stop both, and cost a real client
nothing (SDKs and curl send neither header a browser adds):

- a request with another site's ``Origin`` (or ``Sec-Fetch-Site: cross-site``) is refused:
  browsers add that header to every cross-site request;
- a server without an API key that listens on a loopback address answers only ``Host`` names
  that are loopback addresses (:func:`loopback_host`): a rebound page sends its own name.

A server with an API key checks the key instead: a page cannot send it (``Authorization`` is
not a header a cross-site request may carry without a preflight, which is refused), so a
browser extension or an app's web view that sends an ``Origin`` of its own works with the key.
A server on another address is exposed on purpose; there the key is what keeps pages (and
everyone else) out.
The review desk of the ``human`` plugin applies the same ``Host`` rule through
:func:`loopback_host`.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional
from urllib.parse import urlsplit

__all__ = ["LOOPBACK_NAMES", "loopback_host", "loopback_address", "browser_refusal"]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
"""The names a refusal offers for a server that answers only on this machine (:func:`loopback_host`
takes every loopback address literal too)."""


def loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names this machine by a loopback name, on any port: ``localhost``
    or an address literal that is loopback (127.0.0.0/8, ::1) or unspecified (``0.0.0.0``, which
    clients copy from a server's banner). A page that rebinds its own name to 127.0.0.1 still
    sends that name, which is what this refuses; the port is left free so a forwarded port
    (``ssh -L 9000:localhost:8765``, an editor's port mapping) works."""
    name, _, given = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not name or (given and not given.isdigit()):
        name = host
    if name.lower() in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:  # a name: only "localhost" is known not to be a page's own
        return False
    mapped = getattr(address, "ipv4_mapped", None) or address
    return mapped.is_loopback or mapped.is_unspecified


def loopback_address(address: str) -> bool:
    """Whether a listening address (``--host``) is a loopback one: ``localhost`` or 127.0.0.0/8, ::1."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def browser_refusal(headers: Any, *, check_host: bool) -> Optional[str]:
    """Why a request with ``headers`` is refused (a message naming what it sent), or None.

    ``check_host``: the server listens on a loopback address without an API key, so its
    ``Host`` must name a loopback address too."""
    host = str(headers.get("Host", "") or "")
    origin = headers.get("Origin")
    site = str(headers.get("Sec-Fetch-Site", "") or "").lower()
    if origin is not None and origin != "null" and urlsplit(str(origin)).netloc.lower() != host.lower():
        return (f"Refused a request sent by a web page ({str(origin)[:200]!r}): this server answers its own "
                "clients, not other sites' pages.")
    if origin == "null" or site == "cross-site":
        return "Refused a request sent by a web page (a cross-site or opaque origin)."
    if check_host and host and not loopback_host(host):  # browsers always send one; an HTTP/1.0 client may not
        return (f"Refused a request for {host[:200]!r}: a server without --api-key on a loopback "
                "address answers only at 127.0.0.1, localhost or [::1]; give it --api-key to reach it by another name.")
    return None
