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

from sqlward.adapters import identity as ident
from sqlward.adapters.base import AuditUnavailable, Gatekeeper, Target
from sqlward.audit.events import Who
from sqlward.masking.context import MaskContext
from sqlward.policy.model import Analysis, Decision, Identity

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

    target: Target | None = None
    # Masking state shared by both protocols: whether a [[masks]] rule applies to this identity
    # on this target, and the MaskContext of the request decided last.
    _masked: bool = False
    _last_mask: MaskContext | None = None

    async def _finish_decision(self, decision: Decision, analysis: Analysis, sql: str, schema: str) -> Decision:
        """The steps after the (cached) policy decision that need I/O, shared by both protocols:
        a pending decision gets its row estimates (EXPLAIN on a side connection) and is decided
        again; an allowed request of an identity under masking gets its MaskContext
        (`_last_mask`), or a refusal when masking cannot protect its result."""
        assert self.target is not None and self.identity is not None
        info = self.target.info
        if decision.pending:
            estimates = await self.gk.estimate_rows(self.target, sql, analysis, decision.pending, schema=schema)
            decision = self.gk.decide(analysis, self.identity, info, schema=schema, sql=sql, estimates=estimates)
        self._last_mask = None
        self._masked = self.gk.masks_apply(self.identity, info)
        if decision.action != "allow" or not self._masked:
            return decision
        try:
            ctx = await self.gk.mask_context(self.target, sql, analysis, self.identity, schema=schema)
        except Exception as exc:  # the catalogue cannot be read: fail closed
            log.warning("masking context unavailable for %s: %s", info.name, exc)
            return Decision(
                action="deny", rule_id="masking-unavailable",
                message="masking applies to you on this target and its schema catalogue could not be read; "
                "statement refused",
            )
        if ctx is not None and ctx.refusal:
            return Decision(action="deny", rule_id=ctx.request.rule_id, message=ctx.refusal)
        self._last_mask = ctx
        return decision

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
