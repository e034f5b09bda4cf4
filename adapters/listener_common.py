"""What every protocol's listener shares: the accept loop and the peer address.

A protocol listener subclasses `ListenerBase`, implements `new_session(stream, client_addr)`
(returning a session with an async `run()`), and may override `prepare()` to do work before the
socket opens (the MySQL listener reads an upstream greeting). It is built by the gateway with
the `SessionServices` and its typed `ListenerSettings`; it owns the `SessionRegistry` of its
live sessions and hands services, settings and registry to each session it creates, so a
session never reads its listener's attributes (and the session module never imports the
listener's).
"""

from __future__ import annotations

from typing import Protocol

import trio

from sqlward.adapters.base import ListenerSettings, SessionServices


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

    async def prepare(self) -> None:
        """Work to do before the socket opens."""

    def new_session(self, stream: trio.SocketStream, client_addr: str) -> _Session:
        raise NotImplementedError

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
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
        await self.new_session(stream, addr).run()
