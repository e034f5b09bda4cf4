"""`sqlward policy test`: the verdict a live session would get on one SQL text, offline.

How it works: `evaluate` builds a `gateway.gatekeeper.Gatekeeper` from the loaded config with
`Gatekeeper.from_config` (the very policy engine, rules, environments, guardrails and masks
`sqlward serve` builds) over a `NullSink` (the audit file is never opened), and asks the same
`gateway.pipeline.Pipeline.judge` the protocol adapters call, with an offline
`SessionContext`. So every built-in check of a live session applies in the same order: the
stated reason, token expiry (give `--expires-at` to judge as a token expiring then), protocol
commands without SQL (`--command FunctionCall`, `--command COM_DROP_DB`), identity tampering,
the MySQL KILL forms and LOAD DATA LOCAL, the rules and guardrails, row estimates, the mask plan.
Before the pipeline, `[[access]]` is applied as the listener would at connection time: a
refusal becomes a deny decision with rule id "access".

An upstream database is contacted only where a live session would contact it: an estimate of
the rows a statement changes (`rows_over`, mass-write: EXPLAIN on the target) and the schema
catalogue of a target where masking applies to the identity. What cannot be known offline is
said in `Report.notes`: whose connection a KILL reaches, a mask plan whose catalogue could not
be read, the session's earlier `USE` / `SET` history.

The identity is the static identity of that name from `[[identities]]` (its groups, display
name and agent flag; names compare in their canonical form, as at login), or else an ad-hoc
identity with that subject and the given groups, actor chain and `issuer` (a configured `[[oidc]]`
issuer: `[[access]] issuers` and its `leeway_seconds` for `--expires-at` then apply): what an
OIDC token for that person would give (`is_agent` when there is an actor). What a live login
would refuse is a usage error here: a subject or actor with invisible or control characters, an
actor naming a static identity. The
dialect defaults to the target's protocol; for MySQL the current database (`schema`) defaults to
the DSN's database, as a MySQL session's does, and unqualified table names are shown qualified
the way the engine matches them.

`PolicyTestError` is a usage problem (unknown target, contradicting options): exit status 2.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import msgspec
import trio

from sqlward.adapters.base import SessionContext, StatementRequest, Verdict
from sqlward.adapters.identity import canonical_name, name_problem
from sqlward.audit.recorder import NullSink
from sqlward.gateway.config import Config
from sqlward.gateway.gatekeeper import Gatekeeper
from sqlward.gateway.pipeline import Pipeline
from sqlward.policy import rule_ids
from sqlward.policy.engine import qualified, resolved
from sqlward.policy.searchpath import SearchPath, Unresolvable, effective, parse_path, resolve, trace
from sqlward.policy.model import Analysis, Decision, Identity, TargetInfo

__all__ = [
    "ACCESS_RULE",
    "IdentityReport",
    "PolicyTestError",
    "Report",
    "StatementReport",
    "TargetReport",
    "evaluate",
    "exit_code",
    "format_text",
]

ACCESS_RULE = rule_ids.ACCESS
DIALECTS: tuple[str, ...] = ("postgres", "mysql")
EXIT_BY_ACTION: dict[str, int] = {"allow": 0, "deny": 1, "review": 3}
Dialect = Literal["postgres", "mysql"]


class PolicyTestError(Exception):
    """The request cannot be evaluated as given (usage error, exit status 2)."""


class IdentityReport(msgspec.Struct, frozen=True):
    subject: str
    # "static": from [[identities]]; "ad-hoc": built from --as / --group / --actor.
    source: Literal["static", "ad-hoc"]
    groups: tuple[str, ...] = ()
    actor: tuple[str, ...] = ()
    is_agent: bool = False
    # --expires-at: the Unix time the ad-hoc identity's token expires.
    expires_at: float | None = None
    # --issuer: the [[oidc]] issuer of the ad-hoc identity's token ("" = none given).
    issuer: str = ""


class TargetReport(msgspec.Struct, frozen=True):
    name: str
    protocol: str
    environment: str
    database: str = ""


class StatementReport(msgspec.Struct, frozen=True):
    # 1-based position in the request text.
    index: int
    operation: str
    operations: tuple[str, ...]
    # As the rules see them (MySQL: qualified with the current database).
    tables_read: tuple[str, ...]
    tables_written: tuple[str, ...]
    has_where: bool | None
    parse_status: str
    detail: str = ""
    where_always_true: bool = False
    columns: tuple[str, ...] = ()


class Report(msgspec.Struct, frozen=True):
    decision: Literal["allow", "deny", "review"]
    rule_id: str
    message: str
    # 1-based index of the statement that decided a refusal or review; None otherwise.
    statement: int | None
    identity: IdentityReport
    target: TargetReport
    dialect: str
    schema: str
    fingerprint: str
    parse_status: str
    error: str
    statements: tuple[StatementReport, ...]
    policy_version: int = 1
    # The facts that matched the deciding rule or guardrail.
    facts: tuple[str, ...] = ()
    # Row estimates asked of the upstream, by 1-based statement index (None: no estimate).
    estimates: dict[int, int | None] = {}
    # --command: the protocol command judged instead of SQL text.
    command: str = ""
    # A live session would be ended (the token expired and on_token_expiry = "close").
    closes_session: bool = False
    # Source columns ("schema.table.column") a live session would mask in the result.
    masked_columns: tuple[str, ...] = ()
    # What could not be known offline.
    notes: tuple[str, ...] = ()
    # PostgreSQL: the search list unqualified names were resolved through (--search-path).
    search_path: list[str] = []


# A live session's list holds only schemas that exist; "$user" rarely does.
DEFAULT_SEARCH_PATH = "public"


def exit_code(report: Report) -> int:
    """0 allow, 1 deny, 3 review."""
    return EXIT_BY_ACTION[report.decision]


Source = Literal["static", "ad-hoc"]


def _identity(
    config: Config, name: str, groups: tuple[str, ...], actors: tuple[str, ...], expires_at: float | None,
    issuer: str = "",
) -> tuple[Identity, Source]:
    """The identity a live login would give, judged by the same rules: names compared in their
    canonical form (`adapters.identity.canonical_name`), names with invisible or control
    characters refused, a token naming a static identity (as subject or actor) refused, an
    issuer that must be a configured [[oidc]] issuer."""
    wanted = canonical_name(name)
    statics = {canonical_name(i.name): i for i in config.identities}
    ident_cfg = statics.get(wanted)
    if ident_cfg is not None:
        if groups or actors or expires_at is not None or issuer:
            raise PolicyTestError(
                f"{name!r} is a static identity of [[identities]] ({ident_cfg.name!r}): its groups and agent flag come "
                "from the config and it logs in with its secret, not a token, so --group / --actor / --expires-at / "
                "--issuer do not apply"
            )
        # The same Identity Gatekeeper.from_config builds for a static user.
        return (
            Identity(
                subject=ident_cfg.name,
                display_name=ident_cfg.display_name,
                groups=ident_cfg.groups,
                verified_by="static",
                is_agent=ident_cfg.agent,
            ),
            "static",
        )
    for n in (name, *actors):
        problem = name_problem(n)
        if problem is not None:
            raise PolicyTestError(f"{n!r} cannot name an identity: {problem}")
        if canonical_name(n) in statics:
            raise PolicyTestError(
                f"{n!r} is a static identity of [[identities]]: a token naming it (as subject or actor) is refused at login"
            )
    if issuer and issuer not in {i.issuer for i in config.oidc}:
        configured = ", ".join(i.issuer for i in config.oidc) or "none"
        raise PolicyTestError(f"--issuer {issuer!r} is not a configured [[oidc]] issuer (configured: {configured})")
    # What Gatekeeper.authenticate_token gives for a token of this subject.
    return (
        Identity(
            subject=name, groups=groups, verified_by="oidc", issuer=issuer, actor=actors, is_agent=bool(actors),
            expires_at=expires_at,
        ),
        "ad-hoc",
    )


def _target(config: Config, gatekeeper: Gatekeeper, name: str) -> TargetInfo:
    for t in config.targets:
        if t.name == name:
            target = gatekeeper.resolve_target(name, "mysql" if t.protocol == "mysql" else "postgres")
            assert target is not None
            return target.info
    known = ", ".join(t.name for t in config.targets)
    raise PolicyTestError(f"no target is named {name!r} in {config.source or 'the config'} (targets: {known})")


def evaluate(
    config: Config,
    *,
    identity: str,
    target: str,
    sql: str,
    dialect: str | None = None,
    groups: tuple[str, ...] = (),
    actors: tuple[str, ...] = (),
    schema: str | None = None,
    expires_at: float | None = None,
    command: str = "",
    search_path: str | None = None,
    issuer: str = "",
) -> Report:
    """The verdict a live session would get on `sql` (or the protocol `command`) sent by
    `identity` to `target` (see the module doc).

    Raises PolicyTestError for usage problems and gateway.config.ConfigError when the gateway
    could not be built (e.g. an unreadable secret file)."""
    if not identity:
        raise PolicyTestError("--as needs an identity name")
    if any(not g for g in groups) or any(not a for a in actors):
        raise PolicyTestError("--group and --actor need non-empty names")
    if dialect is not None and dialect not in DIALECTS:
        raise PolicyTestError(f"unknown dialect {dialect!r} (expected one of: {', '.join(DIALECTS)})")
    if command and sql:
        raise PolicyTestError("give either SQL text or --command, not both")
    if not command and not sql:
        raise PolicyTestError("give the SQL text to judge (or --command NAME for a protocol command)")
    gatekeeper = Gatekeeper.from_config(config, NullSink())
    try:
        info = _target(config, gatekeeper, target)
        who, source = _identity(config, identity, groups, actors, expires_at, issuer)
        chosen: Dialect = "mysql" if (dialect or info.protocol) == "mysql" else "postgres"
        if schema is not None and chosen != "mysql":
            raise PolicyTestError(
                "--schema is the MySQL current database (USE); PostgreSQL sessions do not qualify table names with it"
            )
        if search_path is not None and chosen != "postgres":
            raise PolicyTestError("--search-path is PostgreSQL's; MySQL sessions use --schema")
        if schema is None:
            schema = info.database if chosen == "mysql" and info.protocol == "mysql" else ""
        path: SearchPath | None = None
        if chosen == "postgres":
            schemas = parse_path(search_path if search_path is not None else DEFAULT_SEARCH_PATH)
            if schemas is None:
                raise PolicyTestError(f"--search-path {search_path!r} is not a list of schema names")
            # "$user" is the target DSN's user, the role the gateway connects as.
            resolved_target = gatekeeper.resolve_target(info.name, "postgres")
            user = resolved_target.user if resolved_target is not None else ""
            listed = effective(schemas, user)
            path = SearchPath(paths=(listed,), reset=listed, user=user)
        # sqlglot warns on stderr when it falls back to a Command; the parse status says so already.
        logging.getLogger("sqlglot").setLevel(logging.ERROR)
        request = StatementRequest(
            sql=sql, dialect=chosen, schema=schema, kind="command" if command else "statement", command=command,
            search_path=path,
        )
        refusal = gatekeeper.access_refusal(who, info)
        if refusal is not None:
            verdict = Verdict(request_id=1, decision=Decision(action="deny", rule_id=ACCESS_RULE, message=refusal))
        else:
            verdict = trio.run(_judge, gatekeeper, who, info, request)
        analysis: Analysis | None = verdict.analysis
        if analysis is None and sql:
            analysis = gatekeeper.analyse(sql, chosen)
    finally:
        gatekeeper.close()

    decision = verdict.decision
    shown = None
    if analysis is not None:
        shown = qualified(analysis, schema.lower()) if schema or chosen == "mysql" else analysis
        if path is not None:
            per, _ = trace(path, analysis, sql)
            try:
                shown = resolved(analysis, resolve(analysis, per, None))
            except Unresolvable:
                pass
    mask = verdict.mask
    masked_columns = mask.request.plan.masked_sources if mask is not None else ()
    return Report(
        decision=decision.action,
        rule_id=decision.rule_id,
        message=decision.message,
        statement=None if decision.statement_index is None else decision.statement_index + 1,
        identity=IdentityReport(
            subject=who.subject, source=source, groups=who.groups, actor=who.actor, is_agent=who.is_agent,
            issuer=who.issuer,
            expires_at=who.expires_at,
        ),
        target=TargetReport(name=info.name, protocol=info.protocol, environment=info.environment, database=info.database),
        dialect=chosen,
        schema=schema,
        fingerprint=analysis.fingerprint if analysis is not None else "",
        parse_status=analysis.parse_status if analysis is not None else "ok",
        error=analysis.error if analysis is not None else "",
        statements=tuple(
            StatementReport(
                index=i,
                operation=st.operation,
                operations=st.operations or (st.operation,),
                tables_read=st.tables_read,
                tables_written=st.tables_written,
                has_where=st.has_where,
                parse_status=st.parse_status,
                detail=st.detail,
                where_always_true=st.where_trivial == "always",
                columns=st.columns,
            )
            for i, st in enumerate(shown.statements if shown is not None else (), start=1)
        ),
        policy_version=gatekeeper.policy_version,
        facts=decision.facts,
        estimates={i + 1: n for i, n in verdict.estimates.items()},
        command=command,
        closes_session=verdict.close_session,
        masked_columns=masked_columns,
        notes=verdict.notes,
        search_path=list(path.paths[0]) if path is not None else [],
    )


async def _judge(gatekeeper: Gatekeeper, who: Identity, info: TargetInfo, request: StatementRequest) -> Verdict:
    target = gatekeeper.resolve_target(info.name, "mysql" if info.protocol == "mysql" else "postgres")
    assert target is not None
    ctx = SessionContext(gatekeeper.recorder.scope("policy-test"), offline=True)
    ctx.set_identity(who)
    ctx.target = target
    try:
        return await Pipeline(gatekeeper).judge(ctx, request)
    finally:
        with trio.CancelScope(shield=True):
            await gatekeeper.aclose()  # side connections (estimates, catalogue)


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(names) if names else "-"


def format_text(report: Report) -> str:
    """The human-readable explanation printed by `sqlward policy test`."""
    who = report.identity
    who_text = f"{who.subject} ({who.source}"
    if who.groups:
        who_text += f"; groups: {', '.join(who.groups)}"
    if who.actor:
        who_text += f"; via {' via '.join(who.actor)}"
    if who.issuer:
        who_text += f"; issuer {who.issuer}"
    if who.is_agent:
        who_text += "; agent"
    if who.expires_at is not None:
        who_text += "; token expires " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(who.expires_at))
    who_text += ")"
    t = report.target
    lines = [
        f"decision:    {report.decision}",
        f"rule:        {report.rule_id or '-'}",
        f"message:     {report.message or '-'}",
    ]
    if report.statement is not None:
        lines.append(f"statement:   {report.statement} of {len(report.statements)}")
    if report.closes_session:
        lines.append("session:     a live session would be closed (on_token_expiry = \"close\")")
    if report.command:
        lines.append(f"command:     {report.command}")
    if report.facts:
        lines.append(f"because:     {'; '.join(report.facts)}")
    if report.masked_columns:
        lines.append(f"masked:      {', '.join(report.masked_columns)}")
    for note in report.notes:
        lines.append(f"offline:     {note}")
    for index, rows in report.estimates.items():
        lines.append(f"estimate:    statement {index}: " + ("no estimate (EXPLAIN failed or timed out)" if rows is None else f"about {rows:,} rows"))
    lines += [
        f"identity:    {who_text}",
        f"target:      {t.name} ({t.protocol}, environment {t.environment})",
        f"dialect:     {report.dialect}" + (f" (current database {report.schema})" if report.schema else "")
        + (f" (search_path {', '.join(report.search_path)})" if report.search_path else ""),
        f"fingerprint: {report.fingerprint}",
        f"parse:       {report.parse_status}" + (f" ({report.error})" if report.error else ""),
        f"statements:  {len(report.statements)}",
    ]
    for st in report.statements:
        mark = "  <- decided" if report.statement == st.index else ""
        where = "-" if st.has_where is None else ("yes" if st.has_where else "no")
        detail = f" {st.detail}" if st.detail else ""
        lines.append(f"  [{st.index}] {st.operation}{detail}{mark}")
        lines.append(f"      operations: {', '.join(st.operations)}")
        lines.append(f"      read:       {_names(st.tables_read)}")
        lines.append(f"      written:    {_names(st.tables_written)}")
        lines.append(f"      has_where:  {where}" + ("  (always true)" if st.where_always_true else ""))
        if st.columns:
            lines.append(f"      columns:    {', '.join(st.columns)}")
        lines.append(f"      parse:      {st.parse_status}")
    return "\n".join(lines)
