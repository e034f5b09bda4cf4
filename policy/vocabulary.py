"""The enumerated values of the policy language, derived from the code that implements them.

A value a config or policy file names must be one the gateway can produce or apply, or a rule
could silently never match because of a spelling (`operations = ["dorp"]`). Nothing here is a
hand-copied second list:

- `operations()`: every operation name `policy.analysis` can put into `StatementFacts.operation`
  / `.operations`: the values of its keyword and AST tables (`_KEYWORD_OPS`, `_TOP_OPS`,
  `_NESTED_OPS`), of the fixed shapes of `policy.sqltext` (`_KNOWN_SHAPES`), and what the shape
  recognisers and the fallbacks return, asked of those functions themselves (PostgreSQL SHOW,
  MySQL CHANGE USER, the EXPLAIN / PREPARE wrappers, "other" for an unknown first keyword,
  "unknown" for text that does not parse). Computed on first use (it imports sqlglot through the
  analysis), then cached. tests/unit/test_config_enums.py analyses a corpus in both dialects and
  checks every operation it sees is listed.
- `guardrail_ids()` / `guardrail_keys(gid)`: the guardrail catalogue (`policy.guardrails`) and
  the keys a `[guardrails.<id>]` table takes (the common ones plus that guardrail's options).
- `DAYS` and the `Action` literal come from `policy.rules` / `policy.model`; the masking
  functions, classifiers and date parts are the Literal types of `masking.model`, which
  `masking.functions` and `masking.classifiers` implement (checked by the same tests).
- `one_of(value, valid)`: the "expected one of: ..." text of an error, close matches first
  (difflib), so `dorp` reads "expected one of: drop, ...".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from functools import cache

__all__ = ["guardrail_ids", "guardrail_keys", "one_of", "operations"]


def one_of(value: object, valid: Iterable[str]) -> str:
    """'expected one of: a, b, ...' with the values closest to `value` first, then the others in
    their own order."""
    values = list(dict.fromkeys(valid))
    close: list[str] = []
    if isinstance(value, str) and value:
        text = value.lower()
        close = difflib.get_close_matches(text, values, n=3, cutoff=0.6)
        # A value inside what was written, or the other way round: "credit_card" -> card.
        close += [v for v in values if v not in close and len(v) > 2 and (v in text or text in v)]
    ordered = close + [v for v in values if v not in close]
    return "expected one of: " + ", ".join(ordered)


@cache
def operations() -> frozenset[str]:
    """Every operation name the analysis can emit (see the module docstring)."""
    from sqlward.policy import analysis, sqltext

    ops: set[str] = set()
    ops.update(analysis._KEYWORD_OPS.values())
    ops.update(analysis._TOP_OPS.values())
    ops.update(analysis._NESTED_OPS.values())
    ops.update(op for _, op, _ in sqltext._KNOWN_SHAPES)
    # Shapes recognised outside the tables, and the fallbacks, asked of the code that emits them.
    for text, dialect in (("SHOW x", "postgres"), ("CHANGE USER", "mysql")):
        shape = sqltext.known_shape(sqltext.tokenize(text, dialect), dialect)
        if shape is not None:
            ops.add(shape[0])
    for text in ("EXPLAIN SELECT 1", "PREPARE p AS SELECT 1"):
        wrapped = sqltext.unwrap(sqltext.tokenize(text, "postgres"), "postgres")
        if wrapped is not None:
            ops.add(wrapped[0])
    ops.add(analysis._keyword_op(sqltext.tokenize("FROBNICATE", "postgres"))[0])  # unknown first keyword
    ops.update(analysis._keyword_facts(sqltext.tokenize("FROBNICATE", "postgres"), "error").operations)
    return frozenset(ops)


def guardrail_ids() -> tuple[str, ...]:
    """The ids of the guardrail catalogue, in catalogue order."""
    from sqlward.policy.guardrails import CATALOGUE

    return tuple(CATALOGUE)


def guardrail_keys(gid: str) -> tuple[str, ...]:
    """The keys a `[guardrails.<gid>]` table takes: the common ones, then the guardrail's options."""
    from sqlward.policy.guardrails import COMMON_KEYS, CATALOGUE

    guardrail = CATALOGUE.get(gid)
    return COMMON_KEYS + (guardrail.options if guardrail is not None else ())
