"""Boundary types of the decision core.

Everything here is a frozen msgspec Struct so it can be cached, hashed, compared and encoded into
audit records without conversion. Adapters build `Identity` and `TargetInfo`; the analyser turns
SQL text into an `Analysis`; the engine turns (analysis, identity, target) into a `Decision`.

An `Analysis` never holds literal values: it is computed once per statement *shape* (the
fingerprint) and shared by every statement of that shape, so facts that depend on literal values
(an always-true WHERE, estimated rows) do not belong here.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from sqlward.policy.approval import ApprovalRule

Action = Literal["allow", "deny", "review"]
ParseStatus = Literal["ok", "unparsed", "error"]
VerifiedBy = Literal["static", "oidc", "certificate", "none"]


class Identity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who is connected: a person, a service account or an AI agent."""

    subject: str
    display_name: str = ""
    groups: tuple[str, ...] = ()
    verified_by: VerifiedBy = "static"
    issuer: str = ""
    # Delegation chain, outermost first: ("runbook-7",) when runbook-7 acts for `subject`.
    actor: tuple[str, ...] = ()
    is_agent: bool = False
    # Stated reason / ticket for the session, when given.
    reason: str = ""
    # Unix time after which the credential (an OIDC token) is no longer valid; None: no expiry.
    expires_at: float | None = None


class TargetInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The policy's view of a target: no DSN, no secrets."""

    name: str
    protocol: str
    environment: str
    database: str = ""


class StatementFacts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Literal-free facts about one SQL statement."""

    # Top-level operation, lower case: select, insert, update, delete, merge, copy, drop, create,
    # alter, truncate, grant, revoke, set, show, begin, commit, rollback, call, explain, do, ...
    operation: str
    # Every operation the statement performs, including nested ones (a DELETE inside a CTE).
    operations: tuple[str, ...] = ()
    tables_read: tuple[str, ...] = ()
    tables_written: tuple[str, ...] = ()
    # For UPDATE / DELETE: whether a WHERE clause is present; None where not applicable.
    has_where: bool | None = None
    parse_status: ParseStatus = "ok"
    # Extra detail such as the object kind of a DROP / CREATE ("table", "schema", ...).
    detail: str = ""
    # Functions called, lower-case names (schema prefix dropped), deduplicated.
    functions: tuple[str, ...] = ()
    # SELECT ... INTO: "table" (a new table: postgres SELECT INTO), "outfile" / "dumpfile" (MySQL
    # server files); "" otherwise (MySQL INTO @variable is not a write).
    select_into: str = ""
    # MySQL LOAD DATA / LOAD XML (reads a file into a table).
    load_data: bool = False
    # For a top-level SELECT / set operation: whether it has LIMIT or FETCH; None otherwise.
    has_limit: bool | None = None
    # A CTE holds INSERT / UPDATE / DELETE / MERGE (`WITH d AS (DELETE ...) SELECT ...`).
    data_modifying_cte: bool = False
    # EXPLAIN ANALYZE (postgres, mysql) or MariaDB ANALYZE <statement>: the inner statement runs.
    explain_analyze: bool = False
    # For a statement sqlglot could not parse (parse_status "error", whose `detail` stays empty):
    # the detail guessed from its leading keywords ("table" for DROP TABLE ..., "role", ...).
    keyword_detail: str = ""
    # For RESET: what is reset, lower case ("role", "session authorization", "all", a setting).
    reset: str = ""
    # An UPDATE / DELETE whose WHERE holds for every row: "always" (`id = id`, `x OR TRUE`),
    # "literals" (it may, depending on literal values the fingerprint merges: `1 = 1`, `'a'='a'`;
    # the engine evaluates such texts one by one when a rule or guardrail asks), "" otherwise.
    where_trivial: str = ""
    # Columns referenced: `table.column` (aliases resolved; an unqualified column is given the
    # statement's only table), `table.*` for stars, a bare name when the table cannot be told.
    columns: tuple[str, ...] = ()


class Analysis(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Facts about one request text (which may hold several statements)."""

    fingerprint: str
    dialect: str
    statements: tuple[StatementFacts, ...]
    # Worst status over the statements: error > unparsed > ok.
    parse_status: ParseStatus = "ok"
    error: str = ""
    # Summaries over all statements, in first-seen order (filled in when left empty), so the
    # audit record of every execution does not recompute them.
    operations: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    # MySQL executable comments (`/*! ... */`, `/*M! ... */`) were unwrapped: the server runs
    # text other parsers (and reviewers) take for a comment.
    executable_comment: bool = False

    def __post_init__(self) -> None:
        if not self.operations:
            ops = tuple(dict.fromkeys(op for st in self.statements for op in st.operations))
            msgspec.structs.force_setattr(self, "operations", ops)
        if not self.tables:
            tables = tuple(
                dict.fromkeys(t for st in self.statements for t in (*st.tables_read, *st.tables_written))
            )
            msgspec.structs.force_setattr(self, "tables", tables)


class Decision(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the policy says about a request."""

    action: Action
    rule_id: str = ""
    # Human sentence for the client and the audit trail.
    message: str = ""
    # Index of the statement that decided a refusal, when the request held several.
    statement_index: int | None = None
    # The facts that matched, for the audit trail and `sqlward policy test`:
    # ("operation=delete", "table=public.users", "has_where=false", "environment=production").
    facts: tuple[str, ...] = ()
    # Statements (indices) whose decision needs an estimate of the rows they affect (a rule's
    # `rows_over`, the mass-write guardrail). Such a decision is provisional: its action is
    # "deny" (fail closed if the caller ignores this); the caller asks the upstream (EXPLAIN) and
    # decides again with `estimates`.
    pending: tuple[int, ...] = ()
    # For "review": the approval requirement of every review that matched the request (all must
    # be satisfied by the approvals); empty when no approver is configured.
    approvals: tuple[ApprovalRule, ...] = ()
