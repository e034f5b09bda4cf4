"""The compiled DataRow walk (adapters/postgres/_rowwalk.pyx) gives exactly what the pure-Python
walk (`RowMasker._mask_rows_py`) gives: the same bytes, the same stopping position, the same
masked-value counts, and a ValueError for the same malformed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlward.adapters.postgres import rowmask
from sqlward.masking.functions import make_masker
from sqlward.masking.model import MaskSpec

pytestmark = pytest.mark.skipif(rowmask._rowwalk is None, reason="the Cython row walk is not built here")

def _real(function: str, **kw: int) -> object:
    return make_masker(MaskSpec(function=function, **kw), "text", b"key", "postgres")  # type: ignore[arg-type]


MASKERS = {
    # The masking functions the compiled walk runs itself on ASCII values (and hands the rest to).
    "email": _real("email"),
    "partial": _real("partial", keep_first=1, keep_last=3),
    "partial0": _real("partial", keep_first=0, keep_last=0),
    "redact": _real("redact"),
    "nullfn": _real("null"),
    "hash": _real("hash"),
    "keep": lambda v: v,
    "stars": lambda v: b"****",
    "longer": lambda v: v + b"-masked-" * 40,
    "null": lambda v: None,
    "empty": lambda v: b"",
}


def datarow(values: list[bytes | None]) -> bytes:
    body = struct.pack("!h", len(values)) + b"".join(
        struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v for v in values
    )
    return b"D" + struct.pack("!i", len(body) + 4) + body


values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.emails().map(str.encode),
    st.text(max_size=40).map(str.encode),  # non-ASCII too: the compiled walk calls Python then
    st.sampled_from([b"a@b.co", b"x@y", b"@a.com", b"a@.com", b"a@b.c0", b"a b@c.de", b"ab@c.d", b"****", b""]),
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[str | None], bytes, list[bool]]:
    ncols = draw(st.integers(1, 8))
    plan = draw(st.lists(st.sampled_from([None, *MASKERS]), min_size=ncols, max_size=ncols))
    counted = draw(st.lists(st.booleans(), min_size=ncols, max_size=ncols))
    rows = draw(st.lists(st.lists(values, min_size=ncols, max_size=ncols), max_size=6))
    data = b"".join(datarow(r) for r in rows)
    tail = draw(st.sampled_from([b"", b"C\x00\x00\x00\x0dSELECT 1\x00", datarow([b"x"] * ncols)[:-2]]))
    return plan, data + tail, counted


def _run(fn, masker: rowmask.RowMasker, data: bytes):
    try:
        out, pos = fn(data, 0, len(data))
        return "ok", b"".join(out), pos
    except ValueError:
        return "error", b"", 0


@settings(max_examples=400, deadline=None)
@given(case=cases())
def test_compiled_walk_equals_python_walk(case) -> None:
    plan, data, counted = case
    maskers = [None if m is None else MASKERS[m] for m in plan]
    counts_c = [0] * len(plan)
    counts_py = [0] * len(plan)
    compiled = rowmask.RowMasker([25] * len(plan), [0] * len(plan), maskers, counts=counts_c, counted=counted)
    python = rowmask.RowMasker([25] * len(plan), [0] * len(plan), maskers, counts=counts_py, counted=counted)
    assert _run(compiled.mask_rows, compiled, data) == _run(python._mask_rows_py, python, data)
    assert counts_c == counts_py


@settings(max_examples=300, deadline=None)
@given(case=cases(), garbage=st.binary(min_size=1, max_size=40), cut=st.integers(0, 60))
def test_malformed_rows_fail_the_same_way(case, garbage: bytes, cut: int) -> None:
    plan, data, counted = case
    maskers = [None if m is None else MASKERS[m] for m in plan]
    bad = data[: max(0, len(data) - cut)] + b"D" + garbage
    a = rowmask.RowMasker([25] * len(plan), [0] * len(plan), maskers)
    b = rowmask.RowMasker([25] * len(plan), [0] * len(plan), maskers)
    assert _run(a.mask_rows, a, bad)[0] == _run(b._mask_rows_py, b, bad)[0]
