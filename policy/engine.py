"""The decision engine: ordered rules over statement facts, with two caches.

How it works (DESIGN.md sections 3, 5 and 9):

- `Engine.analyse(sql, dialect)` computes `policy.fingerprint.fingerprint` (a few µs, no parse)
  and looks the (dialect, fingerprint) pair up in the analysis cache; only a new statement shape
  reaches `policy.analysis.analyse` (sqlglot). The cached `Analysis` is shared by every text of
  that shape, which is sound because it holds no literal values. Texts the lexer could not
  classify (fingerprints starting with `RAW_PREFIX`) are analysed every time and not cached, so
  junk cannot churn the cache.
- `Engine.decide(analysis, identity, target)` is cached by (fingerprint, dialect, identity
  subject, issuer, groups, actor, target name, environment, policy version). A new policy is a
  new `Engine`, so a reload starts with empty caches.
- Both caches are plain dicts bounded by `cache_size`: when full, the older half (insertion
  order) is dropped. No locking: the gateway runs the engine on one trio thread.

Guardrails (`policy.guardrails`, switched on per environment by `[guardrails.<id>]`) come first:
request-level ones (multi-statement) before any statement, then, for each statement, the
statement-level ones in catalogue order, before the unparseable check and the rules. A guardrail
with action "deny" refuses with its id as rule id and its reason; one with action "review" makes
the statement need approval unless something else denies it (an allow rule does not lift it).
Guardrail checks read only the cached facts, so they are part of the cached decision.

Decision for each statement, in order (after the dynamic-SQL check and the guardrails):

1. A statement whose parse_status is "error" or "unparsed" is refused by the built-in rule
   "unparseable" unless the environment allows unparsed statements (`allow_unparsed`; None
   means only in development, dev, local and test). Where allowed, the rules still apply to
   what is known (the operation guessed from the first keyword).
2. Otherwise the first rule whose every non-empty criterion matches decides. Criteria:
   operations, tables (fnmatch globs, case-insensitive; a pattern without a dot also matches the
   bare name of `schema.table`), environments and targets (exact names), identities (subject
   globs, case-sensitive), issuers (globs over the credential's issuer, `Identity.issuer`: the
   OIDC issuer URL, "" for static identities; case-sensitive), groups (any overlap), actors
   (globs over the delegation chain: any actor matches), agents (true: only agents or delegated
   identities; false: only people), has_where.
   For deny and review rules, operations and tables match when ANY of the statement's
   operations / tables is listed. For allow rules they must cover ALL of them (and a tables
   criterion needs at least one table): otherwise "allow select" would let
   `WITH d AS (DELETE ...) SELECT ...` through, and "allow public.*" would let
   `INSERT INTO public.x SELECT * FROM secret.y` through. `strict_allow=False` restores plain
   any-match for allow rules too.
3. No rule matched: the environment's default_action (rule id "default"). An environment missing
   from the policy uses `unknown_environment` (deny by default: fail closed).

The request is refused if any statement is: the first denied statement decides (deny wins over
review, since approving the review would run the denied statement too); otherwise the first
statement needing review gives a "review" decision; otherwise it is allowed, with the ids of
the rules that allowed its statements. A request with no statements is allowed.
"""

from __future__ import annotations

import msgspec

import fnmatch
import itertools
import re
import time
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, TypeVar

from sqlward.policy.analysis import analyse as _analyse
from sqlward.policy.guardrails import DEFAULT_ESTIMATE_TIMEOUT, ActiveGuardrail, GuardrailConfig, compile_guardrails
from sqlward.policy.fingerprint import RAW_PREFIX, fingerprint
from sqlward.policy import rule_ids
from sqlward.policy.model import Action, Analysis, Decision, Identity, StatementFacts, TargetInfo
from sqlward.policy.searchpath import Resolution
from sqlward.policy.approval import ApprovalRule
from sqlward.policy.rules import DAYS, PRODUCTION_ENVIRONMENTS, EnvironmentPolicy, Rule, effective_approval, parse_hours

__all__ = ["DEV_ENVIRONMENTS", "Engine"]

DEV_ENVIRONMENTS: Final = frozenset({"development", "dev", "local", "test"})
UNPARSEABLE_RULE: Final = rule_ids.UNPARSEABLE
DEFAULT_RULE: Final = rule_ids.DEFAULT
DYNAMIC_SQL_RULE: Final = rule_ids.DYNAMIC_SQL
ESTIMATE_RULE: Final = rule_ids.ESTIMATE_PENDING
# PostgreSQL functions that run SQL passed as text, or read whole tables / schemas / databases by
# name (xml export functions; dblink runs SQL on another connection): what they read is hidden
# from table rules and masks, so they count as dynamic SQL (lower-case names, schema dropped, as
# `StatementFacts.functions` holds them).
SQL_RUNNING_FUNCTIONS: Final = frozenset({
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
    "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
    "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema",
    "database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
    "cursor_to_xml", "cursor_to_xmlschema",
    "dblink", "dblink_exec", "dblink_open", "dblink_send_query", "dblink_fetch", "dblink_get_result",
})

_K = TypeVar("_K")
_V = TypeVar("_V")


def _store(cache: dict[_K, _V], key: _K, value: _V, size: int) -> None:
    if len(cache) >= size:
        for old in list(itertools.islice(cache, len(cache) // 2 + 1)):
            del cache[old]
    cache[key] = value


def _glob(patterns: Sequence[str], *, ignore_case: bool) -> re.Pattern[str] | None:
    if not patterns:
        return None
    flags = re.IGNORECASE if ignore_case else 0
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), flags)


def _ops_text(ops: Sequence[str]) -> str:
    return " / ".join(op.upper() for op in ops)


def _describe(rule: Rule) -> str:
    """A sentence derived from a rule's criteria: 'DROP is not allowed in production'."""
    subject = _ops_text(rule.operations) if rule.operations else "this statement"
    if rule.tables:
        subject += " on " + ", ".join(rule.tables)
    if rule.has_where is True:
        subject += " with a WHERE clause"
    elif rule.has_where is False:
        subject += " without a WHERE clause"
    verb = {"deny": "is not allowed", "review": "needs approval", "allow": "is allowed"}[rule.action]
    parts = [subject, verb]
    if rule.environments:
        parts.append("in " + ", ".join(rule.environments))
    if rule.targets:
        parts.append("on target " + ", ".join(rule.targets))
    who = [*rule.identities, *(f"group {g}" for g in rule.groups)]
    if who:
        parts.append("for " + ", ".join(who))
    return " ".join(parts)


PENDING: Final = ("pending",)  # a rule's `rows_over` needs an estimate the caller has not given


class _Context:
    """What a rule may look at besides the statement and who sends it."""

    __slots__ = ("count", "now", "estimate", "has_estimate")

    def __init__(self, count: int, now: float, estimate: int | None, has_estimate: bool) -> None:
        self.count = count
        self.now = now
        self.estimate = estimate
        self.has_estimate = has_estimate


class _CompiledRule:
    """A `Rule` with its criteria pre-processed for matching."""

    __slots__ = (
        "rule",
        "ops",
        "tables",
        "tables_bare",
        "columns",
        "environments",
        "targets",
        "identities",
        "issuers",
        "groups",
        "actors",
        "agents",
        "cover_all",
        "sentence",
        "days",
        "hours",
        "zone",
        "reason_re",
    )

    def __init__(self, rule: Rule, strict_allow: bool) -> None:
        self.rule = rule
        self.ops = frozenset(op.lower() for op in rule.operations)
        # Table globs: all patterns against the full name; dot-less ones also against the bare name.
        self.tables = _glob(rule.tables, ignore_case=True)
        self.tables_bare = _glob([p for p in rule.tables if "." not in p], ignore_case=True)
        self.columns = tuple(_column_pattern(p) for p in rule.columns)
        self.environments = frozenset(rule.environments)
        self.targets = frozenset(rule.targets)
        self.identities = _glob(rule.identities, ignore_case=False)
        self.issuers = _glob(rule.issuers, ignore_case=False)
        self.groups = frozenset(rule.groups)
        self.actors = _glob(rule.actors, ignore_case=False)
        self.agents = rule.agents
        self.cover_all = strict_allow and rule.action == "allow"
        self.sentence = rule.message or _describe(rule)
        self.days = frozenset(DAYS.index(d.lower()) for d in rule.days)
        self.hours = parse_hours(rule.hours) if rule.hours else None
        self.zone = ZoneInfo(rule.timezone) if (rule.days or rule.hours) else None
        self.reason_re = re.compile(rule.reason_pattern, re.IGNORECASE) if rule.reason_pattern else None

    @property
    def timed(self) -> bool:
        return self.zone is not None

    def _table_matches(self, name: str) -> bool:
        assert self.tables is not None
        if self.tables.match(name):
            return True
        if self.tables_bare is not None and "." in name:
            return self.tables_bare.match(name.rsplit(".", 1)[1]) is not None
        return False

    def _in_window(self, now: float) -> bool:
        assert self.zone is not None
        local = datetime.fromtimestamp(now, self.zone)
        if self.days and local.weekday() not in self.days:
            return False
        if self.hours is not None:
            minute = local.hour * 60 + local.minute
            start, end = self.hours
            inside = start <= minute < end if start < end else (minute >= start or minute < end)
            if not inside:
                return False
        return True

    def match(
        self, st: StatementFacts, identity: Identity, target: TargetInfo, ctx: _Context
    ) -> tuple[str, ...] | None:
        """The facts that matched (for the explanation), `PENDING` when only a row estimate is
        missing, or None when the rule does not match."""
        rule = self.rule
        facts: list[str] = []
        if self.environments:
            if target.environment not in self.environments:
                return None
            facts.append(f"environment={target.environment}")
        if self.targets:
            if target.name not in self.targets:
                return None
            facts.append(f"target={target.name}")
        if self.identities is not None:
            if not self.identities.match(identity.subject):
                return None
            facts.append(f"identity={identity.subject}")
        if self.issuers is not None:
            if not self.issuers.match(identity.issuer):
                return None
            facts.append(f"issuer={identity.issuer}")
        if self.groups:
            common = self.groups.intersection(identity.groups)
            if not common:
                return None
            facts.append("groups=" + ",".join(sorted(common)))
        if self.actors is not None:
            hit = [a for a in identity.actor if self.actors.match(a)]
            if not hit:
                return None
            facts.append(f"actor={hit[0]}")
        if self.agents is not None:
            agent = identity.is_agent or bool(identity.actor)
            if agent is not self.agents:
                return None
            facts.append(f"agent={str(agent).lower()}")
        if rule.reason is not None:
            if bool(identity.reason) is not rule.reason:
                return None
            facts.append("reason=" + ("given" if identity.reason else "none"))
        if self.reason_re is not None:
            if not self.reason_re.search(identity.reason):
                return None
            facts.append(f"reason~{rule.reason_pattern}")
        if rule.statements_over is not None:
            if ctx.count <= rule.statements_over:
                return None
            facts.append(f"statements={ctx.count}>{rule.statements_over}")
        if self.zone is not None:
            if not self._in_window(ctx.now):
                return None
            facts.append(f"time in {','.join(rule.days) or 'any day'} {rule.hours or 'any time'} {rule.timezone}")
        if rule.has_where is not None:
            if st.has_where is not rule.has_where:
                return None
            facts.append(f"has_where={str(st.has_where).lower()}")
        if rule.where_always_true is not None:
            if (st.where_trivial == "always") is not rule.where_always_true:
                return None
            facts.append(f"where_always_true={str(rule.where_always_true).lower()}")
        if self.ops:
            ops = st.operations or (st.operation,)
            if self.cover_all:
                if not self.ops.issuperset(ops):
                    return None
                facts.append("operations=" + ",".join(ops))
            else:
                hit = [op for op in ops if op in self.ops]
                if not hit:
                    return None
                facts.append("operation=" + ",".join(hit))
        if self.tables is not None:
            names = (*st.tables_read, *st.tables_written)
            if self.cover_all:
                if not names or not all(self._table_matches(n) for n in names):
                    return None
                facts.append("tables=" + ",".join(names))
            else:
                hit = [n for n in names if self._table_matches(n)]
                if not hit:
                    return None
                facts.append("table=" + ",".join(hit))
        if self.columns:
            cols = st.columns
            if self.cover_all:
                if not cols or not all(any(_column_matches(p, c) for p in self.columns) for c in cols):
                    return None
                facts.append("columns=" + ",".join(cols))
            else:
                hit = [c for c in cols if any(_column_matches(p, c) for p in self.columns)]
                if not hit:
                    return None
                facts.append("column=" + ",".join(hit))
        if rule.rows_over is not None:
            if not ctx.has_estimate:
                return PENDING
            if ctx.estimate is None:
                # No estimate: deny / review rules match (fail closed), allow rules do not.
                if rule.action == "allow":
                    return None
                facts.append("estimated_rows=unknown")
            elif ctx.estimate <= rule.rows_over:
                return None
            else:
                facts.append(f"estimated_rows={ctx.estimate}>{rule.rows_over}")
        return tuple(facts)


_ColumnPattern = tuple[re.Pattern[str] | None, bool, re.Pattern[str]]


def _column_pattern(pattern: str) -> _ColumnPattern:
    """(table glob or None, whether the table glob is schema-less, column glob) of a column
    criterion ("users.ssn", "public.users.ssn", "*.ssn", "ssn")."""
    table, _, column = pattern.lower().rpartition(".")
    return (re.compile(fnmatch.translate(table)) if table else None), "." not in table, re.compile(fnmatch.translate(column))


def _column_matches(pattern: _ColumnPattern, fact: str) -> bool:
    """Whether a referenced column (`schema.table.col`, `table.col`, `table.*`, `col`) may be one
    the pattern names. A star covers every column of its table; a column whose table could not
    be told may belong to any table."""
    table_glob, bare, column_glob = pattern
    table, _, column = fact.lower().rpartition(".")
    if column != "*" and not column_glob.match(column):
        return False
    if table_glob is None or not table:
        return True
    if table_glob.match(table):
        return True
    # "users.ssn" also names public.users.ssn: compare the bare table name.
    return bare and "." in table and table_glob.match(table.rsplit(".", 1)[1]) is not None


class Engine:
    """Rules + per-environment defaults for one policy version, with analysis/decision caches."""

    __slots__ = (
        "_rules",
        "_environments",
        "_version",
        "_cache_size",
        "_unknown_env",
        "_analyses",
        "_decisions",
        "_literal_facts",
        "_guardrails",
        "_guardrails_by_env",
        "_clock",
        "_timed",
        "_uses_reason",
        "_uses_where_true",
        "_estimate_timeout",
    )

    def __init__(
        self,
        rules: Sequence[Rule],
        environments: Mapping[str, EnvironmentPolicy],
        version: int,
        cache_size: int = 10_000,
        *,
        unknown_environment: EnvironmentPolicy | None = None,
        strict_allow: bool = True,
        guardrails: Mapping[str, GuardrailConfig] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._rules = tuple(_CompiledRule(r, strict_allow) for r in rules)
        self._environments = dict(environments)
        self._version = version
        self._cache_size = cache_size
        self._unknown_env = unknown_environment or EnvironmentPolicy(default_action="deny")
        self._analyses: dict[tuple[str, str], Analysis] = {}
        self._decisions: dict[tuple[object, ...], Decision] = {}
        self._literal_facts: dict[tuple[str, str], tuple[str, ...]] = {}
        self._guardrails = compile_guardrails(guardrails or {})
        self._guardrails_by_env: dict[str, tuple[ActiveGuardrail, ...]] = {}
        self._clock = clock
        # Criteria that make a decision depend on more than the cache key's usual parts.
        self._timed = any(r.timed for r in self._rules)
        self._uses_reason = any(r.rule.reason is not None or r.reason_re is not None for r in self._rules)
        self._uses_where_true = any(r.rule.where_always_true is not None for r in self._rules) or any(
            g.id == "where-always-true" for g in self._guardrails
        )
        timeouts = [g.config.timeout for g in self._guardrails if g.estimates is not None and g.config.timeout]
        self._estimate_timeout = max(timeouts) if timeouts else DEFAULT_ESTIMATE_TIMEOUT

    @property
    def version(self) -> int:
        return self._version

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(r.rule for r in self._rules)

    @property
    def environments(self) -> Mapping[str, EnvironmentPolicy]:
        return MappingProxyType(self._environments)

    @property
    def estimate_timeout(self) -> float:
        """Seconds an EXPLAIN estimate may take (the mass-write guardrail's `timeout`, default 2)."""
        return self._estimate_timeout

    # ------------------------------------------------------------------------------ analyse

    def analyse(self, sql: str, dialect: str) -> Analysis:
        """Facts about `sql`, parsed once per (dialect, fingerprint)."""
        fp = fingerprint(sql, dialect)
        key = (dialect, fp)
        cached = self._analyses.get(key)
        if cached is not None:
            return cached
        try:
            result = _analyse(sql, dialect, fp)
        except Exception as err:  # a bug in the analyser must not let the statement through
            return Analysis(
                fingerprint=fp,
                dialect=dialect,
                statements=(StatementFacts(operation="unknown", operations=("unknown",), parse_status="error"),),
                parse_status="error",
                error=f"analysis failed: {type(err).__name__}: {err}",
            )
        if not fp.startswith(RAW_PREFIX):
            _store(self._analyses, key, result, self._cache_size)
        return result

    # ------------------------------------------------------------------------------- decide

    def decide(
        self,
        analysis: Analysis,
        identity: Identity,
        target: TargetInfo,
        *,
        schema: str = "",
        sql: str | None = None,
        estimates: Mapping[int, int | None] | None = None,
        resolution: Resolution | None = None,
    ) -> Decision:
        """The policy's decision on a request (cached; see the module docstring). `schema` is the
        session's current database (MySQL `USE`): unqualified table names are qualified with it
        before rules match, so a rule on `shop.orders` also catches `orders` after `USE shop`.
        `resolution` (PostgreSQL, `policy.searchpath.resolve`) replaces each unqualified name of
        each statement by the tables it may be: deny and review rules match when any does, allow
        rules only when all are covered.
        `sql` is the request text: literal-dependent facts (an always-true WHERE such as `1=1`)
        are judged on it when the policy asks for them; without it they count as true (fail
        closed). `estimates` maps statement indices to the rows EXPLAIN estimates they affect
        (None: no estimate) when a previous decision was `pending`; such decisions are not cached."""
        if self._uses_where_true and any(st.where_trivial == "literals" for st in analysis.statements):
            analysis = self._resolve_literals(analysis, sql)
        key = (
            schema,
            analysis.fingerprint,
            analysis.dialect,
            identity.subject,
            identity.issuer,
            identity.groups,
            identity.is_agent,
            identity.actor,
            target.name,
            target.environment,
            self._version,
            identity.reason if self._uses_reason else None,
            int(self._clock() // 60) if self._timed else None,
            tuple(st.where_trivial for st in analysis.statements) if self._uses_where_true else None,
            resolution,
        )
        if estimates is None:
            cached = self._decisions.get(key)
            if cached is not None:
                return cached
        if resolution:
            analysis = resolved(analysis, resolution)
        elif schema or analysis.dialect == "mysql":
            analysis = qualified(analysis, schema.lower())
        decision = self._decide(analysis, identity, target, estimates)
        if estimates is None and not analysis.fingerprint.startswith(RAW_PREFIX):
            _store(self._decisions, key, decision, self._cache_size)
        return decision

    def _resolve_literals(self, analysis: Analysis, sql: str | None) -> Analysis:
        """The analysis with each "literals" where_trivial judged on the text's own literals:
        "always" or "". Texts are analysed again with their literals (cached per text); when that
        cannot be lined up with the shape's analysis, every such WHERE counts as always true."""
        resolved: tuple[str, ...] | None = None
        if sql is not None:
            key = (analysis.dialect, sql)
            resolved = self._literal_facts.get(key)
            if resolved is None:
                try:
                    text = _analyse(sql, analysis.dialect, analysis.fingerprint, keep_literals=True)
                    if len(text.statements) == len(analysis.statements):
                        resolved = tuple(st.where_trivial for st in text.statements)
                except Exception:  # fail closed below
                    resolved = None
                if resolved is not None:
                    _store(self._literal_facts, key, resolved, self._cache_size)
        statements = []
        for i, st in enumerate(analysis.statements):
            if st.where_trivial == "literals":
                value = "always" if resolved is None or resolved[i] != "" else ""
                st = msgspec.structs.replace(st, where_trivial=value)
            statements.append(st)
        return msgspec.structs.replace(analysis, statements=tuple(statements))

    @property
    def guardrails(self) -> tuple[ActiveGuardrail, ...]:
        return self._guardrails

    def _active_guardrails(self, environment: str) -> tuple[ActiveGuardrail, ...]:
        active = self._guardrails_by_env.get(environment)
        if active is None:
            active = tuple(g for g in self._guardrails if g.applies_to(environment))
            if len(self._guardrails_by_env) < self._cache_size:
                self._guardrails_by_env[environment] = active
        return active

    def _environment(self, name: str) -> EnvironmentPolicy:
        return self._environments.get(name, self._unknown_env)

    def _decide(
        self,
        analysis: Analysis,
        identity: Identity,
        target: TargetInfo,
        estimates: Mapping[int, int | None] | None,
    ) -> Decision:
        env = self._environment(target.environment)
        default_action: Action = env.default_action or (
            "deny" if target.environment in PRODUCTION_ENVIRONMENTS else "allow"
        )
        allow_unparsed = env.allow_unparsed
        if allow_unparsed is None:
            allow_unparsed = target.environment in DEV_ENVIRONMENTS
        count = len(analysis.statements)
        now = self._clock()
        first_review: Decision | None = None
        # The approval requirement of every review that matched (all must be met).
        reviews: list[ApprovalRule] = []
        allowed_by: list[str] = []
        allowed_facts: list[str] = []
        pending: list[int] = []
        guardrails = self._active_guardrails(target.environment)
        for g in guardrails:
            why = g.check_request(analysis)
            if why is None:
                continue
            facts = (f"guardrail={g.id}", f"environment={target.environment}")
            if g.config.action == "deny":
                return Decision(action="deny", rule_id=g.id, message=f'request refused by guardrail "{g.id}": {why}', facts=facts)
            reviews.append(effective_approval(g.config.approval, g.config.approvers))
            if first_review is None:
                first_review = Decision(
                    action="review", rule_id=g.id, message=f'needs approval (guardrail "{g.id}"{_by(g.config.approvers)}): {why}', facts=facts
                )
        for index, st in enumerate(analysis.statements):
            which = "statement" if count == 1 else f"statement {index + 1} of {count}"
            if st.operation in ("prepare", "execute") and st.parse_status != "ok":
                # SQL-level dynamic SQL (PREPARE ... FROM / AS, EXECUTE [IMMEDIATE]) hides the
                # statement it runs from analysis: refused in every environment (fail closed).
                return Decision(
                    action="deny",
                    rule_id=DYNAMIC_SQL_RULE,
                    message=f"{which} refused: dynamic SQL ({st.operation.upper()}) hides the statement "
                    "it runs from policy; send the statement itself",
                    statement_index=index,
                    facts=(f"operation={st.operation}", "parse_status=" + st.parse_status),
                )
            runs_sql = SQL_RUNNING_FUNCTIONS.intersection(st.functions) if st.functions else None
            if runs_sql:
                # Functions that run SQL given as text (or dump whole tables, schemas, databases)
                # hide what they read from the table rules: refused in every environment.
                name = min(runs_sql)
                return Decision(
                    action="deny",
                    rule_id=DYNAMIC_SQL_RULE,
                    message=f"{which} refused: {name}() runs SQL the policy cannot see (dynamic SQL); "
                    "send the statement itself",
                    statement_index=index,
                    facts=(f"function={name}",),
                )
            has_estimate = estimates is not None and index in estimates
            estimate = estimates.get(index) if estimates is not None else None
            guard_review: Decision | None = None
            waiting = False
            for g in guardrails:
                if g.estimates is not None:
                    if not g.estimates(st):
                        continue
                    if not has_estimate:
                        waiting = True
                        continue
                    why = g.check_rows(st, estimate)
                    facts: tuple[str, ...] = (f"guardrail={g.id}", f"estimated_rows={'unknown' if estimate is None else estimate}")
                else:
                    why = g.check(st)
                    facts = (f"guardrail={g.id}", *_statement_facts(st))
                if why is None:
                    continue
                if g.config.action == "deny":
                    return Decision(
                        action="deny",
                        rule_id=g.id,
                        message=f'{which} refused by guardrail "{g.id}": {why}',
                        statement_index=index,
                        facts=facts,
                    )
                reviews.append(effective_approval(g.config.approval, g.config.approvers))
                if guard_review is None:
                    guard_review = Decision(
                        action="review",
                        rule_id=g.id,
                        message=f'needs approval (guardrail "{g.id}"{_by(g.config.approvers)}): {why}',
                        statement_index=index,
                        facts=facts,
                    )
            if st.parse_status != "ok" and not allow_unparsed:
                why = "sqlglot could not parse the statement"
                if st.parse_status == "unparsed":
                    why += f" (no support for this {st.operation.upper()} syntax)"
                elif analysis.error:
                    why += f" ({analysis.error})"
                return Decision(
                    action="deny",
                    rule_id=UNPARSEABLE_RULE,
                    message=(
                        f'{which} refused by rule "{UNPARSEABLE_RULE}": {why}; unparsed statements '
                        f'are not allowed in environment "{target.environment}"'
                    ),
                    statement_index=index,
                    facts=(f"parse_status={st.parse_status}", f"environment={target.environment}"),
                )
            ctx = _Context(count, now, estimate, has_estimate)
            action: Action
            matched: tuple[str, ...] | None = None
            rule: _CompiledRule | None = None
            for candidate in self._rules:
                matched = candidate.match(st, identity, target, ctx)
                if matched is not None:
                    rule = candidate
                    break
            if matched is PENDING:
                waiting = True
            if waiting:
                pending.append(index)
                continue
            if rule is None or matched is None:
                action, rule_id = default_action, DEFAULT_RULE
                sentence = (
                    f"no rule allows {_ops_text(st.operations or (st.operation,))} and environment "
                    f'"{target.environment}" denies what no rule allows'
                )
                matched = ("no rule matched", f"environment={target.environment}", f"default={default_action}")
            else:
                action, rule_id, sentence = rule.rule.action, rule.rule.id, rule.sentence
            if action == "deny":
                return Decision(
                    action="deny",
                    rule_id=rule_id,
                    message=f'{which} refused by rule "{rule_id}": {sentence}',
                    statement_index=index,
                    facts=matched,
                )
            if guard_review is not None:  # a guardrail's review is not lifted by an allow rule
                if first_review is None:
                    first_review = guard_review
                continue
            if action == "review":
                assert rule is not None
                reviews.append(effective_approval(rule.rule.approval, rule.rule.approvers))
                if first_review is None:
                    suffix = f": {rule.rule.message}" if rule.rule.message else ""
                    first_review = Decision(
                        action="review",
                        rule_id=rule_id,
                        message=f'needs approval (rule "{rule_id}"{_by(rule.rule.approvers)}){suffix}',
                        statement_index=index,
                        facts=matched,
                    )
                continue
            allowed_by.append(rule_id)
            allowed_facts.extend(matched)
        if pending:
            return Decision(
                action="deny",
                rule_id=ESTIMATE_RULE,
                message="the decision needs an estimate of the rows the statement changes",
                statement_index=pending[0],
                pending=tuple(pending),
            )
        if first_review is not None:
            return msgspec.structs.replace(first_review, approvals=tuple(dict.fromkeys(reviews)))
        return Decision(
            action="allow", rule_id=",".join(dict.fromkeys(allowed_by)), facts=tuple(dict.fromkeys(allowed_facts))
        )


def _by(approvers: Sequence[str]) -> str:
    return f", by {' or '.join(approvers)}" if approvers else ""


def _statement_facts(st: StatementFacts) -> tuple[str, ...]:
    """The facts a guardrail reads, for the explanation of its refusal."""
    facts = ["operation=" + ",".join(st.operations or (st.operation,))]
    if st.detail or st.keyword_detail:
        facts.append(f"object={st.detail or st.keyword_detail}")
    tables = (*st.tables_written, *st.tables_read)
    if tables:
        facts.append("table=" + ",".join(dict.fromkeys(tables)))
    if st.has_where is not None:
        facts.append(f"has_where={str(st.has_where).lower()}")
    if st.where_trivial:
        facts.append("where_always_true=true")
    if st.parse_status != "ok":
        facts.append(f"parse_status={st.parse_status}")
    return tuple(facts)


def resolved(analysis: Analysis, resolution: Resolution) -> Analysis:
    """The analysis with each unqualified table name (in tables and in column facts) replaced by
    its candidates, statement by statement."""
    statements = []
    for st, names in zip(analysis.statements, resolution):
        if names:
            table_map = dict(names)

            def expand(items: tuple[str, ...], m: dict[str, tuple[str, ...]] = table_map) -> tuple[str, ...]:
                return tuple(dict.fromkeys(c for n in items for c in m.get(n, (n,))))

            def expand_columns(cols: tuple[str, ...], m: dict[str, tuple[str, ...]] = table_map) -> tuple[str, ...]:
                out: list[str] = []
                for col in cols:
                    table, dot, name = col.rpartition(".")
                    out.extend(f"{c}.{name}" for c in m.get(table, (table,))) if dot and table in m else out.append(col)
                return tuple(dict.fromkeys(out))

            st = msgspec.structs.replace(
                st, tables_read=expand(st.tables_read), tables_written=expand(st.tables_written),
                columns=expand_columns(st.columns),
            )
        statements.append(st)
    statements.extend(analysis.statements[len(statements):])
    return msgspec.structs.replace(analysis, statements=tuple(statements), tables=())


def qualified(analysis: Analysis, schema: str) -> Analysis:
    """The analysis with unqualified table names prefixed by the database in effect: `schema`,
    then whatever a USE statement earlier in the same request switched to."""
    statements = []
    current = schema
    for st in analysis.statements:
        if st.operation == "use" and st.detail:
            current = st.detail.lower()
        if current:
            def q(names: tuple[str, ...], db: str = current) -> tuple[str, ...]:
                return tuple(n if "." in n else f"{db}.{n}" for n in names)

            st = msgspec.structs.replace(st, tables_read=q(st.tables_read), tables_written=q(st.tables_written))
        statements.append(st)
    return msgspec.structs.replace(analysis, statements=tuple(statements))
