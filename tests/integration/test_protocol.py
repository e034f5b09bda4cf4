"""Extended-query protocol details on a raw socket, message by message.

Each test runs against the gateway and against PostgreSQL itself (`server` fixture): the
PostgreSQL run is the reference. Where the gateway *refuses* a statement (SQLSTATE 42501 at
Parse), the PostgreSQL run uses a statement that fails at Parse (a syntax error): the protocol
prescribes the same shape for both (docs, "Extended Query" and "Pipelining"): ErrorResponse,
every message up to Sync discarded, one ReadyForQuery, and the implicit transaction of that
Sync segment rolled back.

Message type letters (backend): 1 ParseComplete, 2 BindComplete, 3 CloseComplete,
t ParameterDescription, T RowDescription, n NoData, D DataRow, C CommandComplete,
s PortalSuspended, I EmptyQueryResponse, E ErrorResponse, Z ReadyForQuery.
"""

from __future__ import annotations

import struct
import uuid
from typing import Iterator

import psycopg
import pytest

from tests.support import pgwire as w
from tests.support.endpoint import Endpoint


@pytest.fixture
def ptable(direct: psycopg.Connection) -> Iterator[str]:
    name = f"p_{uuid.uuid4().hex[:12]}"
    direct.execute(f"create table {name} (id int primary key, v text)")
    yield name
    direct.execute(f"drop table if exists {name}")


def types(msgs: list[w.Message]) -> str:
    return "".join(m.type for m in msgs)


def ins(table: str, i: int) -> bytes:
    return w.parse(f"insert into {table} values ({i}, 'v{i}')") + w.bind() + w.execute()


def test_pipeline_with_refusal_three_syncs_in_flight(server: Endpoint, ptable: str, direct):
    bad_sql, bad_state = server.refused(ptable)
    with server.session(server.refuse_database) as c:
        # All three segments are sent before anything is read.
        c.send(
            ins(ptable, 1) + w.sync()
            + ins(ptable, 2)
            + w.parse(bad_sql) + w.bind() + w.describe("P") + w.execute()
            + ins(ptable, 3) + w.sync()
            + w.parse(f"select id from {ptable} order by id") + w.bind() + w.describe("P") + w.execute() + w.sync()
        )
        b1, b2, b3 = (c.read_until("Z") for _ in range(3))
        assert types(b1) == "12CZ"
        assert types(b2) == "12CEZ", b2
        err = b2[3]
        assert err.sqlstate == bad_state and err.severity == "ERROR", err
        if server.is_gateway:
            assert "no-drop" in err.text
        assert b2[-1].status == "I"
        assert types(b3) == "12TDCZ", b3
        assert b3[3].values == [b"1"], "segment 2 must have been rolled back"
        # The session is still in sync for the simple protocol too.
        assert c.simple("select 'ok'")[1].values == [b"ok"]
    assert direct.execute(f"select id from {ptable} order by id").fetchall() == [(1,)]
    assert direct.execute("select to_regclass(%s) is not null", (ptable,)).fetchone() == (True,)


def test_refusal_waits_for_earlier_results(server: Endpoint, ptable: str):
    """The error for a refused statement must come after the replies to the messages before it,
    even when those are still running upstream."""
    bad_sql, bad_state = server.refused(ptable)
    with server.session(server.refuse_database) as c:
        c.send(
            w.parse("select pg_sleep(0.3)") + w.bind() + w.execute()
            + w.parse(bad_sql) + w.bind() + w.execute() + w.sync()
        )
        reply = c.read_until("Z")
        assert types(reply) == "12DCEZ", reply
        assert reply[4].sqlstate == bad_state


def test_refusal_with_flush_before_sync(server: Endpoint, ptable: str):
    bad_sql, bad_state = server.refused(ptable)
    with server.session(server.refuse_database) as c:
        c.send(w.parse(bad_sql) + w.flush())
        err = c.read_message()  # must arrive without a Sync
        assert err.type == "E" and err.sqlstate == bad_state, err
        # Everything up to Sync is discarded, including a valid statement.
        c.send(w.parse("select 1") + w.bind() + w.execute() + w.flush())
        c.send(w.sync())
        rest = c.read_until("Z")
        assert types(rest) == "Z", rest
        assert rest[0].status == "I"
        c.send(w.parse("select 2") + w.bind() + w.execute() + w.sync())
        assert types(c.read_until("Z")) == "12DCZ"


def test_refusal_in_explicit_transaction_block(server: Endpoint, ptable: str, direct):
    bad_sql, bad_state = server.refused(ptable)
    with server.session(server.refuse_database) as c:
        assert c.simple("begin")[-1].status == "T"
        c.send(ins(ptable, 1) + w.sync())
        assert types(c.read_until("Z")) == "12CZ"
        c.send(w.parse(bad_sql) + w.bind() + w.execute() + w.sync())
        reply = c.read_until("Z")
        assert types(reply) == "EZ"
        assert reply[0].sqlstate == bad_state
        # An error inside a transaction block leaves it failed ('E') ...
        assert reply[-1].status == "E", "ReadyForQuery must report a failed transaction block"
        failed = c.simple("select 1")
        assert failed[0].type == "E" and failed[0].sqlstate == "25P02", failed
        # ... and COMMIT then rolls back.
        commit = c.simple("commit")
        assert [m.tag for m in commit if m.type == "C"] == ["ROLLBACK"]
        assert commit[-1].status == "I"
    assert direct.execute(f"select count(*) from {ptable}").fetchone() == (0,)


def test_refusal_in_simple_query_inside_transaction(server: Endpoint, ptable: str, direct):
    bad_sql, bad_state = server.refused(ptable)
    with server.session(server.refuse_database) as c:
        c.simple("begin")
        c.simple(f"insert into {ptable} values (1, 'x')")
        reply = c.simple(bad_sql)
        assert types(reply) == "EZ" and reply[0].sqlstate == bad_state
        assert reply[-1].status == "E"
        assert c.simple("rollback")[-1].status == "I"
        assert c.simple("select 'usable'")[1].values == [b"usable"]
    assert direct.execute(f"select count(*) from {ptable}").fetchone() == (0,)


def test_named_statements_portals_and_flush(server: Endpoint, ptable: str, direct):
    with server.session() as c:
        c.send(w.parse(f"insert into {ptable} values ($1, $2)", "s_ins", (23, 25)) + w.flush())
        assert c.read_message().type == "1", "Flush must deliver ParseComplete before any Sync"
        c.send(w.bind("s_ins", "p1", (b"1", b"one")) + w.execute("p1") + w.flush())
        assert types([c.read_message(), c.read_message()]) == "2C"
        c.send(w.sync())
        assert c.read_until("Z")[-1].status == "I"
        # Reuse the named statement with binary parameters.
        c.send(w.bind("s_ins", "", (struct.pack("!i", 2), b"two"), (1, 0)) + w.execute() + w.sync())
        assert types(c.read_until("Z")) == "2CZ"
        # Describe a statement: parameter types and row description.
        c.send(w.parse(f"select v, id from {ptable} where id = $1", "s_sel", (23,)) + w.describe("S", "s_sel") + w.sync())
        reply = c.read_until("Z")
        assert types(reply) == "1tTZ", reply
        # Close it, then using it fails with 26000.
        c.send(w.close("S", "s_sel") + w.sync())
        assert types(c.read_until("Z")) == "3Z"
        c.send(w.bind("s_sel", "", (b"1",)) + w.execute() + w.sync())
        reply = c.read_until("Z")
        assert types(reply) == "EZ" and reply[0].sqlstate == "26000", reply
        c.send(w.close("S", "s_ins") + w.sync())
        assert types(c.read_until("Z")) == "3Z"
    assert direct.execute(f"select id, v from {ptable} order by id").fetchall() == [(1, "one"), (2, "two")]


def test_portal_suspension(server: Endpoint):
    with server.session() as c:
        c.send(w.parse("select g from generate_series(1, 10) g") + w.bind(portal="cur") + w.execute("cur", 3) + w.flush())
        got = [c.read_message() for _ in range(6)]
        assert types(got) == "12DDDs"
        c.send(w.execute("cur", 3) + w.execute("cur", 0) + w.sync())
        rest = c.read_until("Z")
        assert types(rest) == "DDDs" + "D" * 4 + "CZ"
        assert [m.values[0] for m in got + rest if m.type == "D"] == [str(i).encode() for i in range(1, 11)]
        assert rest[-2].tag == "SELECT 4"


def test_binary_result_format_from_bind(server: Endpoint):
    with server.session() as c:
        c.send(w.parse("select 42::int4, 'x'::text") + w.describe("S") + w.bind(result_formats=(1, 0))
               + w.describe("P") + w.execute() + w.sync())
        reply = c.read_until("Z")
        assert types(reply) == "1tT2TDCZ", reply
        # Describe(statement) cannot know the formats (all text); Describe(portal) reports Bind's.
        def formats(t: w.Message) -> list[int]:
            n = struct.unpack("!H", t.payload[:2])[0]
            out, i = [], 2
            for _ in range(n):
                i = t.payload.index(b"\0", i) + 1
                out.append(struct.unpack("!H", t.payload[i + 16: i + 18])[0])
                i += 18
            return out
        assert formats(reply[2]) == [0, 0]
        assert formats(reply[4]) == [1, 0]
        assert reply[5].values == [struct.pack("!i", 42), b"x"]


def test_empty_queries(server: Endpoint):
    with server.session() as c:
        assert types(c.simple("")) == "IZ"
        assert types(c.simple(";")) == "IZ"
        assert types(c.simple("-- only a comment")) == "IZ"
        c.send(w.parse("") + w.bind() + w.execute() + w.sync())
        assert types(c.read_until("Z")) == "12IZ"


def test_simple_multi_statement(server: Endpoint):
    with server.session() as c:
        reply = c.simple("select 1; select 'two', 2; ")
        assert types(reply) == "TDCTDCZ"
        assert reply[4].values == [b"two", b"2"]
        # An error in the middle stops the string there.
        reply = c.simple("select 1; select 1/0; select 3")
        assert types(reply) == "TDCEZ" and reply[3].sqlstate == "22012"


def test_upstream_error_at_execute_discards_to_sync(server: Endpoint):
    with server.session() as c:
        c.send(
            w.parse("select 1/g from generate_series(0, 1) g") + w.bind() + w.execute()
            + w.parse("select 'skipped'") + w.bind() + w.execute() + w.sync()
            + w.parse("select 'next'") + w.bind() + w.execute() + w.sync()
        )
        b1 = c.read_until("Z")
        b2 = c.read_until("Z")
        assert types(b1) == "12EZ" and b1[2].sqlstate == "22012"
        assert types(b2) == "12DCZ" and b2[2].values == [b"next"]


def test_terminate_closes(server: Endpoint):
    with server.session() as c:
        c.send(w.terminate())
        assert c.wait_closed(5)
