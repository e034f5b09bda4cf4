"""The decision engine: ordered rules over statement facts, with two caches.

How it works (DESIGN.md sections 3, 5 and 9):

- `Engine.analyse(sql, dialect)` computes `policy.fingerprint.fingerprint` (a few µs, no parse)
  and looks the (dialect, fingerprint) pair up in the analysis cache; only a new statement shape
  reaches `policy.analysis.analyse` (sqlglot). The cached `Analysis` is shared by every text of
  that shape, which is sound because it holds no literal values. Texts the lexer could not
  classify (fingerprints starting with `RAW_PREFIX`) are analysed every time and not cached, so
  junk cannot churn the cache.
- `Engine.decide(analysis, identity, target)` is cached by (fingerprint, dialect, identity
  subject, groups, actor, target name, environment, policy version). A new policy is a new
  `Engine`, so a reload starts with empty caches.
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
   globs, case-sensitive), groups (any overlap), actors (globs over the delegation chain: any
   actor matches), agents (true: only agents or delegated identities; false: only people),
   has_where.
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
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, TypeVar

from policy.analysis import analyse as _analyse
from policy.guardrails import ActiveGuardrail, GuardrailConfig, compile_guardrails
from policy.fingerprint import RAW_PREFIX, fingerprint
from policy.model import Action, Analysis, Decision, Identity, StatementFacts, TargetInfo
from policy.rules import EnvironmentPolicy, Rule

__all__ = ["DEV_ENVIRONMENTS", "Engine"]

DEV_ENVIRONMENTS: Final = frozenset({"development", "dev", "local", "test"})
UNPARSEABLE_RULE: Final = "unparseable"
DEFAULT_RULE: Final = "default"
DYNAMIC_SQL_RULE: Final = "dynamic-sql"

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


class _CompiledRule:
    """A `Rule` with its criteria pre-processed for matching."""

    __slots__ = (
        "rule",
        "ops",
        "tables",
        "tables_bare",
        "environments",
        "targets",
        "identities",
        "groups",
        "actors",
        "agents",
        "cover_all",
        "sentence",
    )

    def __init__(self, rule: Rule, strict_allow: bool) -> None:
        self.rule = rule
        self.ops = frozenset(op.lower() for op in rule.operations)
        # Table globs: all patterns against the full name; dot-less ones also against the bare name.
        self.tables = _glob(rule.tables, ignore_case=True)
        self.tables_bare = _glob([p for p in rule.tables if "." not in p], ignore_case=True)
        self.environments = frozenset(rule.environments)
        self.targets = frozenset(rule.targets)
        self.identities = _glob(rule.identities, ignore_case=False)
        self.groups = frozenset(rule.groups)
        self.actors = _glob(rule.actors, ignore_case=False)
        self.agents = rule.agents
        self.cover_all = strict_allow and rule.action == "allow"
        self.sentence = rule.message or _describe(rule)

    def _table_matches(self, name: str) -> bool:
        assert self.tables is not None
        if self.tables.match(name):
            return True
        if self.tables_bare is not None and "." in name:
            return self.tables_bare.match(name.rsplit(".", 1)[1]) is not None
        return False

    def matches(self, st: StatementFacts, identity: Identity, target: TargetInfo) -> bool:
        if self.environments and target.environment not in self.environments:
            return False
        if self.targets and target.name not in self.targets:
            return False
        if self.identities is not None and not self.identities.match(identity.subject):
            return False
        if self.groups and self.groups.isdisjoint(identity.groups):
            return False
        if self.actors is not None and not any(self.actors.match(a) for a in identity.actor):
            return False
        if self.agents is not None and (identity.is_agent or bool(identity.actor)) is not self.agents:
            return False
        if self.rule.has_where is not None and st.has_where is not self.rule.has_where:
            return False
        if self.ops:
            ops = st.operations or (st.operation,)
            if self.cover_all:
                if not self.ops.issuperset(ops):
                    return False
            elif self.ops.isdisjoint(ops):
                return False
        if self.tables is not None:
            names = (*st.tables_read, *st.tables_written)
            if self.cover_all:
                if not names or not all(self._table_matches(n) for n in names):
                    return False
            elif not any(self._table_matches(n) for n in names):
                return False
        return True


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
        "_guardrails",
        "_guardrails_by_env",
    )

    def __init__(
        self,
        rules: Sequence[Rule],
        environments: Mapping[str, EnvironmentPolicy],
        version: int,
        cache_size: int = 10_000,
        *,
        unknown_environment: EnvironmentPolicy = EnvironmentPolicy(default_action="deny"),
        strict_allow: bool = True,
        guardrails: Mapping[str, GuardrailConfig] | None = None,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._rules = tuple(_CompiledRule(r, strict_allow) for r in rules)
        self._environments = dict(environments)
        self._version = version
        self._cache_size = cache_size
        self._unknown_env = unknown_environment
        self._analyses: dict[tuple[str, str], Analysis] = {}
        self._decisions: dict[tuple[object, ...], Decision] = {}
        self._guardrails = compile_guardrails(guardrails or {})
        self._guardrails_by_env: dict[str, tuple[ActiveGuardrail, ...]] = {}

    @property
    def version(self) -> int:
        return self._version

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(r.rule for r in self._rules)

    @property
    def environments(self) -> Mapping[str, EnvironmentPolicy]:
        return MappingProxyType(self._environments)

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
        self, analysis: Analysis, identity: Identity, target: TargetInfo, *, schema: str = ""
    ) -> Decision:
        """The policy's decision on a request (cached; see the module docstring). `schema` is the
        session's current database (MySQL `USE`): unqualified table names are qualified with it
        before rules match, so a rule on `shop.orders` also catches `orders` after `USE shop`."""
        key = (
            schema,
            analysis.fingerprint,
            analysis.dialect,
            identity.subject,
            identity.groups,
            identity.is_agent,
            identity.actor,
            target.name,
            target.environment,
            self._version,
        )
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        if schema or analysis.dialect == "mysql":
            analysis = _qualified(analysis, schema.lower())
        decision = self._decide(analysis, identity, target)
        if not analysis.fingerprint.startswith(RAW_PREFIX):
            _store(self._decisions, key, decision, self._cache_size)
        return decision

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

    def _decide(self, analysis: Analysis, identity: Identity, target: TargetInfo) -> Decision:
        env = self._environment(target.environment)
        allow_unparsed = env.allow_unparsed
        if allow_unparsed is None:
            allow_unparsed = target.environment in DEV_ENVIRONMENTS
        count = len(analysis.statements)
        first_review: Decision | None = None
        allowed_by: list[str] = []
        guardrails = self._active_guardrails(target.environment)
        for g in guardrails:
            why = g.check_request(analysis)
            if why is None:
                continue
            if g.config.action == "deny":
                return Decision(action="deny", rule_id=g.id, message=f'request refused by guardrail "{g.id}": {why}')
            if first_review is None:
                first_review = Decision(action="review", rule_id=g.id, message=f'needs approval (guardrail "{g.id}"): {why}')
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
                )
            guard_review: Decision | None = None
            for g in guardrails:
                why = g.check(st)
                if why is None:
                    continue
                if g.config.action == "deny":
                    return Decision(
                        action="deny",
                        rule_id=g.id,
                        message=f'{which} refused by guardrail "{g.id}": {why}',
                        statement_index=index,
                    )
                if guard_review is None:
                    guard_review = Decision(
                        action="review",
                        rule_id=g.id,
                        message=f'needs approval (guardrail "{g.id}"): {why}',
                        statement_index=index,
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
                )
            action: Action
            rule = next((r for r in self._rules if r.matches(st, identity, target)), None)
            if rule is None:
                action, rule_id = env.default_action, DEFAULT_RULE
                sentence = (
                    f"no rule allows {_ops_text(st.operations or (st.operation,))} and environment "
                    f'"{target.environment}" denies what no rule allows'
                )
            else:
                action, rule_id, sentence = rule.rule.action, rule.rule.id, rule.sentence
            if action == "deny":
                return Decision(
                    action="deny",
                    rule_id=rule_id,
                    message=f'{which} refused by rule "{rule_id}": {sentence}',
                    statement_index=index,
                )
            if guard_review is not None:  # a guardrail's review is not lifted by an allow rule
                if first_review is None:
                    first_review = guard_review
                continue
            if action == "review":
                if first_review is None:
                    assert rule is not None
                    suffix = f": {rule.rule.message}" if rule.rule.message else ""
                    first_review = Decision(
                        action="review",
                        rule_id=rule_id,
                        message=f'needs approval (rule "{rule_id}"){suffix}',
                        statement_index=index,
                    )
                continue
            allowed_by.append(rule_id)
        if first_review is not None:
            return first_review
        return Decision(action="allow", rule_id=",".join(dict.fromkeys(allowed_by)))


def _qualified(analysis: Analysis, schema: str) -> Analysis:
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
