"""The PostgreSQL relay's part in approvals and in keeping its statement records the server's
(issue 13): byte tables fed whole, bytewise and with trailing data (`test_pg_relay.exchange`).

- A Parse the pipeline answers with `review_at_run` is prepared, and every Bind of it asks again
  with its parameter values and formats.
- A Parse naming a statement that exists is refused by the gateway (42P05, as the server would),
  and the gateway's record stays the server's: the old statement is still judged at its Binds.
- A Bind of a statement the gateway did not see parsed (SQL PREPARE, a forgotten name) is refused.
- SQL DEALLOCATE forgets a name once the server says it ran (CommandComplete), not before.
"""

from __future__ import annotations

import struct

from sqlward.adapters.base import StatementRequest, Verdict
from sqlward.policy.model import Decision
from tests.unit.test_pg_relay import (
    BIND_S1, EXECUTE, PARSE_COMPLETE, READY_IDLE, SYNC, Judge, exchange, m, parse, query, server_error,
)


def bind(stmt: bytes, *values: bytes | None, formats: tuple[int, ...] = ()) -> bytes:
    body = b"\0" + stmt + b"\0" + struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return m(b"B", body + b"\0\0")


class ReviewJudge(Judge):
    """DELETE needs approval at each run: its Parse gets review_at_run, its Binds are allowed."""

    def __call__(self, request: StatementRequest) -> Verdict:
        verdict = super().__call__(request)
        if "DELETE" in request.sql and request.prepare:
            return Verdict(request_id=verdict.request_id, decision=Decision(action="review", rule_id="mass-write"), review_at_run=True)
        return verdict


def test_each_bind_of_a_reviewed_statement_asks_with_its_values() -> None:
    r = exchange(
        ("c", parse(b"s1", b"DELETE FROM t WHERE id > $1") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", bind(b"s1", b"100") + EXECUTE + SYNC + bind(b"s1", b"\x00\x00\x00\x05", None, formats=(1,)) + EXECUTE + SYNC),
        judge=ReviewJudge,
    )
    asked = [(q.kind, q.prepare, q.parameters, q.formats) for q in r.requests]
    assert asked == [
        ("statement", True, None, ()),
        ("statement", False, (b"100",), ()),
        ("execute", False, (b"100",), ()),  # each run is recorded with its values
        ("statement", False, (b"\x00\x00\x00\x05", None), (1,)),
        ("execute", False, (b"\x00\x00\x00\x05", None), (1,)),
    ]
    assert r.to_upstream.startswith(parse(b"s1", b"DELETE FROM t WHERE id > $1") + SYNC)


def test_a_parse_of_an_existing_name_is_refused_and_the_old_record_stays() -> None:
    marker = b"sqlward_refused_0_feed"
    r = exchange(
        ("c", parse(b"s1", b"DELETE FROM t WHERE id > $1") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", parse(b"s1", b"SELECT $1::int") + SYNC),
        ("u", server_error(b"42601", b'syntax error at or near "' + marker + b'"') + READY_IDLE),
        ("c", bind(b"s1", b"0") + EXECUTE + SYNC),
        judge=ReviewJudge,
    )
    assert b"42P05" in r.to_client and b'prepared statement "s1" already exists' in r.to_client
    # The SELECT text was never judged; the Bind of s1 is still asked about as the DELETE.
    assert [q.sql for q in r.requests] == ["DELETE FROM t WHERE id > $1", "DELETE FROM t WHERE id > $1", ""]
    assert r.requests[1].parameters == (b"0",)


def test_a_bind_of_a_statement_not_parsed_through_the_gateway_is_refused() -> None:
    marker = b"sqlward_refused_0_feed"
    r = exchange(
        ("c", bind(b"p", b"5") + EXECUTE + SYNC),  # e.g. after SQL PREPARE p AS DELETE ...
        ("u", server_error(b"42601", b'syntax error at or near "' + marker + b'"') + READY_IDLE),
    )
    assert r.requests == []
    assert r.to_upstream == parse(b"", marker) + SYNC
    assert b"26000" in r.to_client and b"sqlward runs only statements prepared through the protocol" in r.to_client


def test_sql_deallocate_forgets_a_name_once_the_server_ran_it() -> None:
    r = exchange(
        ("c", parse(b"s1", b"SELECT 1") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", query(b"DEALLOCATE s1")),
        ("u", m(b"C", b"DEALLOCATE\0") + READY_IDLE),
        ("c", parse(b"s1", b"SELECT 2") + SYNC),
    )
    assert [q.sql for q in r.requests] == ["SELECT 1", "DEALLOCATE s1", "SELECT 2"]
    assert r.to_upstream.endswith(parse(b"s1", b"SELECT 2") + SYNC)


def test_a_failed_deallocate_forgets_nothing() -> None:
    r = exchange(
        ("c", parse(b"s1", b"DELETE FROM t") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", query(b"DEALLOCATE s1")),
        ("u", server_error(b"25P02", b"current transaction is aborted") + READY_IDLE),
        ("c", parse(b"s1", b"SELECT 2") + SYNC),
    )
    # The server still has s1 (the DELETE): a new Parse of the name is refused, not judged.
    assert [q.sql for q in r.requests] == ["DELETE FROM t", "DEALLOCATE s1"]
    assert r.to_upstream.endswith(parse(b"", b"sqlward_refused_0_feed") + SYNC)


def test_discard_all_forgets_every_name() -> None:
    r = exchange(
        ("c", parse(b"s1", b"SELECT 1") + parse(b"s2", b"SELECT 2") + SYNC),
        ("u", PARSE_COMPLETE + PARSE_COMPLETE + READY_IDLE),
        ("c", query(b"DISCARD ALL")),
        ("u", m(b"C", b"DISCARD ALL\0") + READY_IDLE),
        ("c", parse(b"s2", b"SELECT 3") + SYNC),
    )
    assert [q.sql for q in r.requests][-1] == "SELECT 3"


# -- the server's word on Parse and Close (second attack run) -----------------------------------

CLOSE_COMPLETE = m(b"3")
BIND_COMPLETE_ = m(b"2")


def close_statement(name: bytes) -> bytes:
    return m(b"C", b"S" + name + b"\0")


def division_error() -> bytes:
    return server_error(b"22012", b"division by zero")


def test_a_parse_and_a_close_the_server_skipped_after_an_error_are_undone() -> None:
    """After an error the server skips everything up to Sync: a Close of the reviewed
    statement and a Parse of an innocent text under its name did not happen, so its Binds are
    still approved as the DELETE they run."""
    r = exchange(
        ("c", parse(b"v", b"DELETE FROM t WHERE id <= $1") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", parse(b"e", b"SELECT 1/0") + bind(b"e") + EXECUTE + close_statement(b"v") + parse(b"v", b"SELECT $1::int") + SYNC),
        ("u", PARSE_COMPLETE + BIND_COMPLETE_ + division_error() + READY_IDLE),
        ("c", bind(b"v", b"50") + EXECUTE + SYNC),
        judge=ReviewJudge,
    )
    last = r.requests[-2]
    assert (last.sql, last.parameters, last.prepare) == ("DELETE FROM t WHERE id <= $1", (b"50",), False)


def test_an_unnamed_parse_the_server_skipped_leaves_the_old_unnamed_statement() -> None:
    r = exchange(
        ("c", parse(b"", b"DELETE FROM t WHERE id <= $1") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", parse(b"e", b"SELECT 1/0") + bind(b"e") + EXECUTE + parse(b"", b"SELECT $1::int") + SYNC),
        ("u", PARSE_COMPLETE + BIND_COMPLETE_ + division_error() + READY_IDLE),
        ("c", bind(b"", b"70") + EXECUTE + SYNC),
        judge=ReviewJudge,
    )
    last = r.requests[-2]
    assert (last.sql, last.parameters) == ("DELETE FROM t WHERE id <= $1", (b"70",))


def test_a_parse_the_server_refused_is_not_recorded() -> None:
    """The server refuses a Parse (here: 42P05 for a name it still has, which the gateway had
    forgotten): the gateway records nothing of it, and a Bind of the name is refused."""
    marker = b"sqlward_refused_0_feed"
    r = exchange(
        ("c", parse(b"v", b"DELETE FROM t WHERE id <= $1") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", query(b"DEALLOCATE dummy")),  # the text names another statement: every name is forgotten
        ("u", m(b"C", b"DEALLOCATE\0") + READY_IDLE),
        ("c", parse(b"v", b"SELECT $1::int") + SYNC),
        ("u", server_error(b"42P05", b'prepared statement "v" already exists') + READY_IDLE),
        ("c", bind(b"v", b"40") + EXECUTE + SYNC),
        ("u", server_error(b"42601", b'syntax error at or near "' + marker + b'"') + READY_IDLE),
        judge=ReviewJudge,
    )
    assert [q.sql for q in r.requests] == ["DELETE FROM t WHERE id <= $1", "DEALLOCATE dummy", "SELECT $1::int"]
    assert b"26000" in r.to_client and b"does not exist" in r.to_client


def test_a_deallocate_run_through_the_extended_protocol_forgets_every_name() -> None:
    r = exchange(
        ("c", parse(b"v", b"SELECT $1::int") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", parse(b"", b"DEALLOCATE v") + bind(b"") + EXECUTE + SYNC),
        ("u", PARSE_COMPLETE + BIND_COMPLETE_ + m(b"C", b"DEALLOCATE\0") + READY_IDLE),
        ("c", bind(b"v", b"10") + EXECUTE + SYNC),
    )
    # v may now be anything the session prepares through SQL: its Bind is refused.
    assert [q.sql for q in r.requests if q.kind == "statement"] == ["SELECT $1::int", "DEALLOCATE v"]
    assert r.to_upstream.endswith(parse(b"", b"sqlward_refused_0_feed") + SYNC)


def test_sql_prepare_of_a_known_name_forgets_it() -> None:
    r = exchange(
        ("c", parse(b"v", b"SELECT $1::int") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", query(b"PREPARE v2(int) AS DELETE FROM t WHERE id <= $1")),
        ("u", m(b"C", b"PREPARE\0") + READY_IDLE),
        ("c", bind(b"v", b"10") + EXECUTE + SYNC),
    )
    assert r.to_upstream.endswith(parse(b"", b"sqlward_refused_0_feed") + SYNC)


def test_a_close_the_server_carried_out_before_an_error_stays_done() -> None:
    r = exchange(
        ("c", parse(b"v", b"SELECT 1") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", close_statement(b"v") + parse(b"e", b"SELECT 1/0") + bind(b"e") + EXECUTE + SYNC),
        ("u", CLOSE_COMPLETE + PARSE_COMPLETE + BIND_COMPLETE_ + division_error() + READY_IDLE),
        ("c", parse(b"v", b"SELECT 2") + SYNC),
    )
    assert [q.sql for q in r.requests if q.kind == "statement"][-1] == "SELECT 2"


class ReloadJudge(Judge):
    """A statement allowed at Parse; after a policy reload its Bind is decided again and released
    by an approval (approval_id set)."""

    def __call__(self, request: StatementRequest) -> Verdict:
        verdict = super().__call__(request)
        if request.parameters is not None and request.kind == "statement":
            return Verdict(request_id=verdict.request_id, decision=Decision(action="allow", rule_id="mass-write"), approval_id="ap-1")
        return verdict


def test_after_a_reload_an_approved_run_does_not_release_the_next_runs() -> None:
    r = exchange(
        ("c", parse(b"v", b"DELETE FROM t WHERE id <= $1") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("v", b""),
        ("c", bind(b"v", b"1") + EXECUTE + SYNC + bind(b"v", b"100") + EXECUTE + SYNC),
        judge=ReloadJudge,
    )
    asked = [(q.kind, q.parameters) for q in r.requests]
    assert asked == [("statement", None), ("statement", (b"1",)), ("execute", (b"1",)), ("statement", (b"100",)), ("execute", (b"100",))]
