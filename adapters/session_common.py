"""What every protocol's session driver shares: identity bookkeeping, token expiry, the
certificate identity of mutual TLS, refusal wording, audit writes that must not fail the
session, and a clean close of the client stream.

`GovernedSession` is a base class; a protocol session sets `gk`, `listener`, `client`,
`connection_id` (its audit id) and calls these helpers at the protocol's own points.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

import trio

from adapters import identity as ident
from adapters.base import AuditUnavailable, Gatekeeper
from audit.events import Who
from policy.model import Decision, Identity

log = logging.getLogger("sqlward")


class SessionEnd(Exception):
    """Ends the session (the client is gone, or a FATAL/ERR has been sent)."""


class TokenExpired(Exception):
    """The session's token expired and the configuration says to close the session."""


def refusal_message(decision: Decision) -> str:
    """The sentence a client gets for a refusal; it always names the rule."""
    message = decision.message or f'statement refused by rule "{decision.rule_id}"'
    if decision.rule_id and decision.rule_id not in message:
        message = f'{message} (rule "{decision.rule_id}")'
    return message


class GovernedSession:
    gk: Gatekeeper
    listener: Any
    client: trio.abc.Stream
    identity: Identity | None = None
    who: Who | None = None

    def _record_quietly(self, event: object) -> None:
        """Audit events about the connection itself (opened, refused, closed): a failure is
        logged, the session is not failed for it (statement events use `gk.record` directly)."""
        try:
            self.gk.record(event)  # type: ignore[arg-type]
        except AuditUnavailable:
            log.error("audit unavailable: %s event lost", type(event).__name__)

    def _update_identity(self, identity: Identity) -> None:
        self.identity = identity
        self.who = Who(
            subject=identity.subject, groups=identity.groups, actor=identity.actor,
            verified_by=identity.verified_by, reason=identity.reason,
        )

    def _expiry_refusal(self) -> Decision | None:
        """A refusal once the session's token has expired (TokenExpired to close instead)."""
        assert self.identity is not None
        if self.identity.expires_at is None or not ident.expired(self.identity):
            return None
        if self.gk.identity_settings().on_token_expiry == "close":
            raise TokenExpired()
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.identity.expires_at))
        return Decision(
            action="deny", rule_id="token-expired",
            message=f"the token of {self.identity.subject} expired at {when}; reconnect with a fresh token",
        )

    def _certificate_identity(self) -> Identity | None:
        """The identity named by a verified client certificate (mutual TLS), if any."""
        if not isinstance(self.client, trio.SSLStream) or self.listener.cert_identity == "none":
            return None
        cert = self.client.getpeercert()
        if not cert:
            return None
        return self.gk.identity_for_certificate(cert, self.listener.cert_identity)

    def _closes_at_expiry(self) -> float | None:
        """When the session must be closed because its token expires (`on_token_expiry =
        "close"`), as a trio clock deadline; None otherwise."""
        if self.identity is None or self.identity.expires_at is None:
            return None
        if self.gk.identity_settings().on_token_expiry != "close":
            return None
        return trio.current_time() + max(0.0, self.identity.expires_at - time.time())

    async def _close_client(self) -> None:
        """Close the client stream; TLS gets a close_notify (libpq reports its absence as an
        error, e.g. after a cancel over TLS), bounded so a dead peer cannot stall us."""
        if isinstance(self.client, trio.SSLStream):
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await self.client.aclose()
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                    pass
        await trio.aclose_forcefully(self.client)
