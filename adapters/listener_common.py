"""What every protocol's listener shares: the accept loop, the peer address, and the caps on
connections that have not authenticated yet.

A protocol listener subclasses `ListenerBase`, implements `new_session(stream, client_addr)`
(returning a session with an async `run()`) and `refuse(stream, message)` (refusing a fresh
connection in its protocol, in a short exchange bounded by `REFUSAL_SECONDS`), and may override `prepare()` to do work before
the socket opens (the MySQL listener reads an upstream greeting). It is built by the gateway with
the `SessionServices` and its typed `ListenerSettings`; it owns the `SessionRegistry` of its
live sessions and hands services, settings and registry to each session it creates, so a
session never reads its listener's attributes (and the session module never imports the
listener's).

Stopping: `stop_accepting()` closes the listening sockets (the gateway's drain, first step);
the sessions accepted run on in their own nursery until they end.

Accepting: each accepted connection takes a slot of the process's `PreAuthLimiter` (global and
per client address); over a cap it gets the protocol's refusal at once and is closed, and the
session releases its slot when the client has authenticated. When accept fails for want of
descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the loop logs it once per episode with
what to do, waits a little and accepts again; established sessions are untouched (trio's own
`serve_listeners` would log a traceback every 100 ms).
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Protocol

import trio

from sqlward.adapters.base import ListenerSettings, SessionServices

log = logging.getLogger("sqlward")

# accept() errors that mean "out of a resource": wait and accept again.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
RESOURCE_BACKOFF = 0.1  # seconds between accept attempts while descriptors are exhausted
REFUSAL_SECONDS = 2.0  # how long a refused connection may take to be told
REFUSAL_LOG_INTERVAL = 10.0  # seconds between log lines about refused unauthenticated connections


class _Session(Protocol):
    """What `new_session` returns."""

    async def run(self) -> None: ...


class ListenerBase:
    def __init__(self, services: SessionServices, settings: ListenerSettings) -> None:
        self.services = services
        self.settings = settings
        self.name = settings.name
        self.host = settings.host
        self.port = settings.port  # the bound port once serving (port 0 picks a free one)
        self.refused_preauth = 0  # connections refused by the pre-authentication caps
        self._refusals_unlogged = 0
        self._refusal_logged_at = -REFUSAL_LOG_INTERVAL
        self._accepting = trio.CancelScope()
        self.active = 0  # connections being served (authenticated or not)

    async def prepare(self) -> None:
        """Work to do before the socket opens."""

    def new_session(self, stream: trio.SocketStream, client_addr: str) -> _Session:
        raise NotImplementedError

    async def refuse(self, stream: trio.SocketStream, message: str) -> None:
        """Refuse a fresh connection (too many awaiting authentication) in the protocol, with
        at most a short, bounded exchange; the caller closes the stream."""
        raise NotImplementedError

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await self.prepare()
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise OSError(exc.errno, f"listener {self.name!r} ([[listeners]] listen) cannot listen on {self.host}:{self.port}: "
                          f"{exc.strerror or exc}") from None
        if self.port == 0:
            self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as sessions:
            with self._accepting:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, sessions)
                    task_status.started(self.port)
            # Not accepting any more (`stop_accepting`, the listening sockets are closed): the
            # sessions go on until they end (a drain closes them, adapters/drain.py).

    def stop_accepting(self) -> None:
        """Close the listening sockets; sessions already accepted go on."""
        self._accepting.cancel()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        exhausted_since: float | None = None
        failures = 0
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _RESOURCE_ERRNOS:
                        raise
                    failures += 1
                    if exhausted_since is None:
                        exhausted_since = time.monotonic()
                        log.error(
                            "listener %s cannot accept connections: %s. Established sessions keep running; "
                            "new connections wait until descriptors are free. Raise the descriptor limit "
                            "(ulimit -n, systemd LimitNOFILE, the container runtime's nofile) or lower "
                            "[gateway] max_unauthenticated.", self.name, exc.strerror or exc,
                        )
                    await trio.sleep(RESOURCE_BACKOFF)
                    continue
                if exhausted_since is not None:
                    log.warning("listener %s accepts connections again (%.1f s, %d failed accepts)",
                                self.name, time.monotonic() - exhausted_since, failures)
                    exhausted_since, failures = None, 0
                nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            addr = f"{peer[0]}:{peer[1]}"
            host = str(peer[0])
        except OSError:
            addr = host = "unknown"
        limiter = self.services.preauth
        slot = limiter.acquire(host)
        if slot is None:
            await self._refuse(stream, limiter.refusal(host))
            return
        self.active += 1
        # A drain ends a connection that has not authenticated at once: it has no statement of
        # its own to finish (an authenticated one drains in its relay, adapters/drain.py).
        preauth = trio.CancelScope()

        def drain_starts() -> None:
            if slot.held:
                preauth.cancel()

        unsubscribe = self.services.drain.subscribe(drain_starts)
        try:
            session = self.new_session(stream, addr)
            session.preauth = slot  # type: ignore[attr-defined]
            with preauth:
                await session.run()
        finally:
            unsubscribe()
            self.active -= 1
            slot.release()

    async def _refuse(self, stream: trio.SocketStream, message: str) -> None:
        self.refused_preauth += 1
        self._refusals_unlogged += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning("listener %s refused %d connection(s): %s", self.name, self._refusals_unlogged, message)
            self._refusals_unlogged, self._refusal_logged_at = 0, now
        with trio.move_on_after(REFUSAL_SECONDS):
            try:
                await self.refuse(stream, message)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await trio.aclose_forcefully(stream)
