"""Unit tests for adapters.maskcolumns.column_maskers: which masker each result column gets
(plan position, then wire origin, then content classifiers), fail-closed doubt, and the
masked-value counters the audit trail reads."""

from __future__ import annotations

import re

import pytest

from sqlward.adapters.maskcolumns import Column, ColumnMasks, column_maskers
from sqlward.masking.context import MaskContext, RequestMask
from sqlward.masking.model import MaskSpec
from sqlward.masking.plan import MaskPlan

REDACT = MaskSpec(function="redact", rule_id="r-redact")
NULL = MaskSpec(function="null", rule_id="r-null")
HASH = MaskSpec(function="hash", rule_id="r-hash")
PARTIAL = MaskSpec(function="partial", rule_id="r-partial", keep_first=0, keep_last=2)


def _ctx(
    columns: tuple[MaskSpec | None, ...] = (),
    *,
    mask_rest: MaskSpec | None = None,
    classifiers: frozenset[str] = frozenset(),
    hash_key: bytes = b"k",
) -> MaskContext:
    return MaskContext(
        request=RequestMask(plan=MaskPlan(columns=columns, mask_rest=mask_rest)),
        by_oid={},
        classifiers=classifiers,
        hash_key=hash_key,
    )


def _col(name: str, kind: str = "text", wire: MaskSpec | None = None) -> Column:
    return Column(name, kind, wire)  # type: ignore[arg-type]


def _apply(masks: ColumnMasks, row: list[bytes | None]) -> list[bytes | None]:
    return [v if m is None else m(v) for m, v in zip(masks.maskers, row)]


# --------------------------------------------------------------------------------------------
# Which masker


@pytest.mark.parametrize("dialect", ["postgres", "mysql"])
def test_no_masks_no_maskers(dialect: str) -> None:
    masks = column_maskers(_ctx((None, None)), [_col("a"), _col("b", "integer")], dialect)
    assert masks.maskers == [None, None]
    assert masks.raw == [None, None]
    assert masks.counted == [False, False]
    assert masks.labels == ["", ""]
    assert not masks.active


def test_plan_position_wins_over_wire_spec() -> None:
    cols = [_col("id", "integer"), _col("email", wire=REDACT)]
    masks = column_maskers(_ctx((None, NULL)), cols, "postgres")
    assert masks.active
    assert masks.maskers[0] is None
    assert masks.maskers[1] is not None
    assert masks.maskers[1](b"alice@example.com") is None  # the plan's "null", not the wire's redact
    assert masks.labels[1] == "email (r-null: null)"


def test_wire_spec_masks_column_the_plan_left_clear() -> None:
    cols = [_col("id", "integer"), _col("email", wire=REDACT), _col("note")]
    masks = column_maskers(_ctx((None, None, None)), cols, "mysql")
    assert _apply(masks, [b"7", b"alice@example.com", b"hello"]) == [b"7", b"****", b"hello"]
    assert masks.maskers[0] is None and masks.maskers[2] is None
    assert masks.labels == ["", "email (r-redact: redact)", ""]


def test_wire_spec_used_with_an_empty_plan() -> None:
    masks = column_maskers(_ctx(()), [_col("ssn", wire=PARTIAL), _col("x")], "postgres")
    assert _apply(masks, [b"123456789", b"x"]) == [b"*******89", b"x"]


@pytest.mark.parametrize("planned", [(None, REDACT), (REDACT, None, None, None)])
def test_plan_of_other_length_redacts_every_column(planned: tuple[MaskSpec | None, ...]) -> None:
    cols = [_col("id", "integer"), _col("name"), _col("born", "date")]
    masks = column_maskers(_ctx(planned), cols, "postgres")
    assert _apply(masks, [b"42", b"Alice", b"1990-05-17"]) == [b"0", b"****", b"1970-01-01"]
    assert masks.labels == [f"{c.name} (mask-on-doubt: redact)" for c in cols]
    assert masks.counted == [True, True, True]


def test_plan_of_other_length_without_any_mask_is_no_doubt() -> None:
    cols = [_col("id", "integer"), _col("name"), _col("email", wire=REDACT)]
    masks = column_maskers(_ctx((None, None)), cols, "postgres")
    assert _apply(masks, [b"42", b"Alice", b"a@b.example"]) == [b"42", b"Alice", b"****"]


def test_mask_rest_applies_past_the_plan() -> None:
    cols = [_col("id", "integer"), _col("a"), _col("b", "integer")]
    masks = column_maskers(_ctx((None,), mask_rest=REDACT), cols, "mysql")
    assert _apply(masks, [b"1", b"secret", b"99"]) == [b"1", b"****", b"0"]
    assert masks.labels == ["", "a (r-redact: redact)", "b (r-redact: redact)"]


def test_mask_rest_alone_masks_every_column() -> None:
    masks = column_maskers(_ctx((), mask_rest=REDACT), [_col("a"), _col("b", "json")], "postgres")
    assert _apply(masks, [b"x", b'{"k": 1}']) == [b"****", b'"****"']


def test_dialect_reaches_the_masking_function() -> None:
    cols = [_col("flag", "boolean")]
    assert _apply(column_maskers(_ctx((REDACT,)), cols, "postgres"), [b"t"]) == [b"f"]
    assert _apply(column_maskers(_ctx((REDACT,)), cols, "mysql"), [b"1"]) == [b"0"]


# --------------------------------------------------------------------------------------------
# Classifiers


def test_classifiers_only_scan_text_and_json_columns() -> None:
    cols = [_col("t"), _col("j", "json"), _col("n", "integer"), _col("b", "bytes"), _col("d", "date")]
    masks = column_maskers(_ctx(classifiers=frozenset({"email"})), cols, "postgres")
    assert [m is not None for m in masks.maskers] == [True, True, False, False, False]
    assert masks.labels == ["t (classifiers)", "j (classifiers)", "", "", ""]
    assert masks.counted == [False, False, False, False, False]
    assert masks.raw[0] is masks.maskers[0]  # classifier maskers count hits themselves


def test_classifier_redacts_hits_and_counts_only_hits() -> None:
    masks = column_maskers(_ctx(classifiers=frozenset({"email"})), [_col("t"), _col("j", "json")], "postgres")
    text, js = masks.maskers
    assert text is not None and js is not None
    clean = b"nothing to see"
    assert text(clean) is clean
    assert text(None) is None
    assert masks.counts == [0, 0]
    assert text(b"write to alice@example.com") == b"****"
    assert js(b'{"contact": "bob@example.org"}') == b'"****"'
    assert text(b"carol@example.net") == b"****"
    assert masks.counts == [2, 1]


def test_classifiers_do_not_replace_a_spec() -> None:
    cols = [_col("a", wire=NULL), _col("b")]
    masks = column_maskers(_ctx((None, None), classifiers=frozenset({"email"})), cols, "postgres")
    assert masks.labels == ["a (r-null: null)", "b (classifiers)"]
    assert masks.maskers[0] is not None and masks.maskers[0](b"no email here") is None


def test_unknown_classifier_is_refused() -> None:
    with pytest.raises(ValueError):
        column_maskers(_ctx(classifiers=frozenset({"horoscope"})), [_col("a")], "postgres")


# --------------------------------------------------------------------------------------------
# Counts


def test_counting_maskers_count_each_non_null_value() -> None:
    cols = [_col("a", wire=REDACT), _col("b"), _col("c", "integer", wire=NULL)]
    masks = column_maskers(_ctx(()), cols, "postgres")
    a, b, c = masks.maskers
    assert a is not None and b is None and c is not None
    for value in (b"x", None, b"y", b"", None):  # the empty string is a value, not NULL
        a(value)
    assert a(None) is None
    c(b"5")
    assert masks.counts == [3, 0, 1]


def test_raw_maskers_mask_the_same_without_counting() -> None:
    cols = [_col("a", wire=REDACT), _col("b"), _col("c", "integer", wire=PARTIAL)]
    masks = column_maskers(_ctx(()), cols, "mysql")
    assert masks.counted == [True, False, True]
    for i, value in [(0, b"secret"), (2, b"123456")]:
        raw, counting = masks.raw[i], masks.maskers[i]
        assert raw is not None and counting is not None and raw is not counting
        assert raw(value) == counting(value)
    assert masks.raw[1] is None
    assert masks.counts == [1, 0, 1]  # only the counting calls
    masks.raw[0](b"again")  # type: ignore[misc]
    assert masks.counts == [1, 0, 1]


def test_add_counts_merges_by_label() -> None:
    cols = [_col("a", wire=REDACT), _col("b"), _col("c", wire=REDACT)]
    masks = column_maskers(_ctx(()), cols, "postgres")
    masks.maskers[0](b"1")  # type: ignore[misc]
    masks.maskers[0](b"2")  # type: ignore[misc]
    totals = {"a (r-redact: redact)": 5, "other": 1}
    masks.add_counts(totals)
    # "c" masked nothing and "b" has no label: neither appears
    assert totals == {"a (r-redact: redact)": 7, "other": 1}
    masks.maskers[2](b"3")  # type: ignore[misc]
    masks.add_counts(totals)
    assert totals == {"a (r-redact: redact)": 9, "other": 1, "c (r-redact: redact)": 1}


def test_column_masks_defaults() -> None:
    f = lambda v: v  # noqa: E731
    masks = ColumnMasks([f, None], ["x (r: redact)", ""], [0, 0])
    assert masks.raw == masks.maskers
    assert masks.counted == [False, False]
    assert masks.active


# --------------------------------------------------------------------------------------------
# Hash


def test_hash_with_key_is_a_stable_pseudonym() -> None:
    masks = column_maskers(_ctx((HASH,), hash_key=b"secret-key"), [_col("name")], "postgres")
    f = masks.maskers[0]
    assert f is not None
    out = f(b"Alice")
    assert out is not None and re.fullmatch(rb"[0-9a-f]{16}", out)
    assert f(b"Alice") == out
    assert f(b"Bob") != out


@pytest.mark.parametrize("kind, clear", [("text", b"Alice"), ("integer", b"4242"), ("uuid", b"123e4567-e89b-12d3-a456-426614174000")])
def test_hash_without_key_falls_back_to_redaction(kind: str, clear: bytes) -> None:
    masks = column_maskers(_ctx((HASH,), hash_key=b""), [_col("x", kind)], "postgres")
    f = masks.maskers[0]
    assert f is not None
    out = f(clear)
    assert out != clear
    assert out in (b"****", b"0", b"00000000-0000-0000-0000-000000000000")
    assert masks.labels == ["x (r-hash: hash)"]
    assert masks.counts == [1]


def test_wire_hash_without_key_falls_back_to_redaction() -> None:
    masks = column_maskers(_ctx((None,), hash_key=b""), [_col("x", wire=HASH)], "mysql")
    assert _apply(masks, [b"Alice"]) == [b"****"]
