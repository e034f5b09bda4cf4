"""A PostgreSQL listener: accepts connections, runs a session each, and routes CancelRequests.

The listener owns the table of live sessions keyed by the gateway's own backend pid. A client
cancels with the pid and secret the gateway gave it; the listener checks the secret in constant
time and asks that session to cancel its upstream query with the upstream's own key, which the
client never sees. A wrong secret cancels nothing, silently, as PostgreSQL does.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import ssl

import trio

from adapters.base import Gatekeeper
from adapters.postgres import upstream
from adapters.postgres.session import PostgresSession

log = logging.getLogger("sqlward.postgres")


class PostgresListener:
    def __init__(
        self,
        gatekeeper: Gatekeeper,
        *,
        name: str,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        tls_required: bool = False,
        max_message_size: int = 64 << 20,
        default_target: str = "",
    ) -> None:
        self.gatekeeper = gatekeeper
        self.name = name
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.tls_required = tls_required
        self.max_message_size = max_message_size
        self.default_target = default_target
        # Identity options (set by the gateway from the listener config).
        self.allow_plaintext_tokens = False  # tokens on plain TCP from loopback clients
        self.cert_identity = "none"  # none | subject-cn | san-uri (mutual TLS)
        self._sessions: dict[int, PostgresSession] = {}

    async def serve(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        if self.port == 0:
            self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            addr = f"{peer[0]}:{peer[1]}"
        except OSError:
            addr = "unknown"
        session = PostgresSession(self, stream, addr)
        await session.run()

    # -- cancel routing ------------------------------------------------------------------------

    def register(self, session: PostgresSession) -> tuple[int, bytes]:
        while True:
            pid = secrets.randbelow(2**31 - 2) + 1
            if pid not in self._sessions:
                break
        self._sessions[pid] = session
        return pid, secrets.token_bytes(4)

    def unregister(self, pid: int, session: PostgresSession) -> None:
        if self._sessions.get(pid) is session:
            del self._sessions[pid]

    async def cancel(self, pid: int, secret: bytes) -> None:
        session = self._sessions.get(pid)
        if session is None or not hmac.compare_digest(session.secret, secret):
            log.info("cancel request for unknown backend %d ignored", pid)
            return
        up = session.up
        target = session.target
        if up is None or target is None:
            return
        await upstream.send_cancel(target, up.pid, up.secret)
