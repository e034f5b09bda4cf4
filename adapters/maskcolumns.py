"""Per-column maskers of one result set, from a request's `MaskContext` and the columns the
server described (shared by the PostgreSQL and MySQL row rewriters).

How it works: `column_maskers(ctx, columns, dialect)` takes, for each output column, its name,
its type kind (from the wire type) and the mask its wire origin calls for (PostgreSQL table OID
+ attribute number, MySQL org_table / org_name, looked up by the adapter in `ctx.by_oid` /
`ctx.by_name`), and returns one masker per column (None: the column passes untouched):

1. the plan's mask for that position (lineage); a plan that traced a different number of
   columns than the server sent is doubt, and every column is redacted (fail closed);
2. else the wire origin's mask (the cross-check: a column read straight from a masked column is
   masked even if the analysis missed it);
3. else, when content classifiers are enabled for the identity, a scanner on text and JSON
   columns that redacts a value in which a classifier finds something (email, card, ...).

Each masker counts the values it masked, for the audit trail (`ColumnMasks.counts`); values are
never recorded.
"""

from __future__ import annotations

from sqlward.policy import rule_ids

from collections.abc import Callable, Sequence

from sqlward.masking.classifiers import ContentScanner
from sqlward.masking.context import MaskContext
from sqlward.masking.functions import make_masker, redaction
from sqlward.masking.model import MaskSpec, TypeKind

__all__ = ["Column", "ColumnMasks", "column_maskers"]

ValueMasker = Callable[[bytes | None], bytes | None]
_SCANNED: frozenset[str] = frozenset({"text", "json"})
_DOUBT = MaskSpec(function="redact", rule_id=rule_ids.MASK_ON_DOUBT)


class Column:
    __slots__ = ("name", "kind", "wire_spec")

    def __init__(self, name: str, kind: TypeKind, wire_spec: MaskSpec | None) -> None:
        self.name = name
        self.kind = kind
        self.wire_spec = wire_spec


class ColumnMasks:
    """The maskers of one result set and how many values each masked."""

    __slots__ = ("maskers", "labels", "counts", "raw", "counted")

    def __init__(
        self, maskers: list[ValueMasker | None], labels: list[str], counts: list[int],
        raw: list[ValueMasker | None] | None = None, counted: list[bool] | None = None,
    ) -> None:
        self.maskers = maskers  # counting maskers (each call on a value counts it)
        self.labels = labels
        self.counts = counts
        # The same maskers without the counting wrapper where the row rewriter counts itself
        # (`counted[i]`); classifier maskers count only hits and stay wrapped.
        self.raw = raw if raw is not None else maskers
        self.counted = counted if counted is not None else [False] * len(maskers)

    @property
    def active(self) -> bool:
        return any(m is not None for m in self.maskers)

    def add_counts(self, into: dict[str, int]) -> None:
        for label, n in zip(self.labels, self.counts):
            if label and n:
                into[label] = into.get(label, 0) + n


def _safe_masker(spec: MaskSpec, kind: TypeKind, key: bytes, dialect: str) -> ValueMasker:
    try:
        return make_masker(spec, kind, key, dialect)
    except ValueError:  # e.g. hash without a key: never pass the value through
        return make_masker(MaskSpec(function="redact", rule_id=spec.rule_id), kind, key, dialect)


def _counting(f: ValueMasker, counts: list[int], i: int) -> ValueMasker:
    def mask(value: bytes | None) -> bytes | None:
        if value is None:
            return None
        counts[i] += 1
        return f(value)

    return mask


def _classifying(scanner: ContentScanner, kind: TypeKind, dialect: str, counts: list[int], i: int) -> ValueMasker:
    def mask(value: bytes | None) -> bytes | None:
        if value is None or scanner.find(value) is None:
            return value
        counts[i] += 1
        return redaction(kind, dialect, value)

    return mask


def column_maskers(ctx: MaskContext, columns: Sequence[Column], dialect: str) -> ColumnMasks:
    plan = ctx.request.plan
    planned = plan.columns
    n = len(columns)
    doubt = bool(planned) and len(planned) != n and any(s is not None for s in planned)
    scanner = ContentScanner(ctx.classifiers) if ctx.classifiers else None
    counts = [0] * n
    maskers: list[ValueMasker | None] = []
    raw: list[ValueMasker | None] = []
    counted: list[bool] = []
    labels: list[str] = []
    for i, col in enumerate(columns):
        if doubt:
            spec: MaskSpec | None = _DOUBT
        else:
            spec = planned[i] if i < len(planned) else plan.mask_rest
            if spec is None:
                spec = col.wire_spec
        if spec is not None:
            f = _safe_masker(spec, col.kind, ctx.hash_key, dialect)
            maskers.append(_counting(f, counts, i))
            raw.append(f)
            counted.append(True)
            labels.append(f"{col.name} ({spec.rule_id or 'mask'}: {spec.function})")
        elif scanner is not None and col.kind in _SCANNED:
            f = _classifying(scanner, col.kind, dialect, counts, i)
            maskers.append(f)
            raw.append(f)
            counted.append(False)
            labels.append(f"{col.name} (classifiers)")
        else:
            maskers.append(None)
            raw.append(None)
            counted.append(False)
            labels.append("")
    return ColumnMasks(maskers, labels, counts, raw, counted)
