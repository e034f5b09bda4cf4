"""gateway.approvals.binding: the hash changes with everything that changes what a statement
does, and with nothing else (surrounding ASCII white space, a final semicolon)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, strategies as st

from sqlward.gateway.approvals.binding import binding_hash, canonical_text

BASE: dict[str, Any] = dict(
    sql="DELETE FROM t WHERE id > 100", parameters=(), formats=(), types=(), subject="bob", issuer="",
    verified_by="static", actor=(), target="app", protocol="postgres", environment="production",
    upstream_role="postgres", names='{"search_path": [["public"]]}',
)


def h(**changes: Any) -> str:
    return binding_hash(**{**BASE, **changes})


def test_each_part_of_the_context_changes_the_hash() -> None:
    base = h()
    variants = [
        dict(sql="DELETE FROM t WHERE id > 101"), dict(parameters=(b"100",)), dict(parameters=(None,)),
        dict(parameters=(b"1",), formats=(1,)), dict(parameters=(b"1",), types=(23,)), dict(subject="carol"),
        dict(issuer="https://idp"), dict(verified_by="oidc"), dict(actor=("agent-7",)), dict(target="app2"),
        dict(protocol="mysql"), dict(environment="staging"), dict(upstream_role="admin"),
        dict(names='{"search_path": [["other", "public"]]}'),
    ]
    hashes = {h(**v) for v in variants}
    assert base not in hashes and len(hashes) == len(variants)


def test_the_same_statement_written_with_ascii_space_or_a_semicolon_binds_the_same() -> None:
    assert h(sql="  DELETE FROM t WHERE id > 100 ;\n") == h()


def test_other_unicode_spaces_are_part_of_the_text() -> None:
    """PostgreSQL and MariaDB read NBSP or U+3000 as identifier characters: "junk<NBSP>" is
    another table."""
    for space in ("\u00a0", "\u3000", "\u0085", "\u001c"):
        assert canonical_text("DELETE FROM junk" + space) == "DELETE FROM junk" + space
        assert h(sql="DELETE FROM junk" + space) != h(sql="DELETE FROM junk")


def test_names_are_compared_in_their_canonical_form() -> None:
    assert h(subject="ＢＯＢ") == h(subject="bob") == h(subject="Bob")
    assert h(actor=("Agent-7",)) == h(actor=("agent-7",))


@given(st.lists(st.one_of(st.none(), st.binary(max_size=8)), max_size=4), st.lists(st.one_of(st.none(), st.binary(max_size=8)), max_size=4))
def test_parameter_lists_never_collide_by_concatenation(a: list[bytes | None], b: list[bytes | None]) -> None:
    assert (h(parameters=tuple(a)) == h(parameters=tuple(b))) == (a == b)
