"""Issue 12 (items 2 and 3, PostgreSQL relay without I/O): COPY messages outside COPY FROM STDIN
are a protocol violation, CopyData obeys the message limit, a request whose record cannot be
written is refused with 58030 and the protocol stays in sync, requests cut off by the session's
end complete with an error."""

from __future__ import annotations

import pytest

from sqlward.adapters.base import Verdict
from sqlward.adapters.postgres import errors
from sqlward.adapters.postgres.errors import MessageTooLarge, ProtocolViolation
from sqlward.adapters.postgres.relay import ClientSide, Pending, RelayState, UpstreamSide
from sqlward.policy import rule_ids
from sqlward.policy.model import Decision
from tests.unit.test_pg_relay import (
    BIND_S1, EXECUTE, READY_IDLE, SYNC, complete, m, parse, query, server_error, syntax_error_at,
)

COPY_IN = m(b"G", b"\0\0\1\0\0")


def _sides(max_size: int = 1 << 20) -> tuple[RelayState, ClientSide, UpstreamSide]:
    state = RelayState(policy_version=lambda: 1, clock=lambda: 0.0)
    return state, ClientSide(state, max_message_size=max_size, marker=lambda: "x"), UpstreamSide(state)


def _allow(rid: int) -> Verdict:
    return Verdict(request_id=rid, decision=Decision(action="allow"))


@pytest.mark.parametrize("message", [m(b"d", b"1\n"), m(b"c"), m(b"f", b"no\0")])
def test_copy_messages_outside_copy_in_are_a_protocol_violation(message: bytes) -> None:
    _, client, _ = _sides()
    with pytest.raises(ProtocolViolation) as caught:
        client.feed(message)
    assert "no COPY FROM STDIN is in progress" in str(caught.value)
    # After a request that cannot start a COPY: a violation too.
    _, client, _ = _sides()
    assert client.feed(query(b"SELECT 1")) is not None
    with pytest.raises(ProtocolViolation):
        client.resume(_allow(1)) or client.feed(message)


def test_copy_data_may_follow_a_copy_statement_before_the_servers_answer() -> None:
    """asyncpg sends its CopyData right after the COPY statement, without waiting for the
    server's CopyInResponse (the server reads them in order)."""
    for first in (query(b"COPY t FROM STDIN"), parse(b"c1", b"copy t from stdin") + m(b"B", b"\0c1\0\0\0\0\0\0\0") + EXECUTE):
        state, client, _ = _sides()
        request = client.feed(first + m(b"d", b"1\n") + m(b"c"))
        while request is not None:
            request = client.resume(_allow(1))
        assert not state.copy_expected and not state.copy_in
        assert client.take_output().endswith(m(b"d", b"1\n") + m(b"c"))
        with pytest.raises(ProtocolViolation):
            client.feed(m(b"d", b"after CopyDone\n"))


def test_copy_in_lasts_until_the_clients_copy_done_even_after_a_server_error() -> None:
    state, client, upstream = _sides()
    client.resume(client.feed(query(b"COPY t FROM STDIN")) and _allow(1))
    client.take_output()
    upstream.feed(COPY_IN)
    assert state.copy_in
    # The server fails the COPY at once; the client's data still in flight is legal.
    upstream.feed(server_error(b"22P02", b"bad row") + READY_IDLE)
    done = client.feed(m(b"d", b"1\n") + m(b"d", b"2\n") + m(b"c"))
    assert done is not None and done.kind == "execute" and done.command == "CopyDone"  # recorded first
    assert client.resume(_allow(2)) is None
    assert not state.copy_in
    with pytest.raises(ProtocolViolation):
        client.feed(m(b"d", b"late\n"))


def test_copy_data_over_the_limit_is_refused_from_its_header() -> None:
    state, client, upstream = _sides(max_size=1000)
    client.resume(client.feed(query(b"COPY t FROM STDIN")) and _allow(1))
    upstream.feed(COPY_IN)
    with pytest.raises(MessageTooLarge):
        client.feed(b"d" + (1 << 30).to_bytes(4, "big"))  # the header alone


def test_a_request_that_cannot_be_recorded_is_refused_and_the_protocol_stays_in_sync() -> None:
    state, client, upstream = _sides()
    # A named statement prepared earlier, run when its record cannot be written.
    request = client.feed(parse(b"s1", b"INSERT INTO t VALUES (1)") + SYNC)
    assert client.resume(_allow(1)) is None
    client.take_output()
    upstream.feed(m(b"1") + READY_IDLE)
    request = client.feed(BIND_S1 + EXECUTE + SYNC)
    assert request is not None and request.kind == "execute"
    assert client.fail(errors.audit_refusal()) is None
    out = client.take_output()
    # The Execute is replaced by a Parse the server rejects; nothing after it runs until Sync.
    assert out.startswith(BIND_S1) and b"sqlward_refused_0_x" in out and out.endswith(SYNC)
    assert EXECUTE not in out
    to_client, events = upstream.feed(m(b"2") + syntax_error_at(b"sqlward_refused_0_x") + READY_IDLE)
    assert to_client == m(b"2") + errors.audit_refusal() + READY_IDLE
    assert events == []
    # A simple Query likewise.
    assert client.feed(query(b"SELECT 1")) is not None
    client.fail(errors.audit_refusal())
    assert b"sqlward_refused_0_x" in client.take_output()
    to_client, _ = upstream.feed(syntax_error_at(b"sqlward_refused_0_x") + READY_IDLE)
    assert to_client == errors.audit_refusal() + READY_IDLE


def test_the_audit_refusal_is_58030_and_keeps_the_session() -> None:
    decision = Decision(action="deny", rule_id=rule_ids.AUDIT_UNAVAILABLE, message="x")
    reply = errors.reply(decision, "relay")
    assert not reply.ends_session and reply.data == errors.audit_refusal()
    assert b"C58030\0" in reply.data and b"Maudit unavailable: statement not run\0" in reply.data
    assert b"SERROR\0" in reply.data


def test_requests_cut_off_complete_with_the_servers_fatal_or_the_reason() -> None:
    state, client, upstream = _sides()
    client.resume(client.feed(query(b"SELECT pg_sleep(30)")) and _allow(1))
    client.take_output()
    state.pending.append(Pending("query", 2, started=0.0))
    # The server's FATAL (pg_terminate_backend) before it closes.
    _, events = upstream.feed(m(b"E", b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0"))
    assert events == []
    events = upstream.abandon("no answer from the upstream: upstream connection lost", "08006")
    assert [(e.request_id, e.error, e.sqlstate) for e in events] == [
        (1, "terminating connection due to administrator command", "57P01"),
        (2, "no answer from the upstream: upstream connection lost", "08006"),
    ]
    assert not state.pending and upstream.abandon("again", "08006") == []
    assert complete  # (imported for symmetry with the relay tests)


def test_a_refused_copy_done_becomes_a_copy_fail() -> None:
    state, client, upstream = _sides()
    client.resume(client.feed(query(b"COPY t FROM STDIN")) and _allow(1))
    client.take_output()
    upstream.feed(COPY_IN)
    done = client.feed(m(b"d", b"1\n") + m(b"c"))
    assert done is not None and done.command == "CopyDone"
    refused = Verdict(request_id=2, decision=Decision(action="deny", rule_id="audit-unavailable", message="no trail"))
    assert client.resume(refused) is None
    out = client.take_output()
    assert out.startswith(m(b"d", b"1\n")) and out[len(m(b"d", b"1\n")):][:1] == b"f"  # CopyFail, not CopyDone
    assert b"sqlward: no trail" in out and b"the COPY was not committed" in out
    assert not state.copy_in
