"""The pipeline's approval step: what a `review` decision becomes in a live session.

`settle(service, ctx, request, decision, ...)` is called by `gateway.pipeline.Pipeline.judge`
for a request the policy sent to review (every rule or guardrail that asked for review put its
`ApprovalRule` on `Decision.approvals`; all of them must be met). It returns the decision that
stands and the approval request's id:

1. No approver configured for the rule: refused ("needs approval, and nobody may approve").
2. The requester's stated reason does not match a `reason_pattern`: refused at once, no request.
3. The binding hash (`binding.binding_hash`) of the exact text, parameters, identity and actors,
   target, upstream role and resolved names.
4. **retry** (`mode = "retry"`): an approved, unexpired request with this binding is claimed
   (single use) and the statement allowed; otherwise a pending one with this binding is named,
   or a new request is made; either way the statement is refused now with the request's id.
5. **hold** (default): a new request is made (its `approval.requested` is on disk first), the
   client is told at once (`ctx.notice`: a PostgreSQL NoticeResponse), and the session waits
   for the verdict, the hold timeout, the client's cancel (`ctx.withdraw_hold`) or the client's
   disconnect (`ctx.client_gone`), whichever comes first. Approved: the request is claimed
   (approved -> executed, compare-and-set: exactly once) and the statement allowed. Rejected,
   expired, timed out (the request is withdrawn), cancelled (withdrawn): refused with a clear
   sentence naming the request. The session's task being cancelled (the client went away, the
   gateway stops) withdraws the request on the way out.

Nothing else of the session moves while it is held: the adapter does not forward anything the
client sent after the held statement, and the held statement has not reached the upstream, so it
takes no lock (it holds only what the session's open transaction already held).

A store that cannot be read or written refuses the statement (`approvals-unavailable`); an
audit record that cannot be written refuses it too (`AuditUnavailable` reaches the pipeline).
"""

from __future__ import annotations

import json
import logging
import time
import msgspec
import trio

from sqlward.adapters.base import SessionContext, StatementRequest
from sqlward.gateway.approvals.binding import binding_hash
from sqlward.gateway.approvals.model import ApprovalRequest, Requester
from sqlward.gateway.approvals.service import ApprovalService, new_id
from sqlward.gateway.approvals.store import StoreError
from sqlward.policy import rule_ids
from sqlward.policy.approval import reason_problem
from sqlward.policy.model import Analysis, Decision

__all__ = ["precheck", "settle", "shown_parameters"]

log = logging.getLogger("sqlward.approvals")

# How long a session being torn down (the client gone, the gateway stopping) spends on
# withdrawing its held request; a store that does not answer by then leaves it to the sweeper,
# which expires it.
WITHDRAW_SECONDS = 5.0


def shown_parameters(
    values: tuple[bytes | None, ...] | None, formats: tuple[int, ...], dialect: str = "postgres",
) -> tuple[str | None, ...]:
    """Parameter values as an approver reads them: text as text, binary as \\x hex (PostgreSQL
    binary format); MySQL values come decoded by the adapter (their formats are the types)."""
    if not values:
        return ()
    shown: list[str | None] = []
    for i, v in enumerate(values):
        fmt = formats[i] if len(formats) > 1 and i < len(formats) else (formats[0] if formats else 0)
        if v is None:
            shown.append(None)
        elif dialect == "mysql":
            shown.append(v.decode("utf-8", "backslashreplace"))
        elif fmt == 0:
            shown.append(v.decode("utf-8", "replace"))
        else:
            shown.append("\\x" + v.hex())
    return tuple(shown)


def _deny(decision: Decision, message: str, rule_id: str | None = None) -> Decision:
    return Decision(
        action="deny", rule_id=rule_id or decision.rule_id, message=message,
        statement_index=decision.statement_index, facts=decision.facts,
    )


def _unavailable(exc: BaseException) -> Decision:
    log.error("approval store unavailable: %s", exc)
    return Decision(
        action="deny", rule_id=rule_ids.APPROVALS_UNAVAILABLE,
        message="this statement needs approval and the approval store cannot be reached; statement refused",
    )


def precheck(decision: Decision, reason: str) -> Decision | None:
    """The refusal of a reviewed request that no approval could release (no approver is
    configured, the stated reason does not match the pattern), else None."""
    rules = decision.approvals
    if not rules or any(not (r.approvers or r.all_groups or r.principal) for r in rules):
        return _deny(decision, f"{decision.message}; no approver is configured for it, so it cannot run")
    why = reason_problem(rules, reason)
    if why is not None:
        return _deny(decision, f"{decision.message}; {why}")
    return None


async def settle(
    service: ApprovalService, ctx: SessionContext, request: StatementRequest, rid: int, decision: Decision, *,
    analysis: Analysis | None, names: object, estimates: dict[int, int | None] | None,
) -> tuple[Decision, str | None]:
    """The decision that stands for a reviewed request, and its approval request's id."""
    identity, target = ctx.identity, ctx.target
    assert identity is not None and target is not None
    refusal = precheck(decision, identity.reason)
    if refusal is not None:
        return refusal, None
    rules = decision.approvals
    shown_names = json.dumps(names, sort_keys=True, default=str) if names else ""
    binding = binding_hash(
        sql=request.sql, parameters=request.parameters or (), formats=request.formats, types=request.types,
        subject=identity.subject, issuer=identity.issuer, verified_by=identity.verified_by, actor=identity.actor,
        target=target.info.name, protocol=target.info.protocol, environment=target.info.environment,
        upstream_role=target.user, names=shown_names,
    )
    mode = "retry" if any(r.mode == "retry" for r in rules) else "hold"
    now = time.time()
    lifetime = min(r.expires for r in rules)
    rows = [v for v in (estimates or {}).values() if v is not None]
    try:
        if mode == "retry":
            claimed = await service.claim_binding(binding, ctx.audit, rid, rules)
            if claimed is not None:
                return msgspec.structs.replace(
                    decision, action="allow", message=f"approved by {_approvers(claimed)} (request {claimed.id})",
                ), claimed.id
            waiting = await service.pending_for(binding)
            if waiting is not None:
                return _deny(decision, (
                    f"{decision.message}; approval request {waiting.id} for this statement is still pending "
                    f"(expires {_when(waiting.expires)}): {service.link(waiting.id)}"
                )), waiting.id
        if await service.pending_count(identity.subject) >= service.max_pending:
            return _deny(decision, (
                f"{decision.message}; {identity.subject} already has {service.max_pending} approval requests waiting "
                "for a decision, the most one identity may have: wait until they are decided or expire"
            )), None
        parameters = shown_parameters(request.parameters, request.formats, request.dialect)
        new = ApprovalRequest(
            id=new_id(), binding=binding, mode=mode,  # type: ignore[arg-type]
            requester=Requester(
                subject=identity.subject, groups=identity.groups, actor=identity.actor, issuer=identity.issuer,
                verified_by=identity.verified_by, is_agent=identity.is_agent,
            ),
            reason=identity.reason, gateway=service.gateway, connection_id=ctx.audit.connection_id, request_id=rid,
            target=target.info.name, environment=target.info.environment, protocol=target.info.protocol,
            upstream_role=target.user, names=shown_names, sql=request.sql, parameters=parameters,
            fingerprint=analysis.fingerprint if analysis is not None else "",
            operations=analysis.operations if analysis is not None else (),
            tables=analysis.tables if analysis is not None else (),
            rules=tuple(dict.fromkeys(decision.rule_id.split(","))) if decision.rule_id else (),
            facts=decision.facts, estimated_rows=max(rows) if rows else None, message=decision.message,
            requirements=rules, created=now, expires=now + lifetime,
        )
        await service.create(new, ctx.audit)
    except StoreError as exc:
        return _unavailable(exc), None
    link = service.link(new.id)
    if mode == "retry":
        return _deny(decision, (
            f"{decision.message}; approval request {new.id} was made: once it is approved, send the same statement "
            f"again before {_when(new.expires)} ({link})"
        )), new.id
    hold_for = min(min(r.hold_timeout for r in rules), lifetime)
    if identity.expires_at is not None:  # never released after the session's token expired
        hold_for = max(0.0, min(hold_for, identity.expires_at - now))
    return await _hold(service, ctx, new, decision, rid, now + hold_for, hold_for, link)


async def _hold(
    service: ApprovalService, ctx: SessionContext, new: ApprovalRequest, decision: Decision, rid: int,
    until: float, hold_for: float, link: str,
) -> tuple[Decision, str | None]:
    aid = new.id
    notice = (
        f"sqlward: {decision.message}. The statement waits as approval request {aid} "
        f"for up to {hold_for:.0f} s. An approver runs: sqlward approvals approve {aid} ({link}). "
        "Cancel the statement to withdraw the request."
    )
    outcome = "cancelled"
    gone = "the client disconnected"
    result: ApprovalRequest | None = None
    try:
        async with trio.open_nursery() as nursery:
            ctx.hold = nursery.cancel_scope

            async def waiter() -> None:
                nonlocal outcome, result
                result = await service.wait(aid, until)
                outcome = "decided"
                nursery.cancel_scope.cancel()

            async def watcher() -> None:
                nonlocal outcome, gone
                assert ctx.client_gone is not None
                gone = await ctx.client_gone()
                outcome = "gone"
                nursery.cancel_scope.cancel()

            async def tell() -> None:
                nonlocal outcome
                assert ctx.notice is not None
                try:
                    await ctx.notice(notice)
                except Exception:  # the client cannot be told: it is gone
                    outcome = "gone"
                    nursery.cancel_scope.cancel()

            nursery.start_soon(waiter)
            if ctx.client_gone is not None:
                nursery.start_soon(watcher)
            if ctx.notice is not None:  # inside the hold: its deadline, cancel and disconnect apply
                nursery.start_soon(tell)
    except StoreError as exc:
        with trio.CancelScope(shield=True), trio.move_on_after(WITHDRAW_SECONDS):
            await _withdraw(service, aid, "the approval store failed during the hold", ctx)
        return _unavailable(exc), aid
    except BaseException:  # the session is being torn down (client gone, gateway stopping)
        with trio.CancelScope(shield=True), trio.move_on_after(WITHDRAW_SECONDS):
            await _withdraw(service, aid, "the session closed", ctx)
        raise
    finally:
        ctx.hold = None
    if outcome == "cancelled":
        await _withdraw(service, aid, "cancelled by the client", ctx)
        return _deny(decision, f"approval request {aid} was withdrawn: the statement was cancelled; it did not run"), aid
    if outcome == "gone":
        await _withdraw(service, aid, gone, ctx)
        return _deny(decision, f"approval request {aid} was withdrawn: {gone}"), aid
    try:
        if result is None:
            return _deny(decision, f"approval request {aid} is gone from the approval store; statement refused"), aid
        expires_at = ctx.identity.expires_at if ctx.identity is not None else None
        if expires_at is not None and time.time() >= expires_at:
            await _withdraw(service, aid, "the session's token expired", ctx)
            return _deny(decision, (
                f"approval request {aid} was withdrawn: the session's token expired while the statement waited; "
                "reconnect with a fresh token"
            ), rule_ids.TOKEN_EXPIRED), aid
        if result.status == "approved":
            claimed = await service.claim(aid, ctx.audit, rid)
            if claimed is not None:
                return msgspec.structs.replace(
                    decision, action="allow", message=f"approved by {_approvers(claimed)} (request {aid})",
                ), aid
            result = await service.get(aid) or result
            return _deny(decision, f"approval request {aid} is {result.status}; statement not run"), aid
        if result.status == "rejected":
            last = result.decisions[-1] if result.decisions else None
            by = f" by {last.approver.subject}" + (f": {last.comment}" if last and last.comment else "") if last else ""
            return _deny(decision, f"approval request {aid} was rejected{by}; statement not run"), aid
        if result.status == "pending":
            await _withdraw(service, aid, f"no decision within {hold_for:.0f} s", ctx)
            late = await service.get(aid)
            if late is not None and late.status == "approved":  # approved as the hold ran out
                claimed = await service.claim(aid, ctx.audit, rid)
                if claimed is not None:
                    return msgspec.structs.replace(
                        decision, action="allow", message=f"approved by {_approvers(claimed)} (request {aid})",
                    ), aid
            return _deny(decision, (
                f"approval request {aid} got no decision within {hold_for:.0f} s and was withdrawn; statement not run"
            )), aid
        return _deny(decision, f"approval request {aid} is {result.status}; statement not run"), aid
    except StoreError as exc:
        return _unavailable(exc), aid


async def _withdraw(service: ApprovalService, aid: str, reason: str, ctx: SessionContext) -> None:
    try:
        await service.withdraw(aid, reason, ctx.audit)
    except Exception:  # best effort: the sweeper expires it anyway
        log.exception("approval %s could not be withdrawn", aid)


def _approvers(request: ApprovalRequest) -> str:
    names = [d.approver.subject for d in request.decisions if d.verdict == "approve"]
    return ", ".join(names) or "an approver"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
