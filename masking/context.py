"""The masking context of one request: what the adapters need to rewrite its result rows.

How it works: `plan_request(sql, analysis, catalogue, masks, schema, settings)` is called by the
gateway (`Gatekeeper.mask_context`) for every request of an identity under masking, after the
policy allowed it, and is cached per statement shape. It decides:

1. Refusals that protect masked data (a sentence naming the rule, for the client): several
   statements in one request touching a masked table (send them one at a time: each result set
   needs its own plan); a statement the analyser could not parse that may touch a masked table;
   COPY ... TO STDOUT of a masked table (COPY rows are not rewritten); and whatever
   `masking.plan.build_plan` refuses (predicates, joins, grouping or ordering on masked columns,
   whole-row references, unresolvable lineage), unless `mask_all_on_doubt` asks to mask every
   output column instead.
2. The `MaskPlan`: per output column, the mask to apply (lineage through aliases, expressions,
   CTEs, subqueries, views, UNION, `*`).
3. `redact_errors`: the statement touches a masked table, so upstream error texts (which can
   quote values: `invalid input syntax for type integer: "alice@example.com"`) are replaced.

`MaskContext` adds what is per identity and catalogue rather than per statement: the wire
cross-check maps (`IdentityMasks.wire_specs`) and the content classifiers.
"""

from __future__ import annotations

from sqlward.policy import rule_ids

import re
from typing import Final

import msgspec

from sqlward.masking.lineage import lineage
from sqlward.masking.model import Catalogue, MaskSpec
from sqlward.masking.plan import MaskPlan, build_plan
from sqlward.masking.policy import IdentityMasks, MaskingSettings
from sqlward.policy.sqltext import significant, tokenize

__all__ = ["MaskContext", "RequestMask", "plan_request"]

_NO_ROWS: Final = frozenset(
    {"begin", "commit", "rollback", "set", "use", "savepoint", "release", "listen", "unlisten", "notify",
     "deallocate", "discard", "reset", "checkpoint", "change user", "create", "alter", "drop", "grant",
     "revoke", "truncate", "comment", "analyze", "kill", "prepare"}
)
# Statements that store a query or a routine body for later (CREATE VIEW / FUNCTION / RULE /
# TRIGGER ..., PREPARE, ALTER ... USING): analysed even though they return no rows.
_STORES: Final = frozenset({"create", "prepare", "alter"})
# What an unparsed statement may do and still be answered with every column masked under
# mask_all_on_doubt: read. Anything else (DO, CALL, INSERT, REPLACE, SET, HANDLER, ...) may run
# code or store values where masking the rows cannot follow, and is refused.
_MASKABLE_UNPARSED: Final = frozenset({"select", "unknown", "execute", "show", "explain"})
MASK_RULE_PREFIX: Final = "masking"
_RULE_IN_SENTENCE: Final = re.compile(r'masking rule "([^"]+)"')


class RequestMask(msgspec.Struct, frozen=True):
    """The per-shape part of a request's masking (cached)."""

    plan: MaskPlan = MaskPlan()
    refusal: str = ""
    rule_id: str = ""
    redact_errors: bool = False
    schema_change: bool = False  # DDL: the catalogue must be read again afterwards
    # False: the decision depends on the text's string literals (a routine body, a prepared
    # text), which the statement shape (fingerprint) leaves out: do not reuse it for another
    # text of the same shape.
    cacheable: bool = True


class MaskContext(msgspec.Struct, frozen=True):
    """Everything an adapter needs to mask the results of one request."""

    request: RequestMask
    by_oid: dict[tuple[int, int], MaskSpec] = {}
    by_name: dict[tuple[str, str], MaskSpec] = {}
    classifiers: frozenset[str] = frozenset()
    classifier_spec: MaskSpec | None = None
    hash_key: bytes = b""

    @property
    def refusal(self) -> str:
        return self.request.refusal


def _refuse(rule_id: str, sentence: str) -> RequestMask:
    return RequestMask(refusal=sentence, rule_id=rule_id or MASK_RULE_PREFIX, redact_errors=True)


def _first_rule(masks: IdentityMasks) -> str:
    return masks.rules[0].id if masks.rules else MASK_RULE_PREFIX


def _table_rule(masks: IdentityMasks, catalogue: Catalogue, table: str, schema: str) -> str | None:
    """The id of the first rule masking a column of `table` (None: none, or not catalogued)."""
    info = catalogue.lookup(table, schema)
    if info is None:
        return None
    for col in info.columns:
        spec = masks.spec_for(f"{info.name}.{col.name}")
        if spec is not None:
            return spec.rule_id
    return None


def _plan(
    sql: str, dialect: str, catalogue: Catalogue, masks: IdentityMasks, schema: str, settings: MaskingSettings
) -> MaskPlan:
    return build_plan(
        lineage(sql, dialect, catalogue, default_schema=schema),
        masks.spec_for,
        masked_tables=lambda t: masks.table_masked(t, catalogue, schema),
        mask_all_on_doubt=settings.mask_all_on_doubt,
        table_rule=lambda t: _table_rule(masks, catalogue, t, schema),
    )


def _plan_refusal(plan: MaskPlan, masks: IdentityMasks, schema_change: bool) -> RequestMask:
    """The refusal of a plan, naming a rule (the identity's first when the plan names none)."""
    named = _RULE_IN_SENTENCE.search(plan.refusal)
    rule = named.group(1) if named else _first_rule(masks)
    refusal = plan.refusal
    if named is None and refusal.startswith(f"{MASK_RULE_PREFIX}:"):
        refusal = f'masking rule "{rule}"' + refusal[len(MASK_RULE_PREFIX):]
    return RequestMask(plan=plan, refusal=refusal, rule_id=rule, redact_errors=True, schema_change=schema_change)


def _masked_names(masks: IdentityMasks, catalogue: Catalogue, tables: list[str], schema: str) -> frozenset[str]:
    """The bare names of the masked columns of `tables` (of every catalogued table when the
    tables are not known), lower case."""
    infos = [catalogue.lookup(t, schema) for t in tables] if tables else list(catalogue.tables.values())
    names: set[str] = set()
    for info in infos:
        if info is not None:
            names.update(c.name for c in info.columns if masks.spec_for(f"{info.name}.{c.name}") is not None)
    return frozenset(names)


# Words of clauses that filter, join, order, deduplicate or decide: the outcome of an unparsed
# statement holding one may depend on a masked value however its columns are masked.
_DECIDING_WORDS: Final = frozenset(
    "INTO WHERE HAVING ON USING JOIN ORDER GROUP DISTINCT UNION INTERSECT EXCEPT MINUS LIMIT OFFSET FETCH "
    "CASE IF IIF FILTER WINDOW OVER QUALIFY".split()
)


def _unparsed_may_leak(sql: str, dialect: str, ops: set[str], masked_names: frozenset[str]) -> bool:
    """Masking every output column of an unparsed statement is not enough when it may store or
    send values, or decide something by a masked value (its clauses are not known): an
    operation besides reading, `INTO` (`SELECT ... INTO @v / OUTFILE / DUMPFILE / table`), `:=`,
    MySQL HANDLER (reads by index value), a clause that filters, joins, orders, deduplicates or
    decides (`_DECIDING_WORDS`), or a masked column named anywhere in it."""
    if not ops <= _MASKABLE_UNPARSED:
        return True
    try:
        tokens = significant(tokenize(sql, dialect))
    except Exception:  # unlexable: fail closed
        return True
    if tokens and tokens[0].kind == "word" and tokens[0].text.upper() == "HANDLER":
        return True
    for t in tokens:
        if t.kind == "op" and ":=" in t.text:
            return True
        if t.kind in ("word", "qid"):
            word = t.text.strip('"`').lower()
            if t.kind == "word" and word.upper() in _DECIDING_WORDS or word in masked_names:
                return True
    return False


def _lineage_refusal(
    sql: str, dialect: str, catalogue: Catalogue, masks: IdentityMasks, schema: str, settings: MaskingSettings
) -> RequestMask | None:
    plan = _plan(sql, dialect, catalogue, masks, schema, settings)
    return _plan_refusal(plan, masks, False) if plan.refusal else None


def _plan_request(
    sql: str,
    analysis: "object",
    catalogue: Catalogue,
    masks: IdentityMasks,
    schema: str,
    settings: MaskingSettings,
) -> RequestMask:
    from sqlward.policy.model import Analysis

    assert isinstance(analysis, Analysis)
    dialect = analysis.dialect
    ops = set(analysis.operations)
    schema_change = bool(ops & {"create", "alter", "drop"}) or any(
        st.operation == "rename" for st in analysis.statements
    )
    touched = [t for t in analysis.tables if masks.table_masked(t, catalogue, schema)]
    stores = bool(ops & _STORES) and bool(masks.rules)
    if analysis.parse_status != "ok" and not stores:
        if masks.rules and (touched or not analysis.tables):
            if not ops or ops <= _NO_ROWS:
                return RequestMask(redact_errors=True, schema_change=schema_change)
            if settings.mask_all_on_doubt and not _unparsed_may_leak(sql, dialect, ops, _masked_names(masks, catalogue, touched, schema)):
                return RequestMask(plan=MaskPlan(mask_rest=MaskSpec(function="redact", rule_id=rule_ids.MASK_ON_DOUBT)), redact_errors=True)
            return _refuse(
                _first_rule(masks),
                f'masking rule "{_first_rule(masks)}": this statement could not be analysed, and masking applies '
                "to you on this target; statements the analyser cannot read are refused",
            )
        return RequestMask(schema_change=schema_change)
    if len(analysis.statements) > 1:
        if touched:
            return _refuse(
                _first_rule(masks),
                f'masking rule "{_first_rule(masks)}": {touched[0]} has masked columns; send statements that read it '
                "one at a time (each result needs its own mask plan)",
            )
        if stores:  # a definition among them: its body is judged as a single statement's would be
            refused = _lineage_refusal(sql, dialect, catalogue, masks, schema, settings)
            if refused is not None:
                return refused
        return RequestMask(schema_change=schema_change)
    st = analysis.statements[0]
    if st.operation == "copy" and touched:
        return _refuse(
            _first_rule(masks),
            f'masking rule "{_first_rule(masks)}": COPY of {touched[0]} is refused because it has masked columns '
            "(COPY rows are not masked); use SELECT",
        )
    if (not ops or ops <= _NO_ROWS) and not stores:
        return RequestMask(redact_errors=bool(touched), schema_change=schema_change)
    plan = _plan(sql, dialect, catalogue, masks, schema, settings)
    if plan.refusal:
        return _plan_refusal(plan, masks, schema_change)
    return RequestMask(
        plan=plan,
        redact_errors=bool(touched) or bool(plan.masked_sources) or plan.mask_rest is not None,
        schema_change=schema_change,
    )


def plan_request(
    sql: str,
    analysis: "object",
    catalogue: Catalogue,
    masks: IdentityMasks,
    schema: str,
    settings: MaskingSettings,
) -> RequestMask:
    """The masking of one request for an identity under masking (see the module docstring).
    A definition's decision (CREATE / ALTER / PREPARE) depends on its string literals (a
    routine body, a prepared text): it is marked `cacheable=False`."""
    request = _plan_request(sql, analysis, catalogue, masks, schema, settings)
    from sqlward.policy.model import Analysis

    assert isinstance(analysis, Analysis)
    if set(analysis.operations) & _STORES:
        request = msgspec.structs.replace(request, cacheable=False)
    return request
