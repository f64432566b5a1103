"""Start the desk: check the address, bind it, print where it is, serve until Ctrl-C.

The desk is bound to 127.0.0.1 unless told otherwise. Anything else is reachable by other
machines, so it needs a token: the one given with ``--token``, or a fresh random one that is
printed in the address to open.
"""

from __future__ import annotations

import secrets
import socket
from typing import Optional
from urllib.parse import quote

from distil_core import ConfigError
from distil_core.serving import check_port, loopback_address

from ..review_queue import QueueFilter
from ..store import CorrectionStore
from .app import build_app
from .desk import Desk


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on (host, port); port 0 takes any free port. A port outside
    0–65535 is refused (the resolver would take it modulo 65536 and listen elsewhere)."""
    check_port(port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)  # connections wait in the backlog from now on, before the server loop runs
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); choose "
                          "another --port (0 picks a free one) or --host.") from None
    return sock


def serve(run_dir: str, *, db: Optional[str], author: str, host: str = "127.0.0.1", port: int = 8765,
          token: Optional[str] = None, sort: str = "failing", filters: Optional[QueueFilter] = None) -> int:
    import uvicorn

    if not loopback_address(host) and not token:
        token = secrets.token_urlsafe(18)
    with CorrectionStore(db, read_only=False) as store:
        desk = Desk(run_dir, store, author=author, sort=sort, filters=filters)
        sock = bind(host, port)
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={quote(token, safe='')}" if token else "")
        problems = len(desk.queue(desk.default))
        print(f"Review desk for {run_dir}: {problems} problems with failed responses; entries go to {store.path}.")
        if desk.skipped_note:
            print(desk.skipped_note)
        print(f"Open {url}  (Ctrl-C stops the desk)", flush=True)
        server = uvicorn.Server(uvicorn.Config(build_app(desk, token), log_level="warning", lifespan="off"))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            sock.close()
    return 0
