"""The statement pipeline: the one place where a request's fate is decided.

Both protocol adapters and `sqlward policy test` call `Pipeline.judge(ctx, request)`; nothing
else assembles a decision. For one request it runs, in this order:

1. **Session checks** (every kind of request): the stated reason of a leading
   `/* sqlward:reason=... */` comment becomes the session's; a session whose token expired is
   refused (`token-expired`), or ended (`close_session`) when `[identity] on_token_expiry =
   "close"`.
2. **Protocol commands without SQL** (`kind="command"`): the PostgreSQL FunctionCall message
   (`function-call`), the MySQL commands that bypass SQL (`command-not-allowed`), a MySQL cursor
   whose rows cannot be masked (`masking-cursor`). The audit record names the command as
   `<COM_DROP_DB>`.
3. **Built-in statement checks**: PostgreSQL statements that would change how the server reads
   SQL text (`sql-reading`: standard_conforming_strings to anything but on); identity
   tampering (`identity-tampering`: SET sqlward.*,
   application_name impersonation, `@sqlward_identity`); MySQL `KILL [CONNECTION | QUERY] <id>`
   alone is recognised as the form the gateway maps onto its own connection ids (`own-session`,
   returned as `Verdict.kill`; the session checks ownership), any other KILL form is refused
   (`kill-form`).
4. **Analysis** (`policy.engine`, cached per fingerprint) and the **policy**: guardrails, rules,
   the environment default (cached per fingerprint, identity, target, schema, policy version).
   An exception anywhere here refuses the request (`internal-error`).
5. **MySQL LOAD DATA LOCAL** on a target that does not allow it (`local-infile`).
6. **Row estimates**: a decision `pending` on `rows_over` / mass-write gets EXPLAIN figures from
   a side connection and is decided again.
7. **The mask plan**: for an allowed request of an identity a `[[masks]]` rule applies to, the
   `MaskContext` that the adapter's row rewriters use, or a refusal when masking cannot protect
   the result (`masking-unavailable` when the schema catalogue cannot be read).
8. **Approvals** (`gateway.approvals.gate`): a `review` decision becomes an approval request
   that the session waits for (`hold`) or that a later identical statement uses (`retry`); the
   decision that stands is allow (released by an approval: `Verdict.approval_id`, and the mask
   plan is made then) or a refusal naming the request. A text being prepared (Parse,
   COM_STMT_PREPARE) is not approved yet: `Verdict.review_at_run` asks the adapter to prepare it
   and to ask again, with the parameters, before each run. Offline, the note says what a live
   session would ask.
9. **The record**: `statement.decided` with the facts that matched is added to the session's
   audit scope. With `durable=True` the scope is flushed at once and a failure refuses the
   request (`audit-unavailable`); with `durable=False` the adapter flushes at its next flush
   point, before anything reaches the upstream (the PostgreSQL relay batches a pipeline).

An allowed `kind="execute"` (a run of a statement decided at Parse / PREPARE time) is recorded
as `statement.executed` (durable like a decision: when it cannot be written the run is refused
with `audit-unavailable`); its `statement.completed` refers to the decision.

`judge` works the same offline (`SessionContext.offline`, for `sqlward policy test`): the
checks and the policy are the very same calls; what needs a live upstream session (the mask plan
when the catalogue cannot be read, whose connection a KILL reaches) is said in `Verdict.notes`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import msgspec
import trio

from sqlward.adapters import identity as ident
from sqlward.adapters.base import (
    AuditUnavailable,
    KillRequest,
    SessionContext,
    StatementRequest,
    Verdict,
)
from sqlward.adapters.postgres.reading import reading_change
from sqlward.adapters.text import printable, redacted_message
from sqlward.audit.events import StatementDecided, StatementExecuted
from sqlward.policy import rule_ids
from sqlward.policy.fingerprint import RAW_PREFIX
from sqlward.policy.model import Analysis, Decision, Identity
from sqlward.policy.searchpath import Resolution, SearchPath, Unresolvable, needs_catalogue, resolve, trace, unsure

from sqlward.gateway.approvals.gate import precheck, settle, shown_parameters

if TYPE_CHECKING:
    from sqlward.audit.recorder import AuditScope
    from sqlward.gateway.approvals.service import ApprovalService
    from sqlward.gateway.gatekeeper import Gatekeeper
    from sqlward.masking.context import MaskContext

__all__ = ["Pipeline", "command_decision", "sql_reading", "tampering", "token_expiry", "kill_request", "local_infile"]

log = logging.getLogger("sqlward.pipeline")

# -- the built-in checks: small pure functions, in the order `judge` applies them -------------

_KILL = re.compile(
    r"^\s*KILL\s+(?:(?:HARD|SOFT)\s+)?(?:(CONNECTION|QUERY)\s+)?(?:ID\s+)?(\d+)\s*;?\s*$",
    re.IGNORECASE,
)
_LOCAL_INFILE = re.compile(
    r"\bLOAD\s+(?:DATA|XML)\s+(?:LOW_PRIORITY\s+|CONCURRENT\s+)?LOCAL\b", re.IGNORECASE
)
# Operations that cannot be a LOAD DATA statement (skip the LOCAL INFILE scan for them).
_PLAIN_OPS = frozenset({"select", "insert", "update", "delete", "begin", "commit", "rollback", "show", "use", "set"})

# Protocol commands with no SQL text: the rule that refuses each and the sentence the client reads.
_COMMANDS: dict[str, tuple[str, str]] = {
    "FunctionCall": (
        rule_ids.FUNCTION_CALL, "the FunctionCall protocol message is not allowed through sqlward; use SQL",
    ),
    "cursor fetch": (
        rule_ids.MASKING_CURSOR, "this cursor's rows cannot be masked; fetch without a server-side cursor",
    ),
}


def token_expiry(identity: Identity, *, close: bool, now: float | None = None, leeway: float = 0.0) -> Decision | None:
    """`token-expired` once the session's token has expired (None while it is valid). `leeway`:
    the clock skew its login granted (`Gatekeeper.token_leeway`), so a token inside the leeway
    at login is not refused at its first statement."""
    if identity.expires_at is None or not ident.expired(identity, now, leeway):
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(identity.expires_at))
    grace = f" (and its {leeway:.0f} s of clock-skew leeway are over)" if leeway else ""
    return Decision(
        action="deny", rule_id=rule_ids.TOKEN_EXPIRED,
        message=f"the token of {identity.subject} expired at {when}{grace}; reconnect with a fresh token"
        + ("; sqlward closes the session" if close else ""),
    )


def command_decision(command: str) -> Decision:
    """The verdict on a protocol command that carries no SQL (always a refusal today)."""
    rule_id, message = _COMMANDS.get(command, (rule_ids.COMMAND_NOT_ALLOWED, f"{command} is not allowed through sqlward"))
    return Decision(action="deny", rule_id=rule_id, message=message)


def sql_reading(request: StatementRequest) -> Decision | None:
    """PostgreSQL statements that would change how the server reads SQL text
    (standard_conforming_strings to anything but on, or SQL the check cannot read:
    `adapters.postgres.reading`), refused in every environment."""
    if request.dialect != "postgres" or not request.sql:
        return None
    why = reading_change(request.sql)
    if why is None:
        return None
    return Decision(
        action="deny", rule_id=rule_ids.SQL_READING,
        message=(
            f"refused: {why}; sqlward reads SQL text as the server does with "
            "standard_conforming_strings = on, which cannot be changed through it"
        ),
    )


def tampering(request: StatementRequest) -> Decision | None:
    """Statements that would rewrite the identity the gateway shows the database."""
    if request.dialect == "mysql":
        if not ident.mysql_identity_write(request.sql):
            return None
        message = "@sqlward_identity carries the session's identity and cannot be changed"
    else:
        if not ident.pg_identity_write(request.sql):
            return None
        message = (
            "the sqlward.* settings and the sqlward: application_name carry the session's "
            "identity and cannot be changed"
        )
    return Decision(action="deny", rule_id=rule_ids.IDENTITY_TAMPERING, message=message)


def kill_request(request: StatementRequest) -> KillRequest | None:
    """MySQL `KILL [CONNECTION | QUERY] <id>` sent alone: the form the gateway maps onto its own
    connection ids."""
    sql = request.sql
    if request.dialect != "mysql" or not ("KILL" in sql or "kill" in sql or "Kill" in sql):
        return None
    m = _KILL.match(sql)
    if m is None:
        return None
    return KillRequest(connection_id=int(m.group(2)), query_only=(m.group(1) or "").upper() == "QUERY")


_KILL_FORM = Decision(
    action="deny", rule_id=rule_ids.KILL_FORM,
    message="KILL must be sent on its own as KILL [CONNECTION | QUERY] <sqlward connection id>",
)


def local_infile(request: StatementRequest, analysis: Analysis, *, allowed: bool, target: str) -> Decision | None:
    """MySQL LOAD DATA / XML LOCAL on a target without `allow_local_infile`."""
    if request.dialect != "mysql" or allowed:
        return None
    if analysis.parse_status == "ok" and _PLAIN_OPS.issuperset(analysis.operations):
        return None
    if _LOCAL_INFILE.search(request.sql) is None:
        return None
    return Decision(
        action="deny", rule_id=rule_ids.LOCAL_INFILE,
        message=f"LOAD DATA LOCAL INFILE is not allowed on target {target!r}",
    )


def _internal_error(exc: BaseException) -> Decision:
    return Decision(
        action="deny", rule_id=rule_ids.INTERNAL_ERROR,
        message=f"sqlward could not evaluate this statement ({type(exc).__name__}); refused",
    )


def _failure_reporter(service: ApprovalService, ctx: SessionContext) -> Callable[[str, int, str], None]:
    """`SessionContext.approval_failed`: a released statement's run failed; the request becomes
    `failed` (in a task of its own: the adapter that reports it is relaying bytes)."""

    def report(approval_id: str, request_id: int, error: str) -> None:
        async def go() -> None:
            try:
                await service.finished(approval_id, request_id, error, ctx.audit)
            except Exception:
                log.exception("approval %s: its failed run could not be recorded", approval_id)

        trio.lowlevel.spawn_system_task(go)

    return report


def _binding_names(request: StatementRequest, names: _Names | None) -> object:
    """What the statement's names resolve through, for the approval binding: PostgreSQL's
    resolution (or search_path), MySQL's current database."""
    if request.dialect == "mysql":
        return {"database": request.schema}
    if names is not None and names.audit:
        return names.audit
    if request.search_path is not None:
        return {"search_path": request.search_path.shown()}
    return None


class _Names(NamedTuple):
    """PostgreSQL name resolution of one request (`Pipeline._names`)."""

    per_statement: tuple[SearchPath, ...]
    after: SearchPath | None
    resolution: Resolution | None
    refusal: Decision | None
    # What the statement.decided record says of it (`_resolution_fields`).
    audit: dict[str, object]


def _resolution_fields(per: tuple[SearchPath, ...], resolution: Resolution) -> dict[str, object]:
    """What the audit record says of name resolution: where each unqualified name resolved
    (all statements merged) and the path(s) it resolved through, when any name was resolved."""
    if not any(resolution):
        return {}
    merged: dict[str, list[str]] = {}
    for statement in resolution:
        for name, candidates in statement:
            merged.setdefault(name, [])
            merged[name].extend(c for c in candidates if c not in merged[name])
    return {"resolved": merged, "search_path": per[0].shown()}


# A sqlcommenter comment at the end of a statement carrying a W3C traceparent (version 00).
_TRACEPARENT = re.compile(
    r"/\*[^*]*?\btraceparent='(00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2})'[^*]*\*/\s*;?\s*\Z"
)


# MySQL executable comments and optimizer hints, which the fingerprint keeps verbatim.
_KEPT_COMMENT = re.compile(r"/\*[!+M].*?(?:\*/|\Z)", re.S)


def redact_kept_comments(fingerprint: str) -> str:
    """A fingerprint for a redacted audit record: also the literals inside the comments it
    keeps (MySQL `/*! ... */`, `/*M! ... */`, `/*+ ... */`: the server runs them) become ?."""
    if "/*" not in fingerprint:
        return fingerprint
    return _KEPT_COMMENT.sub(lambda m: redacted_message(m.group(0)), fingerprint)


def client_traceparent(sql: str) -> str | None:
    """The traceparent of a sqlcommenter comment closing `sql`, when it is well formed."""
    match = _TRACEPARENT.search(sql)
    return match.group(1) if match is not None else None


_NO_FIELDS: dict[str, object] = {}
_ALLOW = Decision(action="allow")
_AUDIT_UNAVAILABLE = Decision(
    action="deny", rule_id=rule_ids.AUDIT_UNAVAILABLE,
    message="the audit trail cannot be written; sqlward refuses to run statements",
)


class Pipeline:
    """`StatementPipeline` of `sqlward.adapters.base`, over the gateway's `Gatekeeper` (its policy
    engine, estimator and masking policy). See the module doc for the order of the steps."""

    def __init__(
        self, gatekeeper: Gatekeeper, approvals: ApprovalService | None = None, *,
        traceparent: Callable[[AuditScope], str | None] | None = None,
    ) -> None:
        self._gk = gatekeeper
        # The statement span's trace context for targets with trace_upstream (telemetry on).
        self._traceparent = traceparent
        # None: no live approvals (a review is refused), as for `sqlward policy test`.
        self._approvals = approvals
        # PostgreSQL name resolution of requests that cannot move the path and need no
        # catalogue, by (fingerprint, path): the same for every text of the shape.
        self._names_memo: dict[tuple[str, SearchPath], _Names] = {}

    @property
    def policy_version(self) -> int:
        return self._gk.policy_version

    async def judge(self, ctx: SessionContext, request: StatementRequest, *, durable: bool = True) -> Verdict:
        identity, target = ctx.identity, ctx.target
        assert identity is not None and target is not None, "judge() before the session has an identity and a target"
        gk = self._gk
        info = target.info
        rid = ctx.next_request()
        sql = request.sql
        # Whether a [[masks]] rule applies to this identity here goes on every verdict, whatever
        # step ends it: the adapter keeps watching rows of statements decided earlier by it.
        # Known per (identity, target, policy version): looked up again when one changes.
        version = gk.policy_version
        masked_key = (identity, target, version)
        if ctx.masked_key == masked_key:
            masked = ctx.masked
        else:
            try:
                masked = gk.masks_apply(identity, info)
            except Exception:  # fail closed: watch the rows
                log.exception("masking policy lookup failed")
                masked = True
            # [[access]] is judged at login; a reload may have revoked it since (open sessions
            # get the new policy at their next request).
            ctx.access_refusal = None if ctx.offline else gk.access_refusal(identity, info)
            ctx.masked, ctx.masked_key = masked, masked_key
        if ctx.access_refusal is not None:
            denied = Decision(action="deny", rule_id=rule_ids.ACCESS, message=ctx.access_refusal)
            return await self._record(ctx, request, rid, denied, durable=durable,
                                      verdict=Verdict(request_id=rid, decision=denied, masked=masked))

        # The run of a prepared statement decided before: only a session-wide check (the token)
        # can refuse it.
        if request.kind == "execute" and identity.expires_at is None:
            return await self._executed(ctx, request, rid, masked, durable=durable)

        # 1. session checks
        if request.kind == "statement":
            reason = ident.reason_from_sql(sql)
            if reason and reason != identity.reason:
                identity = msgspec.structs.replace(identity, reason=reason)
                ctx.set_identity(identity)
        if identity.expires_at is not None:
            close = gk.identity_settings().on_token_expiry == "close"
            expiry = token_expiry(identity, close=close, leeway=gk.token_leeway(identity))
            if expiry is not None:
                if close:  # the session ends: nothing is recorded as decided
                    return Verdict(request_id=rid, decision=expiry, close_session=True, masked=masked)
                analysis = None
                if request.kind == "statement":  # the record names what was refused
                    try:
                        analysis = gk.analyse(sql, request.dialect)
                    except Exception:  # the refusal stands; the record says it was not analysed
                        log.exception("analysis of a refused statement failed")
                verdict = Verdict(request_id=rid, decision=expiry, analysis=analysis, masked=masked)
                return await self._record(ctx, request, rid, expiry, durable=durable, verdict=verdict)
        if request.kind == "execute":
            return await self._executed(ctx, request, rid, masked, durable=durable)

        # 2. protocol commands
        if request.kind == "command":
            decision = command_decision(request.command)
            verdict = Verdict(request_id=rid, decision=decision, masked=masked)
            return await self._record(ctx, request, rid, decision, durable=durable, verdict=verdict)

        # 3.-7. built-in checks, analysis, policy, estimates, mask plan
        analysis: Analysis | None = None
        mask: MaskContext | None = None
        kill: KillRequest | None = None
        estimates: dict[int, int | None] | None = None
        after: SearchPath | None = None
        names: _Names | None = None
        notes: list[str] = []  # offline only
        try:
            decision = tampering(request) or sql_reading(request)
            kill = kill_request(request) if decision is None else None
            if kill is not None:
                decision = Decision(action="allow", rule_id=rule_ids.OWN_SESSION, facts=(f"kill={kill.connection_id}",))
                if ctx.offline:
                    notes.append(
                        f"KILL reaches gateway connection {kill.connection_id} only if it is a session of "
                        f"{identity.subject}: only a live gateway knows"
                    )
            else:
                analysis = gk.analyse(sql, request.dialect)
                names = None
                if request.search_path is not None and request.dialect == "postgres":
                    names = await self._names(ctx, request.search_path, analysis, sql)
                    after = names.after
                    if decision is None and names.refusal is not None:
                        decision = names.refusal
                resolution = names.resolution if names is not None else None
                if decision is None:
                    if request.dialect == "mysql" and "kill" in analysis.operations:
                        decision = _KILL_FORM
                    else:
                        decision = gk.decide(
                            analysis, identity, info, schema=request.schema, sql=sql, resolution=resolution,
                        )
                if decision.action == "allow":
                    decision = local_infile(
                        request, analysis, allowed=target.allow_local_infile, target=info.name,
                    ) or decision
                if decision.pending:
                    estimates = await gk.estimate_rows(
                        target, sql, analysis, decision.pending, schema=request.schema,
                        search_paths=names.per_statement if names is not None else (),
                    )
                    decision = gk.decide(
                        analysis, identity, info, schema=request.schema, sql=sql, estimates=estimates,
                        resolution=resolution,
                    )
                if decision.action == "allow" and masked:
                    decision, mask = await self._mask_plan(ctx, request, analysis, decision, notes, names)
        except Exception as exc:  # fail closed
            log.exception("policy evaluation failed")
            decision = _internal_error(exc)

        # 8. approvals: a review waits for a verdict (hold) or refers to one (retry).
        approval_id: str | None = None
        review_at_run = False
        if decision.action == "review":
            if not decision.message:
                decision = msgspec.structs.replace(decision, message=f'statement needs approval (rule "{decision.rule_id}")')
            refusal = precheck(decision, identity.reason)
            if refusal is not None:
                decision = refusal
            elif ctx.offline:
                notes.append("a live session would ask for approval: " + ", ".join(
                    f"{r.mode} by {' or '.join((*r.approvers, *(f'group:{g}' for g in r.all_groups))) or 'the principal'}"
                    + (f" ({r.approvals} approvals)" if r.approvals > 1 else "")
                    for r in decision.approvals
                ))
            elif request.prepare:
                review_at_run = True  # each run is approved with its parameters
            elif self._approvals is None:
                decision = msgspec.structs.replace(decision, action="deny")
            else:
                try:
                    decision, approval_id = await settle(
                        self._approvals, ctx, request, rid, decision, analysis=analysis,
                        names=_binding_names(request, names), estimates=estimates,
                    )
                except AuditUnavailable:
                    return Verdict(request_id=rid, decision=_AUDIT_UNAVAILABLE, analysis=analysis, masked=masked)
                if decision.action == "allow" and masked:
                    assert analysis is not None
                    try:
                        decision, mask = await self._mask_plan(ctx, request, analysis, decision, notes, names)
                    except Exception as exc:  # fail closed
                        log.exception("mask plan of an approved statement failed")
                        decision = _internal_error(exc)

        # 9. the record
        verdict = Verdict(
            request_id=rid, decision=decision, analysis=analysis, mask=mask, masked=masked, kill=kill,
            search_path=after, approval_id=approval_id, review_at_run=review_at_run,
        )
        if estimates is not None or notes:
            verdict = msgspec.structs.replace(verdict, estimates=estimates or {}, notes=tuple(notes))
        if approval_id is not None and decision.action == "allow":
            ctx.approved[rid] = approval_id
            if ctx.approval_failed is None and self._approvals is not None:
                ctx.approval_failed = _failure_reporter(self._approvals, ctx)
        return await self._record(ctx, request, rid, decision, durable=durable, verdict=verdict, names=names)

    async def _names(self, ctx: SessionContext, path: SearchPath, analysis: Analysis, sql: str) -> _Names:
        """PostgreSQL: the path at each statement and after the request, and where each
        unqualified table name may resolve (`policy.searchpath`)."""
        assert ctx.target is not None
        key = (analysis.fingerprint, path)
        memo = self._names_memo.get(key)
        if memo is not None:
            return memo
        per, after = trace(path, analysis, sql)
        if not any("." not in t for t in analysis.tables):
            names = _Names(per, after, None, None, {})
        else:
            catalogue = needs_catalogue(per)
            relations = None
            confirmed = None
            if catalogue and not ctx.offline:
                relations = await self._gk.relations(ctx.target)
            if not ctx.offline and (relations is not None or any(sp.absent for sp in per)):
                # Where the catalogue's word that an earlier schema lacks the name decides, or the
                # path names a schema that did not exist, the server says what the name resolves
                # to now (a table or schema created there since).
                asked = unsure(analysis, per, relations)
                if asked:
                    confirmed = await self._gk.server_resolution(ctx.target, asked)
                    catalogue = True  # not kept per shape: the answer is the server's of now
            try:
                resolution = resolve(analysis, per, relations, confirmed)
            except Unresolvable as exc:
                refusal = Decision(
                    action="deny", rule_id=rule_ids.SEARCH_PATH_UNKNOWN,
                    message=f"sqlward cannot tell which schema an unqualified table name resolves to here ({exc}); "
                    "qualify the names (schema.table) or send the statement on its own",
                )
                return _Names(per, after, None, refusal, {"search_path": per[-1].shown()} if per else {})
            names = _Names(per, after, resolution, None, _resolution_fields(per, resolution))
            if catalogue:
                return names
        if after is None and not analysis.fingerprint.startswith(RAW_PREFIX):
            if len(self._names_memo) >= 4096:
                self._names_memo.clear()
            self._names_memo[key] = names
        return names

    async def _mask_plan(
        self, ctx: SessionContext, request: StatementRequest, analysis: Analysis, decision: Decision, notes: list[str],
        names: _Names | None,
    ) -> tuple[Decision, MaskContext | None]:
        assert ctx.identity is not None and ctx.target is not None
        search_path: tuple[str, ...] | None = None
        if names is not None and names.per_statement:
            first = names.per_statement[0]
            if not first.certain and names.resolution is not None and any(names.resolution):
                # Lineage follows one path: with several candidates, masking cannot know which
                # columns it reads.
                return Decision(
                    action="deny", rule_id=rule_ids.SEARCH_PATH_UNKNOWN,
                    message="masking applies to you and the session's search_path is not known for sure here "
                    f"({first.unknown or 'a change of it is still running'}); qualify the table names or send "
                    "the statement after the change completed",
                ), None
            search_path = first.paths[0]
        try:
            mask = await self._gk.mask_context(
                ctx.target, request.sql, analysis, ctx.identity, schema=request.schema, search_path=search_path,
            )
        except Exception as exc:  # the catalogue cannot be read: fail closed
            if ctx.offline:
                notes.append(
                    f"masking applies to {ctx.identity.subject} on {ctx.target.info.name}, and its schema "
                    f"catalogue could not be read ({exc}): the mask plan is not known offline"
                )
                return decision, None
            log.warning("masking context unavailable for %s: %s", ctx.target.info.name, exc)
            return Decision(
                action="deny", rule_id=rule_ids.MASKING_UNAVAILABLE,
                message="masking applies to you on this target and its schema catalogue could not be read; "
                "statement refused",
            ), None
        if mask is not None and mask.refusal:
            return Decision(action="deny", rule_id=mask.request.rule_id, message=mask.refusal), None
        return decision, mask

    async def _executed(
        self, ctx: SessionContext, request: StatementRequest, rid: int, masked: bool, *, durable: bool,
    ) -> Verdict:
        """The allowed run of a prepared statement: `statement.executed`, on disk before the
        upstream runs it when `durable` (else at the adapter's flush point, which must refuse
        the run when that flush fails)."""
        if not ctx.offline:
            parameters = None
            if request.parameters is not None:
                target = ctx.target
                if target is not None and target.redact_parameters:
                    parameters = tuple(None if v is None else "?" for v in request.parameters)
                else:
                    parameters = shown_parameters(request.parameters, request.formats, request.dialect)
            ctx.audit.add(StatementExecuted(
                request_id=rid, statement_name=request.statement_name, command=request.command or None,
                parameters=parameters,
            ))
            if durable:
                try:
                    await ctx.audit.flush_before_run()
                except AuditUnavailable:
                    return Verdict(request_id=rid, decision=_AUDIT_UNAVAILABLE, masked=masked)
        return Verdict(request_id=rid, decision=_ALLOW, masked=masked)

    async def _record(
        self, ctx: SessionContext, request: StatementRequest, rid: int, decision: Decision, *,
        durable: bool, verdict: Verdict | None = None, names: _Names | None = None,
    ) -> Verdict:
        target = ctx.target
        assert target is not None and ctx.who is not None
        analysis = verdict.analysis if verdict is not None else None
        if request.kind == "command":
            sql, fingerprint = f"<{request.command}>", ""
        elif request.kind == "execute":
            sql, fingerprint = "<execute of a prepared statement>", ""
        elif verdict is not None and verdict.kill is not None:
            verb = "KILL QUERY" if verdict.kill.query_only else "KILL CONNECTION"
            sql, fingerprint = f"{verb} {verdict.kill.connection_id}", f"{verb} ?"
        else:
            sql, fingerprint = printable(request.sql), printable(analysis.fingerprint) if analysis is not None else ""
        traceparent = client_traceparent(request.sql) if "traceparent" in request.sql else None
        # Text the lexer could not read (an unterminated quote or comment) has no literal-free
        # fingerprint: its key is the raw text, which never leaves the gateway as a fingerprint
        # (the audit field, telemetry's db.query.text).
        readable = not fingerprint.startswith(RAW_PREFIX)
        fingerprint = redact_kept_comments(fingerprint) if readable else ""
        redacted = target.redact_text and request.kind == "statement"
        if redacted:  # the fingerprint is the text with every literal replaced by ?
            sql = fingerprint or "<text not shown: it could not be read for redaction>"
        killed = verdict is not None and verdict.kill is not None
        if analysis is not None:
            parse_status = analysis.parse_status
        else:  # a command, an execute or a KILL carry no SQL to parse; a failed analysis does
            parse_status = "ok" if request.kind != "statement" or killed else "error"
        ctx.audit.add(
            StatementDecided(
                request_id=rid, who=ctx.who, target=target.info.name, environment=target.info.environment,
                sql=sql, fingerprint=fingerprint,
                operations=("kill",) if killed else (analysis.operations if analysis is not None else ()),
                tables=analysis.tables if analysis is not None else (),
                parse_status=parse_status,
                action=decision.action, rule_id=decision.rule_id, message=decision.message,
                statement_name=request.statement_name, statement_index=decision.statement_index,
                facts=decision.facts, approval_id=verdict.approval_id if verdict is not None else None,
                traceparent=traceparent, redacted=redacted,
                **(names.audit if names is not None else _NO_FIELDS),
            )
        )
        if verdict is None:
            verdict = Verdict(request_id=rid, decision=decision)
        if (
            self._traceparent is not None and target.trace_upstream and request.kind == "statement"
            and not request.prepare and decision.action == "allow" and traceparent is None
            and readable and analysis is not None and analysis.parse_status == "ok"
        ):
            # Appended text must not change what runs: only after text that was read whole (no
            # quote or comment left open for the comment to close). A statement with the
            # client's own traceparent keeps it: one context in the logs.
            verdict = msgspec.structs.replace(verdict, traceparent=self._traceparent(ctx.audit))
        if durable and not ctx.offline:
            try:
                await ctx.audit.flush_before_run()
            except AuditUnavailable:
                return Verdict(request_id=rid, decision=_AUDIT_UNAVAILABLE, analysis=analysis, masked=verdict.masked)
        return verdict
