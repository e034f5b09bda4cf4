"""A MySQL / MariaDB listener: accepts connections and runs a `MysqlSession` each.

At start it reads the greeting of one upstream (the default target, or the first MySQL target)
to learn the server version and capabilities it will show its own clients, so that what a client
negotiates with the gateway also holds on the upstream and packets pass unchanged. If that
upstream is down, a conservative set is offered (no SESSION_TRACK) and the version is the
gateway's own.

It also owns the gateway connection ids (what clients see in the greeting and use with KILL),
the RSA key pair for caching_sha2_password full authentication on plain connections, and the
"has logged in since start" cache that decides between the fast and the full path, as MySQL does.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import trio

from sqlward.adapters.base import Gatekeeper
from sqlward.adapters.listener_common import ListenerBase
from sqlward.adapters.mysql import auth, upstream
from sqlward.adapters.mysql.constants import Capability
from sqlward.adapters.mysql.session import MysqlSession

log = logging.getLogger("sqlward.mysql")

# What the gateway itself can relay; the upstream's greeting narrows it down.
SUPPORTED = (
    Capability.LONG_PASSWORD | Capability.FOUND_ROWS | Capability.LONG_FLAG
    | Capability.CONNECT_WITH_DB | Capability.LOCAL_FILES | Capability.IGNORE_SPACE
    | Capability.PROTOCOL_41 | Capability.INTERACTIVE | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION | Capability.MULTI_STATEMENTS | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS | Capability.PLUGIN_AUTH | Capability.CONNECT_ATTRS
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA | Capability.SESSION_TRACK
    | Capability.DEPRECATE_EOF
)
# Flags the gateway offers even when the upstream is unknown.
CONSERVATIVE = SUPPORTED & ~Capability.SESSION_TRACK
DEFAULT_VERSION = "8.0.36-sqlward"


class MysqlListener(ListenerBase):
    session_class = MysqlSession

    def __init__(
        self, gatekeeper: Gatekeeper, *, probe_target: str = "", sha2_full_auth: str = "never", **settings: Any
    ) -> None:
        super().__init__(gatekeeper, **settings)
        self.probe_target = probe_target or self.default_target
        self.capabilities = int(CONSERVATIVE)
        self.server_version = DEFAULT_VERSION
        self.charset = 45  # utf8mb4_general_ci
        self.rsa_private_key, self.rsa_public_key = auth.generate_rsa_keypair()
        self.sha2_full_auth = sha2_full_auth
        self.sha2_cache: set[str] = set()
        self._sessions: dict[int, MysqlSession] = {}
        self._next_id = secrets.randbelow(1 << 20) + 1000

    async def prepare(self) -> None:
        """Learn the upstream's version and capabilities before accepting clients."""
        target = self.gatekeeper.resolve_target(self.probe_target, "mysql") if self.probe_target else None
        if target is None:
            return
        try:
            greeting = await upstream.probe(target)
        except (upstream.UpstreamError, trio.TooSlowError, OSError) as exc:
            log.warning("listener %s: could not read the greeting of %r (%s); offering defaults",
                        self.name, target.info.name, exc)
            return
        self.capabilities = int(SUPPORTED & greeting.capabilities) | Capability.LONG_PASSWORD
        self.server_version = greeting.server_version
        if greeting.character_set:
            self.charset = greeting.character_set

    # -- connection ids -------------------------------------------------------------------

    def allocate_id(self, session: MysqlSession) -> int:
        while True:
            self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
            if self._next_id not in self._sessions:
                break
        self._sessions[self._next_id] = session
        return self._next_id

    def release_id(self, connection_id: int, session: MysqlSession) -> None:
        if self._sessions.get(connection_id) is session:
            del self._sessions[connection_id]

    def session(self, connection_id: int) -> MysqlSession | None:
        return self._sessions.get(connection_id)
