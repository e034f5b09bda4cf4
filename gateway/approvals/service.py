"""The approval service: every transition of an approval request, and its audit event.

One per gateway process, over an `ApprovalStore` (shared by replicas when it is PostgreSQL).
The pipeline's approval step (`gateway.approvals.gate`) and the admin API call it:

- `create`: a new pending request; `approval.requested` is on disk (the session's scope) before
  the client is told, and the notifier (webhooks) hears of it off the statement's path.
- `wait`: until the request is decided or a deadline passes. A decision taken in this process
  wakes the waiter at once; one taken through another replica is seen by polling the store
  (`poll` seconds).
- `decide`: an approver's verdict (approve / reject, with a comment), checked against the
  request's requirements (`policy.approval`): nobody approves their own request, an agent's
  principal only where the rule says so, the approver must be admitted by every requirement.
  The request becomes approved once `policy.approval.outcome` says so; one rejection rejects it.
  The store update is a compare-and-set; `approval.decided` follows in the gateway's scope, and
  a decision that cannot be recorded is undone (fail closed).
- `claim` / `claim_binding`: the single-use release of an approved request (approved ->
  executed, compare-and-set): whoever wins runs the statement, once.
- `withdraw`: pending -> withdrawn (a client's cancel, the session gone, a hold given up).
- `finished`: executed -> failed when the released statement's run failed.
- `sweep` (every `sweep` seconds in `run`): open requests past their expiry become expired.

Errors: `ApprovalError` (with an HTTP status) for what an approver did wrong; `StoreError` from
the store is left to the caller (the pipeline refuses the statement, the API answers 503).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

import msgspec
import trio

from sqlward.audit import events
from sqlward.audit.recorder import AuditScope, AuditUnavailable
from sqlward.gateway.approvals.model import OPEN, ApprovalRequest, Decision
from sqlward.gateway.approvals.store import ApprovalStore, requester_key
from sqlward.policy.approval import ApprovalRule, Approver, approver_problem, outcome
from sqlward.policy.names import canonical_name

__all__ = ["ApprovalError", "ApprovalService", "Notifier", "new_id"]

log = logging.getLogger("sqlward.approvals")
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def new_id() -> str:
    """"ap-" and 12 base32 characters (60 random bits)."""
    n = secrets.randbits(60)
    return "ap-" + "".join(_ALPHABET[(n >> (5 * i)) & 31] for i in range(12))


class ApprovalError(Exception):
    """A refused API action; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Notifier(Protocol):
    def notify(self, kind: str, request: ApprovalRequest) -> None:
        """Queue a notification (never blocks, never raises)."""


def _approver_event(a: Approver) -> events.Approver:
    return events.Approver(subject=a.subject, kind=a.kind, groups=a.groups, verified_by=a.verified_by, issuer=a.issuer)


class ApprovalService:
    def __init__(
        self, store: ApprovalStore, *, scope: AuditScope, notifier: Notifier | None = None,
        link: Callable[[str], str] = lambda approval_id: approval_id, clock: Callable[[], float] = time.time,
        poll: float = 0.5, sweep: float = 5.0, gateway: str = "", max_pending: int = 20,
        retention: float = 30 * 86400.0,
    ) -> None:
        # Pending requests one requester may have at once (a flood of retry-mode requests
        # would bury everyone else's), and seconds decided requests are kept (0: for ever).
        self.max_pending = max_pending
        self._retention = retention
        self.store = store
        self.gateway = gateway  # this replica's name (ApprovalRequest.gateway)
        self._scope = scope  # the gateway's own audit scope (API decisions, expiries)
        self._notifier = notifier
        self.link = link
        self._clock = clock
        self._poll = poll
        self._sweep = sweep
        self._events: dict[str, trio.Event] = {}

    def _notify(self, kind: str, request: ApprovalRequest) -> None:
        if self._notifier is not None:
            try:
                self._notifier.notify(kind, request)
            except Exception:  # notifications never touch a statement's fate
                log.exception("approval notification failed")

    def _wake(self, approval_id: str) -> None:
        event = self._events.pop(approval_id, None)
        if event is not None:
            event.set()

    # -- reads -------------------------------------------------------------------------------

    async def get(self, approval_id: str) -> ApprovalRequest | None:
        return await self.store.get(approval_id)

    async def list(
        self, *, statuses: Collection[str] | None = None, limit: int = 100, requester: str | None = None,
        offset: int = 0,
    ) -> list[ApprovalRequest]:
        return await self.store.list(statuses=statuses, limit=limit, requester=requester, offset=offset)

    async def pending_count(self, subject: str) -> int:
        """How many requests of this requester wait for a decision (`max_pending_per_identity`)."""
        return await self.store.count_pending(requester_key(subject))

    async def pending_for(self, binding: str) -> ApprovalRequest | None:
        """An open (pending) request with this binding, if one is still live."""
        now = self._clock()
        for r in await self.store.by_binding(binding, ("pending",)):
            if r.expires > now:
                return r
        return None

    # -- the session's side --------------------------------------------------------------------

    async def create(self, request: ApprovalRequest, scope: AuditScope) -> ApprovalRequest:
        """Store a new pending request and record `approval.requested` in the session's scope
        (AuditUnavailable: the request is withdrawn and the caller refuses)."""
        await self.store.insert(request)
        try:
            await scope.record(events.ApprovalRequested(
                approval_id=request.id, request_id=request.request_id, binding=request.binding, mode=request.mode,
                rules=request.rules, expires=request.expires,
                approvers=tuple(dict.fromkeys(a for r in request.requirements for a in (*r.approvers, *(f"group:{g}" for g in r.all_groups)))),
            ))
        except AuditUnavailable:
            await self._move(request.id, "withdrawn", error="the audit trail could not be written")
            raise
        self._notify("approval.requested", request)
        return request

    async def wait(self, approval_id: str, until: float) -> ApprovalRequest | None:
        """The request once it is no longer pending, or as it is when `until` (clock time) comes."""
        try:
            while True:
                current = await self.store.get(approval_id)
                if current is None or current.status != "pending":
                    return current
                left = until - self._clock()
                if left <= 0:
                    return current
                event = self._events.get(approval_id)
                if event is None:
                    event = self._events[approval_id] = trio.Event()
                with trio.move_on_after(min(self._poll, left)):
                    await event.wait()
        finally:
            # The last waiter drops the event: a request decided through another replica (seen by
            # polling) or still pending at the deadline is never woken here, and its event would
            # stay in `_events` for the life of the process.
            event = self._events.get(approval_id)
            if event is not None and event.statistics().tasks_waiting == 0:
                del self._events[approval_id]

    async def claim(self, approval_id: str, scope: AuditScope, request_id: int) -> ApprovalRequest | None:
        """approved -> executed for the session about to run it; None when it is not approved
        (any more) or another claimed it first."""
        while True:
            current = await self.store.get(approval_id)
            if current is None or current.status != "approved" or current.expires <= self._clock():
                return None
            done = msgspec.structs.replace(current, status="executed", executed=self._clock(), version=current.version + 1)
            if await self.store.update(done, expected_version=current.version):
                break
        try:
            await scope.record(events.ApprovalExecuted(approval_id=approval_id, request_id=request_id))
        except AuditUnavailable:
            await self._move(approval_id, "failed", error="the audit trail could not be written; not run", frm=("executed",))
            raise
        self._notify("approval.executed", done)
        return done

    async def claim_binding(
        self, binding: str, scope: AuditScope, request_id: int, requirements: Sequence[ApprovalRule] | None = None,
    ) -> ApprovalRequest | None:
        """Retry mode: claim the oldest approved, unexpired request with this binding (whose
        approvals also meet `requirements`, the policy's of now: an approval given under a
        laxer policy does not release the statement after a reload)."""
        now = self._clock()
        for r in await self.store.by_binding(binding, ("approved",)):
            if requirements is not None and outcome(
                requirements, r.requester.subject, r.requester.actor, [d.approver for d in r.decisions if d.verdict == "approve"],
            ) != "approved":
                continue
            if r.expires > now and r.mode == "retry":  # a held request is its own session's
                done = await self.claim(r.id, scope, request_id)
                if done is not None:
                    return done
        return None

    async def withdraw(self, approval_id: str, reason: str, scope: AuditScope | None = None) -> ApprovalRequest | None:
        """pending -> withdrawn (or expired, when its time is up); None when it was decided."""
        now = self._clock()
        current = await self.store.get(approval_id)
        status = "expired" if current is not None and current.expires <= now else "withdrawn"
        moved = await self._move(approval_id, status, frm=("pending",))
        if moved is not None:
            event: msgspec.Struct = (
                events.ApprovalExpired(approval_id=approval_id, was="pending") if status == "expired"
                else events.ApprovalWithdrawn(approval_id=approval_id, reason=reason)
            )
            target = scope if scope is not None else self._scope
            target.add(event)
            await target.flush_quietly()
            self._notify(f"approval.{status}", moved)
        return moved

    async def finished(self, approval_id: str, request_id: int, error: str | None, scope: AuditScope) -> None:
        """The released statement's run ended; a failure moves executed -> failed."""
        if error is None:
            return
        moved = await self._move(approval_id, "failed", error=error, frm=("executed",))
        if moved is not None:
            scope.add(events.ApprovalExecuted(approval_id=approval_id, request_id=request_id, status="failed", error=error))
            await scope.flush_quietly()
            self._notify("approval.failed", moved)

    # -- the approver's side -----------------------------------------------------------------------

    async def decide(self, approval_id: str, approver: Approver, verdict: str, comment: str = "") -> ApprovalRequest:
        if verdict not in ("approve", "reject"):
            raise ApprovalError(400, f"unknown verdict {verdict!r} (expected approve or reject)")
        while True:
            current = await self.store.get(approval_id)
            if current is None:
                raise ApprovalError(404, f"no approval request {approval_id}")
            now = self._clock()
            if current.status != "pending":
                raise ApprovalError(409, f"approval request {approval_id} is {current.status}, not pending")
            if current.expires <= now:
                await self.sweep()
                raise ApprovalError(409, f"approval request {approval_id} has expired")
            why = approver_problem(current.requirements, current.requester.subject, current.requester.actor, approver)
            if why is not None:
                raise ApprovalError(403, why)
            key = (approver.kind, canonical_name(approver.subject))
            if any((d.approver.kind, canonical_name(d.approver.subject)) == key for d in current.decisions):
                raise ApprovalError(409, f"{approver.subject} has already decided approval request {approval_id}")
            decision = Decision(approver=approver, verdict=verdict, comment=comment[:2000], time=now)  # type: ignore[arg-type]
            decisions = (*current.decisions, decision)
            if verdict == "reject":
                status = "rejected"
            else:
                status = outcome(current.requirements, current.requester.subject, current.requester.actor,
                                 [d.approver for d in decisions if d.verdict == "approve"])
            new = msgspec.structs.replace(
                current, status=status, decisions=decisions, decided=now if status != "pending" else None,
                version=current.version + 1,
            )
            if await self.store.update(new, expected_version=current.version):
                break
        try:
            await self._scope.record(events.ApprovalDecided(
                approval_id=approval_id, approver=_approver_event(approver), verdict=verdict, comment=comment[:2000],
                status=status,
            ))
        except AuditUnavailable:
            # A decision that cannot be recorded does not stand.
            undo = msgspec.structs.replace(current, version=new.version + 1)
            if not await self.store.update(undo, expected_version=new.version):
                # Another writer moved the request first (a replica claimed it): the decision
                # stands without its record. Say so rather than claim it was not taken.
                log.error("approval %s: the decision of %s could not be audited nor undone (the request moved on)",
                          approval_id, approver.subject)
                raise ApprovalError(503, "the audit trail cannot be written, and the decision could not be undone") from None
            raise ApprovalError(503, "the audit trail cannot be written; the decision was not taken") from None
        self._wake(approval_id)
        self._notify("approval.decided", new)
        return new

    # -- expiry ------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Expire open requests past their expiry; returns how many moved."""
        moved = 0
        for r in await self.store.due(self._clock()):
            before = await self.store.get(r.id)
            done = await self._move(r.id, "expired", frm=tuple(OPEN))
            if done is not None:
                moved += 1
                was = before.status if before is not None and before.status in OPEN else r.status
                self._scope.add(events.ApprovalExpired(approval_id=r.id, was=was))
                self._wake(r.id)
                self._notify("approval.expired", done)
        if moved:
            await self._scope.flush_quietly()
        if self._retention > 0:
            await self.store.purge(self._clock() - self._retention)
        return moved

    async def run(self) -> None:
        """The sweeper: runs until cancelled."""
        while True:
            await trio.sleep(self._sweep)
            try:
                await self.sweep()
            except Exception:
                log.exception("approval expiry sweep failed")

    async def _move(
        self, approval_id: str, status: str, *, error: str | None = None, frm: tuple[str, ...] = ("pending",),
    ) -> ApprovalRequest | None:
        """Compare-and-set the status from one of `frm`; None when the request is not there."""
        while True:
            current = await self.store.get(approval_id)
            if current is None or current.status not in frm:
                return None
            new = msgspec.structs.replace(
                current, status=status, error=error if error is not None else current.error,  # type: ignore[arg-type]
                decided=current.decided or (self._clock() if status in ("expired", "withdrawn", "rejected") else None),
                version=current.version + 1,
            )
            if await self.store.update(new, expected_version=current.version):
                self._wake(approval_id)
                return new
