"""The built-in guardrail catalogue (docs/guardrails.md).

A guardrail is a named, documented predicate over the literal-free facts of a statement (or, for
`multi-statement`, of the whole request). Every guardrail is off until the configuration switches
it on with a `[guardrails.<id>]` table, for some environments (empty: every environment), with
the action `deny` (default) or `review`:

    [guardrails.drop-table]
    environments = ["production"]
    action = "deny"

`policy.engine.Engine` checks the switched-on guardrails of the target's environment before the
`[[rules]]`: an allow rule cannot override a guardrail's refusal. The refusal names the guardrail
id as its rule id and says why. Because the predicates read only `StatementFacts`, their result
is part of the engine's cached decision (keyed by fingerprint, identity, target, policy version).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

import msgspec

from sqlward.policy import rule_ids
from sqlward.policy.approval import ApprovalRule, approval_problems
from sqlward.policy.model import Analysis, StatementFacts
from sqlward.policy.vocabulary import one_of

__all__ = ["DEFAULT_ESTIMATE_TIMEOUT", "CATALOGUE", "COMMON_KEYS", "Guardrail", "GuardrailConfig", "ActiveGuardrail", "compile_guardrails", "guardrail_problems"]


class GuardrailConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A `[guardrails.<id>]` table. Options a guardrail does not take must be left out."""

    environments: tuple[str, ...] = ()  # empty: every environment
    action: Literal["deny", "review"] = "deny"
    approvers: tuple[str, ...] = ()  # for review: who may approve (see Rule.approvers)
    approval: ApprovalRule | None = None  # for review: how it is approved (policy.approval)
    max_statements: int | None = None  # multi-statement: statements allowed per request (default 1)
    tables: tuple[str, ...] = ()  # select-without-limit: table globs (required)
    max_rows: int | None = None  # mass-write: estimated rows allowed per write (default 1000)
    timeout: float | None = None  # mass-write: seconds the estimate may take (default 2)
    on_unknown: Literal["refuse", "allow"] | None = None  # mass-write: no estimate (default refuse)


class Guardrail(msgspec.Struct, frozen=True):
    id: str
    sentence: str  # one sentence of documentation
    # Returns why the statement is refused, or None when it passes.
    check: Callable[[StatementFacts, "ActiveGuardrail"], str | None] | None = None
    # Request-level check (the whole analysis); returns why, or None.
    check_request: Callable[[Analysis, "ActiveGuardrail"], str | None] | None = None
    options: tuple[str, ...] = ()  # GuardrailConfig fields this guardrail takes
    # Estimate-based check (mass-write): `estimates` says whether a statement needs an estimate
    # of the rows it affects; `check_rows` judges it (rows None: the estimate failed).
    estimates: Callable[[StatementFacts], bool] | None = None
    check_rows: Callable[[StatementFacts, int | None, "ActiveGuardrail"], str | None] | None = None


_DDL: Final = frozenset({"create", "alter", "drop"})
_WRITES: Final = frozenset({"insert", "update", "delete", "merge", "create", "drop", "alter", "truncate", "copy"})
_PRINCIPALS: Final = frozenset({"role", "user", "group"})
_FILE_FUNCTIONS: Final = frozenset(
    {
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "lo_import",
        "lo_export",
        "load_file",
    }
)


def _ops(st: StatementFacts) -> tuple[str, ...]:
    return st.operations or (st.operation,)


def _detail(st: StatementFacts) -> str:
    """The object kind, also for statements sqlglot could not parse (guessed from keywords)."""
    return st.detail or st.keyword_detail


def _drop_table(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    if "drop" in _ops(st) and _detail(st) in ("table", "foreign table"):
        return "DROP TABLE destroys a table and its data"
    return None


def _drop_database(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    if "drop" in _ops(st) and _detail(st) in ("database", "schema"):
        return f"DROP {_detail(st).upper()} destroys every object in it"
    return None


def _truncate(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    return "TRUNCATE removes every row of a table" if "truncate" in _ops(st) else None


def _delete_without_where(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    if "delete" in _ops(st) and st.has_where is False:
        return "DELETE without a WHERE clause removes every row"
    return None


def _update_without_where(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    if "update" in _ops(st) and st.has_where is False:
        return "UPDATE without a WHERE clause changes every row"
    return None


def _ddl(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    hit = [op for op in _ops(st) if op in _DDL]
    if hit:
        what = f" {_detail(st).upper()}" if _detail(st) and (st.operation in _DDL or st.parse_status == "error") else ""
        return f"schema changes ({hit[0].upper()}{what}) are not allowed here"
    return None


def _grant_revoke(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    hit = [op for op in _ops(st) if op in ("grant", "revoke")]
    return f"{hit[0].upper()} changes privileges" if hit else None


def _role_and_user(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    ops = _ops(st)
    if _detail(st) in _PRINCIPALS and any(op in _DDL for op in ops):
        op = next(op for op in ops if op in _DDL)
        return f"{op.upper()} {_detail(st).upper()} manages database accounts"
    if st.operation == "set" and st.detail == "password":
        return "SET PASSWORD changes an account's password"
    return None


def _identity_escalation(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    if st.operation == "set" and st.detail in ("role", "session authorization"):
        return f"SET {st.detail.upper()} changes the identity the session acts as"
    if st.operation == "set" and st.reset in ("role", "session authorization"):
        return f"RESET {st.reset.upper()} changes the identity the session acts as"
    if st.operation == "change user":
        return "CHANGE USER (COM_CHANGE_USER) switches the identity the session acts as"
    if "set_config" in st.functions:
        return "set_config() can change the role the session acts as"
    return None


def _unparseable(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    if st.parse_status != "ok":
        return "the statement could not be parsed, so no other check can be trusted"
    return None


def _file_and_program(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    if "copy" in _ops(st) and st.detail not in ("to stdout", "from stdin"):
        what = {"program": "a PROGRAM", "file": "a server file"}.get(st.detail.rpartition(" ")[2], "a server file or program")
        return f"COPY to or from {what} runs on the database server"
    if st.load_data:
        return "LOAD DATA reads a file into a table"
    if st.select_into in ("outfile", "dumpfile"):
        return f"SELECT ... INTO {st.select_into.upper()} writes a file on the database server"
    hit = [f for f in st.functions if f in _FILE_FUNCTIONS]
    if hit:
        return f"{hit[0]}() reads or writes files on the database server"
    return None


# Functions that change state although a SELECT calls them.
_SIDE_EFFECT_FUNCTIONS: Final = frozenset(
    {
        "nextval", "setval", "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf",
        "pg_rotate_logfile", "pg_switch_wal", "pg_create_restore_point", "lo_unlink", "lo_create",
        "lo_creat", "lo_from_bytea", "lo_put", "dblink_exec", "dblink", "pg_advisory_lock",
        "pg_advisory_xact_lock", "pg_notify", "pg_promote", "pg_drop_replication_slot",
        "pg_create_logical_replication_slot", "pg_create_physical_replication_slot",
        "pg_truncate_visibility_map", "pg_stat_reset", "txid_current", "sys_exec", "sys_eval",
        "get_lock", "release_all_locks",
    }
)


def _writes_disguised(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    ops = _ops(st)
    hit = [f for f in st.functions if f in _SIDE_EFFECT_FUNCTIONS]
    if hit and st.operation in ("select", "explain", "values", "call", "do"):
        return f"{hit[0]}() changes state although it is called from a {st.operation.upper()}"
    if st.select_into == "table":
        return "SELECT ... INTO creates and fills a table"
    if st.operation == "create" and st.detail == "table" and "select" in ops:
        return "CREATE TABLE ... AS SELECT creates and fills a table"
    if st.data_modifying_cte:
        return "a WITH clause holds a data-modifying statement"
    if st.explain_analyze and (st.parse_status != "ok" or any(op in _WRITES for op in ops[1:])):
        return "EXPLAIN ANALYZE runs the write it explains"
    return None


def _select_without_limit(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    if st.operation != "select" or st.has_limit is not False or g.tables is None:
        return None
    for name in st.tables_read:
        if g.tables.match(name) or ("." in name and g.tables_bare is not None and g.tables_bare.match(name.rsplit(".", 1)[1])):
            return f"SELECT from {name} needs a LIMIT"
    return None


def _where_always_true(st: StatementFacts, g: ActiveGuardrail) -> str | None:
    if st.where_trivial == "always":  # "literals" is resolved by the engine on the text itself
        return "the WHERE clause holds for every row, so it changes every row"
    return None


_MASS_WRITES: Final = frozenset({"update", "delete", "merge"})


def _estimates(st: StatementFacts) -> bool:
    ops = _ops(st)
    return st.parse_status == "ok" and (
        any(op in _MASS_WRITES for op in ops) or ("insert" in ops and bool(st.tables_read))
    )


def _mass_write(st: StatementFacts, rows: int | None, g: ActiveGuardrail) -> str | None:
    limit = g.config.max_rows if g.config.max_rows is not None else DEFAULT_MAX_ROWS
    if rows is None:
        if (g.config.on_unknown or "refuse") == "allow":
            return None
        return "the rows it would change could not be estimated (EXPLAIN failed or timed out)"
    if rows > limit:
        return f"it would change about {rows:,} rows (estimate), over the limit of {limit:,}"
    return None


def _parser_mismatch(analysis: Analysis, g: ActiveGuardrail) -> str | None:
    if analysis.executable_comment:
        return "MySQL executable comments (/*! ... */) hide statement text that other tools read as a comment"
    for st in analysis.statements:
        if st.parse_status == "unparsed":
            return f"the parser fell back to an opaque command for {st.operation.upper()}, so the server may read it differently"
    return None


DEFAULT_MAX_ROWS: Final = 1000
DEFAULT_ESTIMATE_TIMEOUT: Final = 2.0


def _multi_statement(analysis: Analysis, g: ActiveGuardrail) -> str | None:
    limit = g.config.max_statements if g.config.max_statements is not None else 1
    count = len(analysis.statements)
    if count > limit:
        return f"the request holds {count} statements; at most {limit} allowed per request"
    return None


CATALOGUE: Final[Mapping[str, Guardrail]] = {
    g.id: g
    for g in (
        Guardrail("drop-table", "Refuses DROP TABLE.", _drop_table),
        Guardrail("drop-database", "Refuses DROP DATABASE and DROP SCHEMA.", _drop_database),
        Guardrail("truncate", "Refuses TRUNCATE.", _truncate),
        Guardrail("delete-without-where", "Refuses DELETE without a WHERE clause, wherever it is nested.", _delete_without_where),
        Guardrail("update-without-where", "Refuses UPDATE without a WHERE clause, wherever it is nested.", _update_without_where),
        Guardrail(
            "where-always-true",
            "Refuses UPDATE and DELETE whose WHERE holds for every row (`1=1`, `id > 0 OR TRUE`, `id = id`), "
            "judged on the literal values of each statement.",
            _where_always_true,
        ),
        Guardrail(
            "mass-write",
            "Refuses UPDATE, DELETE, MERGE and INSERT ... SELECT the upstream's EXPLAIN estimates to change "
            "more than `max_rows` rows (default 1000); `timeout` bounds the estimate (default 2 s), "
            "`on_unknown` says what happens without one (default refuse).",
            options=("max_rows", "timeout", "on_unknown"),
            estimates=_estimates,
            check_rows=_mass_write,
        ),
        Guardrail("ddl-in-protected-env", "Refuses every CREATE, ALTER and DROP, of any object.", _ddl),
        Guardrail("grant-revoke", "Refuses GRANT and REVOKE.", _grant_revoke),
        Guardrail(
            "role-and-user-management",
            "Refuses CREATE / ALTER / DROP / RENAME of roles, users and groups, and SET PASSWORD.",
            _role_and_user,
        ),
        Guardrail(
            "identity-escalation",
            "Refuses SET ROLE, SET SESSION AUTHORIZATION, RESET ROLE / SESSION AUTHORIZATION, set_config() and MySQL CHANGE USER (COM_CHANGE_USER).",
            _identity_escalation,
        ),
        Guardrail(
            "multi-statement",
            "Refuses requests holding more than `max_statements` statements (default 1).",
            check_request=_multi_statement,
            options=("max_statements",),
        ),
        Guardrail(rule_ids.UNPARSEABLE, "Refuses statements the analyser could not parse, whatever the environment allows.", _unparseable),
        Guardrail(
            "parser-mismatch",
            "Refuses requests where parsers may disagree: MySQL executable comments (/*! ... */, /*M! ... */) "
            "and statements sqlglot only understood as an opaque command.",
            check_request=_parser_mismatch,
        ),
        Guardrail(
            "file-and-program-access",
            "Refuses server-side file and program access: COPY to/from a file or PROGRAM, pg_read_file and "
            "friends, lo_import / lo_export, LOAD DATA, SELECT ... INTO OUTFILE / DUMPFILE, LOAD_FILE().",
            _file_and_program,
        ),
        Guardrail(
            "writes-disguised-as-reads",
            "Refuses writes that look like reads: SELECT INTO, CREATE TABLE AS, data-modifying CTEs, "
            "EXPLAIN ANALYZE of a write and functions with side effects (nextval, pg_terminate_backend, "
            "dblink_exec, GET_LOCK, ...) called from a SELECT.",
            _writes_disguised,
        ),
        Guardrail(
            "select-without-limit",
            "Refuses a SELECT without LIMIT / FETCH reading any of the listed `tables` (globs).",
            _select_without_limit,
            options=("tables",),
        ),
    )
}


def _glob(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.IGNORECASE)


class ActiveGuardrail:
    """A switched-on guardrail with its settings, ready to check."""

    __slots__ = ("guardrail", "config", "environments", "tables", "tables_bare")

    def __init__(self, guardrail: Guardrail, config: GuardrailConfig) -> None:
        self.guardrail = guardrail
        self.config = config
        self.environments = frozenset(config.environments)
        self.tables = _glob(config.tables)
        self.tables_bare = _glob([p for p in config.tables if "." not in p])

    @property
    def id(self) -> str:
        return self.guardrail.id

    def applies_to(self, environment: str) -> bool:
        return not self.environments or environment in self.environments

    def check(self, st: StatementFacts) -> str | None:
        return self.guardrail.check(st, self) if self.guardrail.check is not None else None

    @property
    def estimates(self) -> Callable[[StatementFacts], bool] | None:
        return self.guardrail.estimates

    def check_rows(self, st: StatementFacts, rows: int | None) -> str | None:
        assert self.guardrail.check_rows is not None
        return self.guardrail.check_rows(st, rows, self)

    def check_request(self, analysis: Analysis) -> str | None:
        fn = self.guardrail.check_request
        return fn(analysis, self) if fn is not None else None


# The options some guardrail takes, with their defaults (from GuardrailConfig), and the keys every
# guardrail table takes (the other fields of GuardrailConfig): no hand-kept list.
_OPTIONS: Final = frozenset(o for g in CATALOGUE.values() for o in g.options)
_OPTION_DEFAULTS: Final = {f.name: f.default for f in msgspec.structs.fields(GuardrailConfig) if f.name in _OPTIONS}
COMMON_KEYS: Final = tuple(f.name for f in msgspec.structs.fields(GuardrailConfig) if f.name not in _OPTIONS)


def guardrail_problems(gid: str, config: GuardrailConfig) -> list[tuple[str, str]]:
    """(field, message) for each problem with a `[guardrails.<gid>]` table; field "" is the table."""
    guardrail = CATALOGUE.get(gid)
    if guardrail is None:
        return [("", f"unknown guardrail ({one_of(gid, tuple(CATALOGUE))})")]
    problems = []
    for option, default in _OPTION_DEFAULTS.items():
        if option not in guardrail.options and getattr(config, option) != default:
            takes = COMMON_KEYS + guardrail.options
            problems.append((option, f"guardrail {gid!r} takes no option {option!r} ({one_of(option, takes)})"))
    if config.approvers and config.action != "review":
        problems.append(("approvers", "only a review guardrail has approvers (set action = \"review\")"))
    if config.approval is not None:
        from sqlward.policy.rules import effective_approval  # rules imports nothing of guardrails

        if config.action != "review":
            problems.append(("approval", "only a review guardrail has an approval table (set action = \"review\")"))
        problems.extend((f"approval.{k}", m) for k, m in approval_problems(effective_approval(config.approval, config.approvers)))
    if any(not e for e in config.environments):
        problems.append(("environments", "expected non-empty environment names (leave the key out for every environment)"))
    if gid == "multi-statement" and config.max_statements is not None and config.max_statements < 1:
        problems.append(("max_statements", "expected an integer >= 1"))
    if config.max_rows is not None and config.max_rows < 0:
        problems.append(("max_rows", "expected an integer >= 0"))
    if config.timeout is not None and not 0 < config.timeout <= 60:
        problems.append(("timeout", "expected seconds between 0 and 60"))
    if gid == "select-without-limit":
        if not config.tables:
            problems.append(("tables", "expected at least one table glob"))
        elif any(not t for t in config.tables):
            problems.append(("tables", "expected non-empty table globs"))
    for i, pattern in enumerate(config.tables):
        if pattern and "" in pattern.split("."):
            problems.append((f"tables[{i}]", f"empty name part in {pattern!r}: it never matches (expected names such as schema.table)"))
    return problems


def compile_guardrails(configs: Mapping[str, GuardrailConfig]) -> tuple[ActiveGuardrail, ...]:
    """The switched-on guardrails in catalogue order; ValueError on an unknown id or bad option."""
    for gid, config in configs.items():
        problems = guardrail_problems(gid, config)
        if problems:
            field, message = problems[0]
            raise ValueError(f"guardrails.{gid}{'.' + field if field else ''}: {message}")
    return tuple(ActiveGuardrail(g, configs[g.id]) for g in CATALOGUE.values() if g.id in configs)
