"""Issue 12, PostgreSQL adapter, items 2-5, against the real server and the real gateway.

- COPY messages (CopyData, CopyDone, CopyFail) outside COPY FROM STDIN are FATAL 08P01; CopyData
  over the listener's max_message_size is FATAL 54000 as soon as its header arrives.
- The audit fails closed for every execution: simple Query, a named prepared statement run later
  (Bind/Execute), asyncpg's prepared statements, FunctionCall, COPY: when the record cannot be
  written the request is refused with ERROR 58030 "audit unavailable: statement not run", nothing
  reaches the upstream, the session goes on, and no traceback is logged (the audit is made to
  fail as in test_audit_unavailable.py: RLIMIT_FSIZE of the running gateway).
- Every connection.opened is followed by connection.closed or connection.refused: TLS handshake
  failure, malformed startup packets, a client leaving before or during SCRAM, CancelRequest,
  SSLRequest / GSSENCRequest then close.
- A statement cut off by the upstream's death (pg_terminate_backend) gets its statement.completed
  with the error.
- Login edges: a wrong user name and a wrong secret get the same refusal after the same SCRAM
  exchange; the TLS advice is true for the listener at hand.
- Bounds before authentication: huge length headers are refused at once, not buffered.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.support import pgwire
from tests.support.gateway import SECRETS, GatewayProcess, make_gateway_certs, target, tls_listener
from tests.support.oidc import TestIssuer

from .conftest import PGHOST, PGPORT, _admin_dsn, scratch_database

DB = "pgh12_hard"
AUDIT_REFUSED = "audit unavailable: statement not run"


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    with scratch_database(DB) as name:
        yield name


def _targets(db: str) -> list[dict[str, Any]]:
    return [target("app", f"postgresql://postgres@{PGHOST}:{PGPORT}/{db}?sslmode=disable", "development")]


@pytest.fixture
def direct(db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(_admin_dsn(db), autocommit=True) as c:
        yield c


@pytest.fixture
def table(direct: psycopg.Connection) -> Iterator[str]:
    name = f"pgh12_t_{int(time.time() * 1000) % 10**9}"
    direct.execute(f"CREATE TABLE {name} (id int primary key, v text)")
    yield name
    direct.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def audit_gw(db: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(targets=_targets(db), name="pgh12-audit") as g:
        yield g
        g.audit_writable()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return make_gateway_certs(tmp_path_factory.mktemp("pgh12-tls"))


@pytest.fixture(scope="module")
def gw(db: str, pki) -> Iterator[GatewayProcess]:
    """TLS offered (not required), a small message limit."""
    with GatewayProcess(
        targets=_targets(db), name="pgh12",
        listener={"tls": tls_listener(pki, require=False), "max_message_size": 65536},
    ) as g:
        yield g


def _session(g: GatewayProcess) -> pgwire.RawConn:
    return pgwire.open_session(g.host, g.port, "alice", SECRETS["alice"], "app")


def _no_traceback(g: GatewayProcess) -> None:
    assert "Traceback" not in g.stderr_text(), g.stderr_text()[-3000:]


# -- item 3: the audit fails closed for every execution, and the session goes on -----------------------


def _refused_58030(messages: list[pgwire.Message]) -> bool:
    errors = [m for m in messages if m.type == "E"]
    return bool(errors) and errors[0].severity == "ERROR" and errors[0].sqlstate == "58030" and errors[0].text == AUDIT_REFUSED


def test_simple_query_is_refused_with_58030_and_the_session_goes_on(
    audit_gw: GatewayProcess, direct: psycopg.Connection, table: str,
) -> None:
    with _session(audit_gw) as c:
        audit_gw.audit_full()
        reply = c.simple(f"INSERT INTO {table} VALUES (1, 'unrecorded')")
        assert _refused_58030(reply) and reply[-1].type == "Z", reply
        assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        audit_gw.audit_writable()
        assert c.simple("SELECT 'goes on'")[1].values == [b"goes on"]
    _no_traceback(audit_gw)


def test_a_named_prepared_statement_run_later_is_refused_when_its_record_cannot_be_written(
    audit_gw: GatewayProcess, direct: psycopg.Connection, table: str,
) -> None:
    with _session(audit_gw) as c:
        c.send(pgwire.parse(f"INSERT INTO {table} VALUES (1, 'prepared')", name="s1") + pgwire.sync())
        assert [m.type for m in c.read_until("Z")] == ["1", "Z"]
        audit_gw.audit_full()
        c.send(pgwire.bind("s1") + pgwire.execute() + pgwire.sync())
        reply = c.read_until("Z")
        assert _refused_58030(reply), reply
        assert "C" not in [m.type for m in reply]
        # The upstream never ran it.
        assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        audit_gw.audit_writable()
        c.send(pgwire.bind("s1") + pgwire.execute() + pgwire.sync())
        assert [m.type for m in c.read_until("Z")] == ["2", "C", "Z"]
    assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
    _no_traceback(audit_gw)


def test_a_pipeline_is_refused_at_its_first_request_and_nothing_of_it_runs(
    audit_gw: GatewayProcess, direct: psycopg.Connection, table: str,
) -> None:
    with _session(audit_gw) as c:
        audit_gw.audit_full()
        c.send(b"".join(
            pgwire.parse(f"INSERT INTO {table} VALUES ({i}, 'x')") + pgwire.bind() + pgwire.execute() for i in (1, 2)
        ) + pgwire.sync())
        reply = c.read_until("Z")
        assert _refused_58030(reply) and [m.type for m in reply] == ["E", "Z"], reply
        assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        audit_gw.audit_writable()
        assert c.simple("SELECT 1")[1].values == [b"1"]


def test_asyncpg_prepared_statement_refused_then_served_again(audit_gw: GatewayProcess) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(host=audit_gw.host, port=audit_gw.port, user="alice",
                                     password=SECRETS["alice"], database="app", ssl=False)
        try:
            stmt = await conn.prepare("SELECT $1::int + 1")
            assert await stmt.fetchval(1) == 2
            audit_gw.audit_full()
            with pytest.raises(asyncpg.PostgresError) as caught:
                await stmt.fetchval(2)
            assert caught.value.sqlstate == "58030" and AUDIT_REFUSED in str(caught.value)
            audit_gw.audit_writable()
            assert await stmt.fetchval(3) == 4
        finally:
            await conn.close()

    asyncio.run(run())
    _no_traceback(audit_gw)


def test_function_call_and_copy_are_refused_too(audit_gw: GatewayProcess, direct: psycopg.Connection, table: str) -> None:
    with _session(audit_gw) as c:
        audit_gw.audit_full()
        # FunctionCall of int4pl(1, 2) (OID 177), text arguments.
        args = struct.pack("!hh", 1, 0) + struct.pack("!h", 2) + struct.pack("!i", 1) + b"1" + struct.pack("!i", 1) + b"2"
        c.send(pgwire.msg(b"F", struct.pack("!I", 177) + args + struct.pack("!h", 0)))
        reply = c.read_until("Z")
        assert [m for m in reply if m.type == "E"] and "V" not in [m.type for m in reply], reply
        assert _refused_58030(reply), reply
        # COPY FROM STDIN: refused before the server asks for data.
        reply = c.simple(f"COPY {table} FROM STDIN")
        assert _refused_58030(reply) and "G" not in [m.type for m in reply], reply
        audit_gw.audit_writable()
        assert c.simple("SELECT 'alive'")[1].values == [b"alive"]
    assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    _no_traceback(audit_gw)


def test_copy_data_is_not_committed_when_the_audit_breaks_during_the_copy(
    audit_gw: GatewayProcess, direct: psycopg.Connection, table: str,
) -> None:
    # The COPY was decided and recorded; the server commits its data when it reads CopyDone, so
    # CopyDone is recorded first (statement.executed, command CopyDone). When that record cannot
    # be written the gateway sends CopyFail instead: nothing is committed. (The COPY's failed
    # completion cannot be written either while the trail is down, so the session then ends with
    # FATAL 58000, as for any completion that cannot be recorded.)
    with _session(audit_gw) as c:
        c.send(pgwire.msg(b"Q", f"COPY {table} FROM STDIN\0".encode()))
        assert [m.type for m in c.read_until("G")][-1] == "G"
        c.send(pgwire.msg(b"d", b"1\tone\n") + pgwire.msg(b"d", b"2\ttwo\n"))
        audit_gw.audit_full()
        c.send(pgwire.msg(b"c", b""))
        reply, _closed = c.read_all_until_closed(10)
        errors = [m for m in reply if m.type == "E"]
        assert errors and errors[0].sqlstate in ("57014", "58000"), reply
        audit_gw.audit_writable()
    assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    _no_traceback(audit_gw)


def test_copy_done_is_recorded_before_the_server_commits(audit_gw: GatewayProcess, table: str) -> None:
    with psycopg.connect(audit_gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True) as conn:
        with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            copy.write_row((1, "one"))
    events = audit_gw.audit_events()
    kinds = [(e["event"], e.get("command")) for e in events if e["event"].startswith("statement.")]
    assert ("statement.executed", "CopyDone") in kinds, kinds
    assert kinds.index(("statement.executed", "CopyDone")) < [k for k, _ in kinds].index("statement.completed")


# -- item 3: every connection.opened ends in connection.closed or connection.refused ----------------


def _opened_and_ended(g: GatewayProcess, since: int, local_port: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        events = g.audit_events(since)
        opened = [e for e in events if e["event"] == "connection.opened" and e["client_addr"].endswith(f":{local_port}")]
        assert len(opened) == 1, events
        cid = opened[0]["connection_id"]
        mine = [e["event"] for e in events if e.get("connection_id") == cid]
        if mine[-1] in ("connection.closed", "connection.refused") or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def _tls_garbage(c: pgwire.RawConn) -> None:
    assert c.request_ssl() == b"S"
    c.send(b"\x16\x03\x01\x00\x05hello-this-is-no-tls" * 3)


def _scram_then_leave(c: pgwire.RawConn, stage: int) -> None:
    from scramp import ScramClient

    c.send(pgwire.startup_message({"user": "alice", "database": "app"}))
    first = c.read_message()
    assert first.type == "R" and first.auth_code == pgwire.AUTH_SASL
    if stage == 0:
        return
    scram = ScramClient(["SCRAM-SHA-256"], "alice", "alice-secret")
    cf = scram.get_client_first().encode()
    c.send(pgwire.msg(b"p", pgwire.cstr("SCRAM-SHA-256") + struct.pack("!i", len(cf)) + cf))
    assert c.read_message().auth_code == pgwire.AUTH_SASL_CONTINUE


ENDINGS = {
    "nothing-sent": lambda c: None,
    "tls-handshake-failure": _tls_garbage,
    "ssl-request-then-close": lambda c: c.request_ssl(),
    "gssenc-request-then-close": lambda c: (c.send(pgwire.gssenc_request()), c.read_byte()),
    "malformed-startup-length": lambda c: c.send(struct.pack("!I", 3) + b"xxxx"),
    "huge-startup-length": lambda c: c.send(struct.pack("!I", 0x7FFFFFFF) + b"\0\3\0\0"),
    "malformed-startup-body": lambda c: c.send(struct.pack("!II", 13, 196608) + b"user"),
    "cancel-request": lambda c: c.send(pgwire.cancel_request(12345, 67890)),
    "leaves-before-password": lambda c: _scram_then_leave(c, 0),
    "leaves-mid-scram": lambda c: _scram_then_leave(c, 1),
    "startup-packet-half-sent": lambda c: c.send(struct.pack("!II", 40, 196608) + b"user\0al"),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_opened_connection_is_closed_or_refused_in_the_trail(gw: GatewayProcess, ending: str) -> None:
    since = gw.audit_offset()
    c = pgwire.RawConn.connect(gw.host, gw.port, timeout=5)
    port = c.sock.getsockname()[1]
    try:
        ENDINGS[ending](c)
        time.sleep(0.1)
    finally:
        c.close()
    events = _opened_and_ended(gw, since, port)
    assert events[0] == "connection.opened" and events[-1] == "connection.refused", events
    assert events.count("connection.closed") + events.count("connection.refused") == 1, events
    _no_traceback(gw)


# -- item 3: a statement cut off by the upstream's death ---------------------------------------------


def test_a_statement_cut_off_by_the_upstreams_death_completes_with_the_error(gw: GatewayProcess, direct: psycopg.Connection) -> None:
    since = gw.audit_offset()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True) as conn:
                conn.execute("SELECT 'pgh12-cut', pg_sleep(30)")
        except psycopg.Error as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 10
    killed = 0
    while time.monotonic() < deadline and not killed:
        time.sleep(0.1)
        killed = direct.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE query LIKE '%pgh12-cut%' AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    worker.join(15)
    assert killed == 1 and "error" in outcome, outcome
    deadline = time.monotonic() + 5
    while True:
        events = gw.audit_events(since)
        decided = [e for e in events if e["event"] == "statement.decided" and "pgh12-cut" in e["sql"]]
        assert len(decided) == 1
        done = [e for e in events if e["event"] == "statement.completed"
                and e["connection_id"] == decided[0]["connection_id"] and e["request_id"] == decided[0]["request_id"]]
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert done and done[0]["error"], events
    assert "terminating connection" in done[0]["error"] and done[0]["sqlstate"] == "57P01", done
    closed = [e for e in events if e["event"] == "connection.closed" and e["connection_id"] == decided[0]["connection_id"]]
    assert closed


# -- item 2: COPY messages ------------------------------------------------------------------------------


@pytest.mark.parametrize("message", [pgwire.msg(b"d", b"1\tx\n"), pgwire.msg(b"c"), pgwire.msg(b"f", b"stop\0")],
                         ids=["CopyData", "CopyDone", "CopyFail"])
def test_copy_messages_outside_copy_are_a_protocol_violation(gw: GatewayProcess, message: bytes) -> None:
    with _session(gw) as c:
        c.send(message)
        messages, closed = c.read_all_until_closed(5)
    assert closed and [(m.severity, m.sqlstate) for m in messages if m.type == "E"] == [("FATAL", "08P01")], messages


def test_copy_data_over_the_message_limit_is_refused_from_its_header(gw: GatewayProcess, table: str) -> None:
    with _session(gw) as c:
        c.send(pgwire.query(f"COPY {table} FROM STDIN"))
        assert c.read_message().type == "G"
        t0 = time.monotonic()
        c.send(b"d" + struct.pack("!I", 100 << 20) + b"1\tpartial")  # 100 MiB announced, a few bytes sent
        messages, closed = c.read_all_until_closed(5)
        assert time.monotonic() - t0 < 3
    assert closed and [(m.severity, m.sqlstate) for m in messages if m.type == "E"][:1] == [("FATAL", "54000")], messages


def test_copy_still_works_and_a_failed_copy_keeps_the_session(gw: GatewayProcess, direct: psycopg.Connection, table: str) -> None:
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True) as conn:
        with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"row {i}"))
        # A COPY the server fails early while the client still sends data: the session survives.
        with pytest.raises(psycopg.Error):
            with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                copy.write_row((1, "duplicate key"))
                for i in range(5000, 9000):
                    copy.write_row((i, "x" * 50))
        assert conn.execute("SELECT count(*) FROM " + table).fetchone() == (1000,)


# -- item 5: bounds before authentication -------------------------------------------------------------


def _refused_quickly(c: pgwire.RawConn, data: bytes) -> list[pgwire.Message]:
    t0 = time.monotonic()
    c.send(data)
    messages, closed = c.read_all_until_closed(5)
    assert closed and time.monotonic() - t0 < 3, messages
    return messages


def test_a_huge_password_message_is_refused_from_its_header(gw: GatewayProcess) -> None:
    with pgwire.RawConn.connect(gw.host, gw.port) as c:
        c.send(pgwire.startup_message({"user": "alice", "database": "app"}))
        assert c.read_message().auth_code == pgwire.AUTH_SASL
        messages = _refused_quickly(c, b"p" + struct.pack("!I", 64 << 20) + b"SCRAM-SHA-256\0")
    assert [(m.severity, m.sqlstate) for m in messages] == [("FATAL", "54000")], messages


def test_a_sasl_message_is_capped_far_below_max_message_size(gw: GatewayProcess) -> None:
    with pgwire.RawConn.connect(gw.host, gw.port) as c:
        c.send(pgwire.startup_message({"user": "alice", "database": "app"}))
        assert c.read_message().auth_code == pgwire.AUTH_SASL
        messages = _refused_quickly(c, b"p" + struct.pack("!I", 40000) + b"SCRAM-SHA-256\0")  # < 64 KiB listener limit
    assert [(m.severity, m.sqlstate) for m in messages] == [("FATAL", "54000")], messages


@pytest.mark.parametrize("packet", [
    struct.pack("!I", 0x7FFFFFFF) + struct.pack("!I", 196608),
    struct.pack("!I", 10_001) + struct.pack("!I", 196608),
    struct.pack("!II", 9, 80877103) + b"x",  # SSLRequest with a body
    struct.pack("!II", 16, 80877104) + b"12345678",  # GSSENCRequest with a body
    struct.pack("!II", 8, 80877102),  # CancelRequest without pid and key
], ids=["2GiB-startup", "over-10000", "long-ssl-request", "long-gssenc-request", "short-cancel"])
def test_startup_phase_packets_are_bounded(gw: GatewayProcess, packet: bytes) -> None:
    with pgwire.RawConn.connect(gw.host, gw.port) as c:
        messages = _refused_quickly(c, packet)
    assert all(m.severity == "FATAL" for m in messages), messages


# -- item 4: login edges ----------------------------------------------------------------------------


def _scram_failure(g: GatewayProcess, user: str) -> tuple[list[str], str, str, str, int, str]:
    """A SCRAM login with a wrong password: (message types, severity, sqlstate, text, iterations)."""
    from scramp import ScramClient

    with pgwire.RawConn.connect(g.host, g.port) as c:
        c.send(pgwire.startup_message({"user": user, "database": "app"}))
        types = []
        first = c.read_message()
        types.append(f"R{first.auth_code}")
        assert first.auth_code == pgwire.AUTH_SASL, first
        scram = ScramClient(["SCRAM-SHA-256"], user, "wrong-secret")
        cf = scram.get_client_first().encode()
        c.send(pgwire.msg(b"p", pgwire.cstr("SCRAM-SHA-256") + struct.pack("!i", len(cf)) + cf))
        cont = c.read_message()
        types.append(f"R{cont.auth_code}")
        attrs = dict(part.split("=", 1) for part in cont.payload[4:].decode().split(","))
        scram.set_server_first(cont.payload[4:].decode())
        c.send(pgwire.msg(b"p", scram.get_client_final().encode()))
        messages, closed = c.read_all_until_closed(5)
        assert closed
        types += [m.type for m in messages]
        err = messages[-1]
        return types, err.severity, err.sqlstate, err.text.replace(user, "<user>"), int(attrs["i"]), attrs["s"]


def test_a_wrong_user_name_and_a_wrong_secret_get_the_same_refusal(gw: GatewayProcess) -> None:
    static = _scram_failure(gw, "alice")
    unknown = _scram_failure(gw, "pgh12-nobody")
    assert static[:5] == unknown[:5], (static, unknown)
    assert static[1:3] == ("FATAL", "28P01")
    # The decoy's salt is stable per name, as a real verifier's is.
    assert _scram_failure(gw, "pgh12-nobody")[5] == unknown[5]
    assert _scram_failure(gw, "alice")[5] == static[5]


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestIssuer]:
    with TestIssuer(tmp_path_factory.mktemp("pgh12-idp")) as iss:
        yield iss


@pytest.mark.parametrize("with_tls", [False, True], ids=["listener-without-tls", "listener-with-tls"])
def test_the_tls_advice_is_true_for_the_listener(db: str, pki, issuer: TestIssuer, with_tls: bool) -> None:
    listener = {"tls": tls_listener(pki, require=False)} if with_tls else {}
    with GatewayProcess(targets=_targets(db), name="pgh12-advice", listener=listener,
                        extra={"oidc": [issuer.oidc_table()]}) as g:
        with pytest.raises(pgwire.PgError) as caught:
            pgwire.open_session(g.host, g.port, "pgh12-token-user", "some-token", "app")
        text = caught.value.error.text
        assert caught.value.sqlstate == "28000" and "tokens only over TLS" in text, text
        if with_tls:
            assert "sslmode=require" in text, text
        else:
            assert "sslmode" not in text and "no TLS" in text, text


def test_the_gateways_shutdown_ends_every_connection_in_the_trail(db: str) -> None:
    """SIGTERM: a connection waiting before authentication is refused at once, an authenticated
    one finishes the statement it was running (the drain) and is then closed."""
    g = GatewayProcess(targets=_targets(db), name="pgh12-shutdown").start()
    try:
        idle = pgwire.RawConn.connect(g.host, g.port)
        busy = _session(g)
        busy.send(pgwire.query("SELECT 'pgh12-shutdown', pg_sleep(2)"))
        time.sleep(0.5)
    finally:
        assert g.stop() == []  # SIGTERM; exit status 0, no traceback
    events = g.audit_events()
    idle.close()
    busy.close()
    ends = {e["connection_id"]: e for e in events if e["event"] in ("connection.closed", "connection.refused")}
    opened = [e["connection_id"] for e in events if e["event"] == "connection.opened"]
    assert len(opened) == 2 and set(opened) == set(ends), events
    assert sorted(e["event"] for e in ends.values()) == ["connection.closed", "connection.refused"]
    assert all(e["reason"] == "gateway shutting down" for e in ends.values()), ends
    decided = [e for e in events if e["event"] == "statement.decided" and "pgh12-shutdown" in e["sql"]][0]
    done = [e for e in events if e["event"] == "statement.completed" and e["request_id"] == decided["request_id"]
            and e["connection_id"] == decided["connection_id"]]
    assert done and not done[0].get("error"), events  # it finished within the drain


def test_a_token_password_is_capped_at_what_a_login_needs(db: str, pki, issuer: TestIssuer) -> None:
    """Over TLS a name that is no static identity sends its token as a cleartext password: up to
    256 KiB is read and judged (a refused token: 28P01), more is refused from the header (54000)."""
    with GatewayProcess(targets=_targets(db), name="pgh12-token-cap", listener={"tls": tls_listener(pki)},
                        extra={"oidc": [issuer.oidc_table()]}) as g:
        for size, expected in ((200 << 10, "28P01"), ((256 << 10) + 1, "54000"), (64 << 20, "54000")):
            with pgwire.RawConn.connect(g.host, g.port) as c:
                assert c.request_ssl() == b"S"
                c.start_tls(ca_file=str(pki.ca_file))
                c.send(pgwire.startup_message({"user": "pgh12-token-user", "database": "app"}))
                assert c.read_message().auth_code == pgwire.AUTH_CLEARTEXT
                if expected == "28P01":
                    c.send(pgwire.password_message("x" * (size - 1)))
                    messages, closed = c.read_all_until_closed(5)
                else:
                    messages = _refused_quickly(c, b"p" + struct.pack("!I", size + 4) + b"xxxx")
            assert [(m.severity, m.sqlstate) for m in messages] == [("FATAL", expected)], (size, messages)
