"""A PostgreSQL listener: accepts connections and runs a `PostgresSession` each.

The listener owns the `SessionRegistry` of its live sessions, keyed by the backend pid the
gateway gives each client (random, never the upstream's). It hands the registry to every session
it creates: a CancelRequest arrives on a connection of its own, and that session looks the pid up
there (`session.cancel_backend`: the secret is checked in constant time, then the upstream query
is cancelled with the upstream's own key, which the client never sees). The session module never
imports this one.
"""

from __future__ import annotations

import struct

import trio

from sqlward.adapters.base import ListenerSettings, SessionRegistry, SessionServices
from sqlward.adapters.listener_common import ListenerBase
from sqlward.adapters.postgres import errors
from sqlward.adapters.postgres.session import PostgresSession


class PostgresListener(ListenerBase):
    def __init__(self, services: SessionServices, settings: ListenerSettings) -> None:
        super().__init__(services, settings)
        self.sessions: SessionRegistry[PostgresSession] = SessionRegistry(sequential=False)

    def new_session(self, stream: trio.SocketStream, client_addr: str) -> PostgresSession:
        return PostgresSession(self.services, self.settings, self.sessions, stream, client_addr)

    async def refuse(self, stream: trio.SocketStream, message: str) -> None:
        # FATAL 53300 (too_many_connections), as the server's own "too many clients". It is sent
        # in answer to the StartupMessage: libpq does not show an error sent in answer to an
        # SSLRequest / GSSENCRequest, so those get "N" first. Nothing is buffered beyond 8 bytes
        # per read (a startup packet is read whole only up to
        # the server's own 10,000-byte limit), and the caller bounds the whole exchange in time.
        for _ in range(3):
            head = await _read_exactly(stream, 8)
            if head is None:
                return
            length, code = struct.unpack("!II", head)
            if length == 8 and code in (_SSL_REQUEST, _GSSENC_REQUEST):
                await stream.send_all(b"N")
                continue
            if 8 < length <= _STARTUP_MAX:  # read the rest, so closing sends no reset over the answer
                await _read_exactly(stream, length - 8)
            break
        await stream.send_all(errors.error_response("53300", message, severity="FATAL"))


_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_STARTUP_MAX = 10_000  # the server's own limit on a startup packet


async def _read_exactly(stream: trio.SocketStream, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
