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
from typing import Any


from sqlward.adapters.base import Gatekeeper
from sqlward.adapters.listener_common import ListenerBase
from sqlward.adapters.postgres import upstream
from sqlward.adapters.postgres.session import PostgresSession

log = logging.getLogger("sqlward.postgres")


class PostgresListener(ListenerBase):
    session_class = PostgresSession

    def __init__(self, gatekeeper: Gatekeeper, **settings: Any) -> None:
        super().__init__(gatekeeper, **settings)
        self._sessions: dict[int, PostgresSession] = {}

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
