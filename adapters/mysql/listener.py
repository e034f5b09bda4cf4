"""A MySQL / MariaDB listener: accepts connections and runs a `MysqlSession` each.

At start it reads the greeting of one upstream (`ListenerSettings.probe_target`, else the
default target) to learn the server version and capabilities it will show its own clients, so
that what a client negotiates with the gateway also holds on the upstream and packets pass
unchanged. If that upstream is down, a conservative set is offered (no SESSION_TRACK) and the
version is the gateway's own.

It owns what its sessions share and hands it to each of them: the `SessionRegistry` of live
sessions by gateway connection id (what clients see in the greeting and name in KILL; sequential
ids, as MySQL's), and the `MysqlServerState` (greeting facts, the RSA key pair of
caching_sha2_password's full path, the "has logged in since start" cache). Sessions never read
the listener, and the session module does not import this one.
"""

from __future__ import annotations

import logging

import trio

from sqlward.adapters.base import ListenerSettings, SessionRegistry, SessionServices
from sqlward.adapters.listener_common import ListenerBase
from sqlward.adapters.mysql import upstream
from sqlward.adapters.mysql.constants import ER_CON_COUNT_ERROR
from sqlward.adapters.mysql.messages import ErrPacket, encode
from sqlward.adapters.mysql.packets import encode_packets
from sqlward.adapters.mysql.server_state import MysqlServerState
from sqlward.adapters.mysql.session import MysqlSession

log = logging.getLogger("sqlward.mysql")


class MysqlListener(ListenerBase):
    def __init__(
        self, services: SessionServices, settings: ListenerSettings, *, server: MysqlServerState | None = None,
    ) -> None:
        super().__init__(services, settings)
        self.registry: SessionRegistry[MysqlSession] = SessionRegistry(sequential=True)
        self.server = server if server is not None else MysqlServerState()

    async def prepare(self) -> None:
        """Learn the upstream's version and capabilities before accepting clients."""
        probe = self.settings.probe_target or self.settings.default_target
        target = self.services.gatekeeper.resolve_target(probe, "mysql") if probe else None
        if target is None:
            return
        try:
            greeting = await upstream.probe(target)
        except (upstream.UpstreamError, trio.TooSlowError, OSError) as exc:
            log.warning("listener %s: could not read the greeting of %r (%s); offering defaults",
                        self.name, target.info.name, exc)
            return
        self.server.learn_greeting(greeting.capabilities, greeting.server_version, greeting.character_set)

    def new_session(self, stream: trio.SocketStream, client_addr: str) -> MysqlSession:
        return MysqlSession(self.services, self.settings, self.registry, self.server, stream, client_addr)

    async def refuse(self, stream: trio.SocketStream, message: str) -> None:
        # An ERR packet in place of the greeting (sequence 0), as the server's own "Too many
        # connections" (1040); no SQLSTATE marker, since nothing is negotiated yet (clients
        # read one only under CLIENT_PROTOCOL_41). Clients report it as the connection's error.
        await stream.send_all(encode_packets(encode(ErrPacket(ER_CON_COUNT_ERROR, "", message), 0), 0)[0])
