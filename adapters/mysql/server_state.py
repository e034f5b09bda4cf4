"""What every session of one MySQL listener shares, as one typed object (no I/O).

How it works: the listener creates one `MysqlServerState` before it accepts clients and hands it
to each session it starts; sessions never read the listener itself. It holds

- the greeting facts the gateway shows its clients (`Greeting`: server version, capability
  flags, default collation; `handshake` builds a session's greeting from them). They start conservative (no SESSION_TRACK, the gateway's own
  version) and the listener replaces them with what one upstream's greeting says
  (`learn_greeting`), so that what a client negotiates with the gateway also holds upstream
  and packets pass unchanged;
- the RSA key pair of caching_sha2_password's full path on plain connections;
- the names that have logged in with caching_sha2_password since the gateway started, which
  decide between the fast and the full path as MySQL's own cache does
  (`[[listeners]] caching_sha2_full_auth`: never / first-login / always).

Spec: https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_handshake_v10.html
and https://dev.mysql.com/doc/dev/mysql-server/latest/page_caching_sha2_authentication_exchanges.html
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlward.adapters.base import Sha2FullAuth
from sqlward.adapters.mysql import auth, messages
from sqlward.adapters.mysql.constants import Capability, Charset, ServerStatus

__all__ = ["CONSERVATIVE", "DEFAULT_VERSION", "SUPPORTED", "Greeting", "MysqlServerState"]

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


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server facts of the gateway's own greeting."""

    capabilities: int = int(CONSERVATIVE)
    server_version: str = DEFAULT_VERSION
    charset: int = int(Charset.UTF8MB4_GENERAL_CI)

    @classmethod
    def of_upstream(cls, capabilities: int, server_version: str, charset: int) -> Greeting:
        """What to offer clients given an upstream greeting: the capabilities both sides share
        (LONG_PASSWORD always), its version, its collation (ours when it names none)."""
        return cls(
            capabilities=int(SUPPORTED & capabilities) | Capability.LONG_PASSWORD,
            server_version=server_version,
            charset=charset or int(Charset.UTF8MB4_GENERAL_CI),
        )


class MysqlServerState:
    """One per listener, shared by its sessions (see the module doc)."""

    __slots__ = ("greeting", "rsa_private_key", "rsa_public_key", "_sha2_logins")

    def __init__(self, *, rsa_keys: tuple[bytes, bytes] | None = None) -> None:
        self.greeting = Greeting()
        self.rsa_private_key, self.rsa_public_key = rsa_keys if rsa_keys is not None else auth.generate_rsa_keypair()
        self._sha2_logins: set[str] = set()

    def learn_greeting(self, capabilities: int, server_version: str, charset: int) -> None:
        """Offer clients what the probed upstream offers (see `Greeting.of_upstream`)."""
        self.greeting = Greeting.of_upstream(capabilities, server_version, charset)

    def handshake(self, connection_id: int, nonce: bytes, *, tls: bool) -> messages.HandshakeV10:
        """The greeting of a new session: its gateway connection id and nonce, the greeting facts,
        SSL offered when the listener has a certificate, caching_sha2_password as the default."""
        greeting = self.greeting
        return messages.HandshakeV10(
            server_version=greeting.server_version, connection_id=connection_id, auth_plugin_data=nonce,
            capabilities=greeting.capabilities | (Capability.SSL if tls else 0), character_set=greeting.charset,
            status_flags=int(ServerStatus.AUTOCOMMIT), auth_plugin_name=auth.CACHING_SHA2_PASSWORD,
        )

    def sha2_fast_path(self, user: str, mode: Sha2FullAuth) -> bool:
        """May `user` take caching_sha2_password's fast path (a scramble, no cleartext)?"""
        return mode == "never" or (mode == "first-login" and user in self._sha2_logins)

    def sha2_logged_in(self, user: str) -> None:
        """`user` proved its secret with caching_sha2_password: later logins may be fast."""
        self._sha2_logins.add(user)
