"""What every protocol's listener shares: its settings, the accept loop, and the peer address.

A protocol listener subclasses `ListenerBase`, sets `session_class` to its session driver (called
as `session_class(listener, stream, "host:port")` and then `.run()`), and may override
`prepare()` to do work before the socket opens (the MySQL listener reads an upstream greeting).
"""

from __future__ import annotations

import ssl
from typing import Any, ClassVar

import trio

from sqlward.adapters.base import Gatekeeper


class ListenerBase:
    session_class: ClassVar[Any]

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

    async def prepare(self) -> None:
        """Work to do before the socket opens."""

    async def serve(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        await self.prepare()
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
        await self.session_class(self, stream, addr).run()
