"""`sqlward policy test`: the gateway's decision on one SQL text, without a running gateway.

How it works: `evaluate` builds a `gateway.gatekeeper.Gatekeeper` from the loaded config with
`Gatekeeper.from_config` (so the policy `Engine`, its rules, environments and fallbacks are the
very ones `sqlward serve` builds) and a no-op audit writer (the audit file is never opened).
Nothing is sent to a gateway, and an upstream database is contacted only when a rule or
guardrail needs an estimate of the rows a statement changes (`rows_over`, mass-write): then the
decision is `pending`, `Gatekeeper.estimate_rows` runs EXPLAIN on the target as the gateway
would, and the decision is made again with the figures (shown under "estimates").

The request is then judged in the order the protocol adapters use:

1. `[[access]]`: `Gatekeeper.access_refusal(identity, target)`; a refusal becomes a deny
   decision with rule id "access" (the gateway refuses the connection itself).
2. Identity tampering: statements that would rewrite the identity the gateway shows the database
   (`adapters.identity.pg_identity_write` / `mysql_identity_write`) are refused with rule id
   "identity-tampering", as the adapters do.
3. `Gatekeeper.decide(analysis, identity, target, schema=...)`: the rules, the built-in
   "unparseable" and "dynamic-sql" refusals and the environment default (fail closed on an
   engine exception, as in the gateway).

The identity is the static identity of that name from `[[identities]]` (its groups, display
name and agent flag), or else an ad-hoc identity with that subject and the given groups and actor
chain: what an OIDC token for that person would give (`is_agent` when there is an actor). The
dialect defaults to the target's protocol; for MySQL the current database (`schema`) defaults to
the DSN's database, as a MySQL session's does, and unqualified table names are shown qualified
the way the engine matches them.

Not simulated (they depend on a live session): token expiry ("token-expired"), MySQL
`LOAD DATA LOCAL INFILE` and `KILL` forms, and the session's `USE` history before this text.

`PolicyTestError` is a usage problem (unknown target, contradicting options): exit status 2.
"""

from __future__ import annotations

import logging
from typing import Literal

import msgspec
import trio

from sqlward.adapters import identity as ident
from sqlward.gateway.config import Config
from sqlward.gateway.gatekeeper import Gatekeeper
from sqlward.policy.engine import _qualified
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

ACCESS_RULE = "access"
TAMPERING_RULE = "identity-tampering"
DIALECTS: tuple[str, ...] = ("postgres", "mysql")
EXIT_BY_ACTION: dict[str, int] = {"allow": 0, "deny": 1, "review": 3}


class PolicyTestError(Exception):
    """The request cannot be evaluated as given (usage error, exit status 2)."""


class _NoAudit:
    """Audit writer that records nothing (the policy test never opens the audit file)."""

    def write(self, event: msgspec.Struct) -> None:
        pass


class IdentityReport(msgspec.Struct, frozen=True):
    subject: str
    # "static": from [[identities]]; "ad-hoc": built from --as / --group / --actor.
    source: Literal["static", "ad-hoc"]
    groups: tuple[str, ...] = ()
    actor: tuple[str, ...] = ()
    is_agent: bool = False


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


def exit_code(report: Report) -> int:
    """0 allow, 1 deny, 3 review."""
    return EXIT_BY_ACTION[report.decision]


Source = Literal["static", "ad-hoc"]


def _identity(
    config: Config, name: str, groups: tuple[str, ...], actors: tuple[str, ...]
) -> tuple[Identity, Source]:
    for ident_cfg in config.identities:
        if ident_cfg.name == name:
            if groups or actors:
                raise PolicyTestError(
                    f"{name!r} is a static identity of [[identities]]: its groups and agent flag come from the "
                    "config (a static name cannot log in with a token), so --group / --actor do not apply"
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
    # What Gatekeeper.authenticate_token gives for a token of this subject.
    return (
        Identity(subject=name, groups=groups, verified_by="oidc", actor=actors, is_agent=bool(actors)),
        "ad-hoc",
    )


def _target(config: Config, gatekeeper: Gatekeeper, name: str) -> TargetInfo:
    for t in config.targets:
        if t.name == name:
            target = gatekeeper.resolve_target(name, t.protocol)
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
) -> Report:
    """The gateway's decision on `sql` sent by `identity` to `target` (see the module doc).

    Raises PolicyTestError for usage problems and gateway.config.ConfigError when the gateway
    could not be built (e.g. an unreadable secret file)."""
    if not identity:
        raise PolicyTestError("--as needs an identity name")
    if any(not g for g in groups) or any(not a for a in actors):
        raise PolicyTestError("--group and --actor need non-empty names")
    if dialect is not None and dialect not in DIALECTS:
        raise PolicyTestError(f"unknown dialect {dialect!r} (expected one of: {', '.join(DIALECTS)})")
    gatekeeper = Gatekeeper.from_config(config, _NoAudit())
    try:
        info = _target(config, gatekeeper, target)
        who, source = _identity(config, identity, groups, actors)
        dialect = dialect or info.protocol
        if schema is not None and dialect != "mysql":
            raise PolicyTestError(
                "--schema is the MySQL current database (USE); PostgreSQL sessions do not qualify table names with it"
            )
        if schema is None:
            schema = info.database if dialect == "mysql" and info.protocol == "mysql" else ""
        # sqlglot warns on stderr when it falls back to a Command; the parse status says so already.
        logging.getLogger("sqlglot").setLevel(logging.ERROR)
        analysis = gatekeeper.analyse(sql, dialect)
        decision = _decide(gatekeeper, analysis, who, info, sql, dialect, schema)
        estimates: dict[int, int | None] = {}
        if decision.pending:
            resolved = gatekeeper.resolve_target(info.name, info.protocol)
            assert resolved is not None

            async def _estimate() -> dict[int, int | None]:
                try:
                    return await gatekeeper.estimate_rows(resolved, sql, analysis, decision.pending, schema=schema or "")
                finally:
                    await gatekeeper.aclose()

            estimates = trio.run(_estimate)
            decision = gatekeeper.decide(analysis, who, info, schema=schema, sql=sql, estimates=estimates)
    finally:
        gatekeeper.close()

    shown = _qualified(analysis, schema.lower()) if schema or dialect == "mysql" else analysis
    return Report(
        decision=decision.action,
        rule_id=decision.rule_id,
        message=decision.message,
        statement=None if decision.statement_index is None else decision.statement_index + 1,
        identity=IdentityReport(
            subject=who.subject, source=source, groups=who.groups, actor=who.actor, is_agent=who.is_agent
        ),
        target=TargetReport(name=info.name, protocol=info.protocol, environment=info.environment, database=info.database),
        dialect=dialect,
        schema=schema,
        fingerprint=analysis.fingerprint,
        parse_status=analysis.parse_status,
        error=analysis.error,
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
            for i, st in enumerate(shown.statements, start=1)
        ),
        facts=decision.facts,
        estimates={i + 1: n for i, n in estimates.items()},
    )


def _decide(
    gatekeeper: Gatekeeper, analysis: Analysis, who: Identity, info: TargetInfo, sql: str, dialect: str, schema: str
) -> Decision:
    refusal = gatekeeper.access_refusal(who, info)
    if refusal is not None:
        return Decision(action="deny", rule_id=ACCESS_RULE, message=refusal)
    if dialect == "mysql":
        if ident.mysql_identity_write(sql):
            return Decision(
                action="deny", rule_id=TAMPERING_RULE,
                message="@sqlward_identity carries the session's identity and cannot be changed",
            )
    elif ident.pg_identity_write(sql):
        return Decision(
            action="deny", rule_id=TAMPERING_RULE,
            message="the sqlward.* settings and the sqlward: application_name carry the session's "
            "identity and cannot be changed",
        )
    return gatekeeper.decide(analysis, who, info, schema=schema, sql=sql)


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
    if who.is_agent:
        who_text += "; agent"
    who_text += ")"
    t = report.target
    lines = [
        f"decision:    {report.decision}",
        f"rule:        {report.rule_id or '-'}",
        f"message:     {report.message or '-'}",
    ]
    if report.statement is not None:
        lines.append(f"statement:   {report.statement} of {len(report.statements)}")
    if report.facts:
        lines.append(f"because:     {'; '.join(report.facts)}")
    for index, rows in report.estimates.items():
        lines.append(f"estimate:    statement {index}: " + ("no estimate (EXPLAIN failed or timed out)" if rows is None else f"about {rows:,} rows"))
    lines += [
        f"identity:    {who_text}",
        f"target:      {t.name} ({t.protocol}, environment {t.environment})",
        f"dialect:     {report.dialect}" + (f" (current database {report.schema})" if report.schema else ""),
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
