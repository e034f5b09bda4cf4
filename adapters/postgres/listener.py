"""A PostgreSQL listener: accepts connections and runs a `PostgresSession` each.

The listener owns the `SessionRegistry` of its live sessions, keyed by the backend pid the
gateway gives each client (random, never the upstream's). It hands the registry to every session
it creates: a CancelRequest arrives on a connection of its own, and that session looks the pid up
there (`session.cancel_backend`: the secret is checked in constant time, then the upstream query
is cancelled with the upstream's own key, which the client never sees). The session module never
imports this one.
"""

from __future__ import annotations

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

    def refusal(self, message: str) -> bytes:
        # FATAL 53300 (too_many_connections), as the server's own "too many clients"; libpq
        # shows it whether it sent a StartupMessage or an SSLRequest first.
        return errors.error_response("53300", message, severity="FATAL")
