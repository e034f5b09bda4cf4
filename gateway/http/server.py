"""The admin listener: hypercorn's trio worker serving the admin API inside the gateway's trio
process.

How it works: `serve_admin` builds a hypercorn `Config` from `[admin]` (bind = `listen`, with
`certfile` / `keyfile` when `[admin.tls]` is set; hypercorn then offers h2 and http/1.1 by ALPN,
TLS 1.2 at least) and runs `hypercorn.trio.serve` with a shutdown trigger. hypercorn's own
messages ("Running on ...") and any error it catches go to the `sqlward.admin` logger; there is
no access log (each approval decision is in the audit trail, and the API logs decisions to
`sqlward.admin` itself); no `Server` header is sent; a request whose bytes stop coming for `READ_TIMEOUT`
seconds is dropped.

Once the socket listens, `task_status.started(port)` reports the port it is bound to (the real
one: `listen = "127.0.0.1:0"` takes a free port).

Shutdown is graceful: hypercorn runs in a cancel scope shielded from the caller's, so when the
caller (the gateway's nursery) is cancelled, `serve_admin` pulls the shutdown trigger instead:
hypercorn stops accepting, lets requests in flight finish for up to `GRACE` seconds, and is
cancelled after that. `serve_admin` returns (or re-raises the caller's cancellation) once
hypercorn is done.

Error handling: a listen address that cannot be bound raises `OSError` from `nursery.start`
before the gateway reports itself started. hypercorn stopping on its own while the gateway runs
is logged as an error (the gateway's other listeners go on).
"""

from __future__ import annotations

import logging
from functools import partial

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import Framework

from sqlward.gateway.config import AdminConfig, parse_listen

__all__ = ["GRACE", "READ_TIMEOUT", "hypercorn_config", "serve_admin"]

log = logging.getLogger("sqlward.admin")

GRACE = 3.0  # seconds requests in flight get to finish when the gateway stops
READ_TIMEOUT = 30  # seconds hypercorn waits for the next bytes of a request


def hypercorn_config(cfg: AdminConfig) -> HypercornConfig:
    """hypercorn's settings for the `[admin]` table."""
    host, port = parse_listen(cfg.listen)
    hc = HypercornConfig()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if cfg.tls is not None:
        hc.certfile = cfg.tls.cert_file
        hc.keyfile = cfg.tls.key_file
    hc.accesslog = None
    hc.errorlog = log
    hc.include_server_header = False
    hc.graceful_timeout = GRACE
    hc.read_timeout = READ_TIMEOUT  # a client that stops sending mid-request is dropped
    hc.shutdown_timeout = GRACE
    return hc


def _port(bind: str) -> int:
    """ "http://127.0.0.1:8443" / "https://[::1]:8443" -> 8443."""
    return int(bind.rsplit(":", 1)[1])


async def serve_admin(
    cfg: AdminConfig, app: Framework, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `cfg.listen` until cancelled (module doc)."""
    hc = hypercorn_config(cfg)
    stop = trio.Event()
    server_scope = trio.CancelScope(shield=True)

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        with server_scope:
            await hypercorn.trio.serve(app, hc, shutdown_trigger=stop.wait, task_status=task_status)
        if not stop.is_set():
            log.error("the admin listener on %s stopped by itself", cfg.listen)

    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(partial(run))
        except OSError as exc:  # the port is taken, the address is not ours: name the listener
            raise OSError(exc.errno, f"the admin listener ([admin] listen) cannot listen on {cfg.listen}: "
                          f"{exc.strerror or exc}") from None
        task_status.started(_port(binds[0]))
        try:
            await trio.sleep_forever()
        finally:
            stop.set()
            server_scope.deadline = trio.current_time() + 2 * GRACE + 1
