"""What every protocol's session driver shares: the services it was given, its
`SessionContext` (identity, target, audit scope, request counter), asking the pipeline,
token expiry, the certificate identity of mutual TLS, refusal wording, and a clean close of
the client stream.

`GovernedSession` is a base class. A protocol session calls `super().__init__` with what its
listener handed it and its audit connection id, then uses these helpers at the protocol's own
points. It never builds a decision (that is `StatementPipeline.judge`) and never spells out an
audit envelope (that is its `AuditScope`, `self.audit`).
"""

from __future__ import annotations

import logging
import ssl
import time

import msgspec
import trio

from sqlward.adapters.base import (
    Gatekeeper,
    ListenerSettings,
    SessionContext,
    SessionServices,
    StatementPipeline,
    StatementRequest,
    Target,
    Verdict,
)
from sqlward.adapters.preauth import NO_SLOT, PreAuthSlot
from sqlward.audit.events import Who
from sqlward.masking.context import MaskContext
from sqlward.policy.model import Decision, Identity

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
    def __init__(
        self, services: SessionServices, settings: ListenerSettings, client: trio.abc.Stream,
        client_addr: str, connection_id: str,
    ) -> None:
        self.gk: Gatekeeper = services.gatekeeper
        self.pipeline: StatementPipeline = services.pipeline
        self.settings = settings
        self.client = client
        self.client_addr = client_addr
        self.audit = services.recorder.scope(connection_id)
        self.drain = services.drain  # the gateway's shutdown (adapters/drain.py)
        self.ctx = SessionContext(self.audit)
        # This connection's place among those awaiting authentication (adapters/preauth.py):
        # set by the listener, released once the client is authenticated (`_authenticated`).
        self.preauth: PreAuthSlot = NO_SLOT
        # Masking state shared by both protocols: whether a [[masks]] rule applies to this
        # identity on this target, and the MaskContext of the request decided last.
        self._masked = False
        self._last_mask: MaskContext | None = None

    # -- who and where (kept in the SessionContext the pipeline judges with) ------------------

    @property
    def identity(self) -> Identity | None:
        return self.ctx.identity

    @property
    def who(self) -> Who | None:
        return self.ctx.who

    @property
    def target(self) -> Target | None:
        return self.ctx.target

    @target.setter
    def target(self, target: Target | None) -> None:
        self.ctx.target = target

    def _update_identity(self, identity: Identity) -> None:
        self.ctx.set_identity(identity)

    def _authenticated(self) -> None:
        """The client proved who it is: it no longer counts against the pre-authentication caps."""
        self.preauth.release()

    # -- asking the pipeline -------------------------------------------------------------------

    async def _judge(self, request: StatementRequest, *, durable: bool = True) -> Verdict:
        """The pipeline's verdict on one request; raises TokenExpired when the session must end.
        Keeps the masking state of the last decided statement (`_masked`, `_last_mask`)."""
        verdict = await self.pipeline.judge(self.ctx, request, durable=durable)
        if verdict.close_session:
            raise TokenExpired()
        self._masked = verdict.masked  # on every verdict, whatever step ended it
        if request.kind == "statement":
            self._last_mask = verdict.mask
        return verdict

    async def _record_quietly(self, event: msgspec.Struct) -> None:
        """Audit events about the connection itself (opened, refused, closed): a failure is
        logged, the session is not failed for it."""
        self.audit.add(event)
        await self.audit.flush_quietly()

    # -- token expiry and certificates -------------------------------------------------------

    def _closes_at_expiry(self) -> float | None:
        """When the session must be closed because its token expires (`on_token_expiry =
        "close"`), as a trio clock deadline; None otherwise. The token's issuer's login leeway
        counts (`token_leeway`, as in the pipeline's check): a token accepted inside the leeway
        is not cut off at once."""
        identity = self.ctx.identity
        if identity is None or identity.expires_at is None:
            return None
        if self.gk.identity_settings().on_token_expiry != "close":
            return None
        leeway = self.gk.token_leeway(identity)
        return trio.current_time() + max(0.0, identity.expires_at + leeway - time.time())

    def _certificate_identity(self) -> Identity | None:
        """The identity named by a verified client certificate (mutual TLS), if any."""
        if not isinstance(self.client, trio.SSLStream) or self.settings.cert_identity == "none":
            return None
        cert = self.client.getpeercert()
        if not cert:
            return None
        return self.gk.identity_for_certificate(cert, self.settings.cert_identity)

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
