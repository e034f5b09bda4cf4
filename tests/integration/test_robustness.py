"""Hostile and broken clients, lost upstreams, and the edges of the startup phase, on raw sockets.

Most cases run twice: against the gateway and, as the reference, against PostgreSQL itself
(`server` fixture, ids `gateway` / `postgres`), so the expected answer is PostgreSQL's own
behaviour, not a guess. After every malformed exchange a fresh psycopg session must still work.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from typing import Iterator

import psycopg
import pytest

from tests.integration.conftest import IT_DB, VIA, default_targets
from tests.support import pgwire
from tests.support.endpoint import Endpoint
from tests.support.gateway import GatewayProcess
from tests.support.pgcluster import wait_for


@pytest.fixture(scope="module")
def small_gateway(it_database: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    with GatewayProcess(targets=default_targets(), listener={"max_message_size": 65536}, name="it-small") as gw:
        yield gw


def _expect_error_or_close(c: pgwire.RawConn, timeout: float = 5.0) -> list[pgwire.Message]:
    """The server answers a broken message with ErrorResponse(s) and/or closes; it must not hang."""
    msgs, closed = c.read_all_until_closed(timeout)
    assert closed or any(m.type == "E" for m in msgs), f"no error and no close within {timeout}s: {msgs}"
    assert all(m.type in "EN" for m in msgs), msgs
    return msgs


def _upstream_sessions(direct: psycopg.Connection) -> int:
    return direct.execute(
        "select count(*) from pg_stat_activity where datname = %s and backend_type = 'client backend' "
        "and pid <> pg_backend_pid()",
        (IT_DB,),
    ).fetchone()[0]


# -- before startup ---------------------------------------------------------------------------


def test_connect_and_close_without_a_byte(server: Endpoint):
    for _ in range(3):
        socket.create_connection((server.host, server.port), timeout=5).close()
    server.assert_serving()


def test_garbage_first_bytes(server: Endpoint):
    with server.connect() as c:
        c.send(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        _expect_error_or_close(c)
    server.assert_serving()


def test_tls_client_hello_on_plain_listener(server: Endpoint):
    # A TLS ClientHello record header where a length word is expected.
    with server.connect() as c:
        c.send(bytes.fromhex("160301020001") + b"\x00" * 512)
        _expect_error_or_close(c)
    server.assert_serving()


def test_truncated_startup_then_eof(server: Endpoint):
    with server.connect() as c:
        full = server.startup()
        c.send(full[:11])
        c.sock.shutdown(socket.SHUT_WR)
        _expect_error_or_close(c)
    server.assert_serving()


@pytest.mark.parametrize("length", [0, 4, 7, 20000, 0x7FFFFFFF])
def test_startup_bad_length(server: Endpoint, length: int):
    with server.connect() as c:
        c.send(struct.pack("!II", length, pgwire.PROTOCOL_3_0) + b"user\0x\0\0")
        msgs = _expect_error_or_close(c)
        for m in msgs:
            assert m.severity == "FATAL", m
    server.assert_serving()


def test_startup_without_user(server: Endpoint):
    with server.connect() as c:
        c.send(pgwire.startup_message({"database": server.database}))
        msgs, closed = c.read_all_until_closed(5)
        assert closed and msgs and msgs[0].type == "E", msgs
        assert msgs[0].severity == "FATAL" and msgs[0].sqlstate == "28000", msgs
    server.assert_serving()


def test_unsupported_protocol_major_4(server: Endpoint):
    with server.connect() as c:
        c.send(pgwire.startup_message({"user": server.user, "database": server.database}, 4 << 16))
        msgs, closed = c.read_all_until_closed(5)
        assert closed and msgs and msgs[0].type == "E", msgs
        assert msgs[0].severity == "FATAL" and msgs[0].sqlstate == "0A000", msgs
    server.assert_serving()


def test_protocol_2_refused(server: Endpoint):
    # PostgreSQL answers a 2.0 startup with a protocol-2 style error ('E' + text, no length)
    # and closes; anything that starts with 'E' and then closes is fine.
    with server.connect() as c:
        c.send(pgwire.startup_message({"user": server.user, "database": server.database}, 2 << 16))
        closed = c.wait_closed(5)
        assert closed, "no close after a protocol 2.0 startup"
        assert c.buf[:1] == b"E", c.buf[:100]
    server.assert_serving()


def test_gssenc_request_refused(gw_endpoint: Endpoint):
    # (No PostgreSQL reference: the local server is built with GSSAPI and may answer 'G'.)
    with gw_endpoint.connect() as c:
        c.send(pgwire.gssenc_request())
        assert c.read_byte() == b"N"
        # The client may go on with a normal startup on the same connection.
        c.send(gw_endpoint.startup())
        c.authenticate(gw_endpoint.user, gw_endpoint.password)
        assert [m.type for m in c.simple("select 1")] == ["T", "D", "C", "Z"]


def test_libpq_gssencmode_prefer_falls_back(via):
    with psycopg.connect(via.dsn("alice", "app", gssencmode="prefer"), autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_ssl_request_without_tls_configured(gateway: GatewayProcess):
    ep = Endpoint("gateway", gateway.host, gateway.port, "alice", "alice-secret", "app")
    with ep.connect() as c:
        assert c.request_ssl() == b"N"
        c.send(ep.startup())
        c.authenticate(ep.user, ep.password)
        assert c.simple("select 'plain'")[1].values == [b"plain"]


def test_protocol_3_2_is_negotiated_down(server: Endpoint):
    with server.connect() as c:
        c.send(pgwire.startup_message(
            {"user": server.user, "database": server.database, "_pq_.sqlward_test": "1"}, pgwire.PROTOCOL_3_2
        ))
        first = c.read_message()
        assert first.type == "v", f"want NegotiateProtocolVersion, got {first}"
        version, n = struct.unpack("!II", first.payload[:8])
        names = [x.decode() for x in first.payload[8:].split(b"\0") if x]
        # The docs call this Int32 "newest minor protocol version supported"; PostgreSQL sends
        # the full version number (PG_PROTOCOL_LATEST, 3 << 16 | minor) and libpq >= 18 reads
        # it that way. Minor 0 = protocol 3.0.
        assert version & 0xFFFF == 0, f"minor version {version & 0xFFFF}"
        assert version >> 16 == 3, f"NegotiateProtocolVersion carries {version:#x}; PostgreSQL sends 0x30000"
        assert n == len(names) and "_pq_.sqlward_test" in names
        seen = c.authenticate(server.user, server.password)
        assert seen[-1].type == "Z"
        # BackendKeyData of protocol 3.0: a 4-byte secret.
        assert c.secret_key is not None and len(c.secret_key) == 4
        assert c.simple("select 32")[1].values == [b"32"]


def test_libpq_max_protocol_version_3_2(via):
    # libpq >= 18 asks for 3.2 when told to; the server may answer 3.0 and the session proceeds.
    if psycopg.pq.version() < 180000:
        pytest.skip("libpq < 18")
    with psycopg.connect(via.dsn("alice", "app", max_protocol_version="3.2"), autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)


# -- after authentication ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 2, 3])
def test_bad_message_length(server: Endpoint, length: int):
    with server.session() as c:
        c.send(b"Q" + struct.pack("!I", length))
        msgs, closed = c.read_all_until_closed(5)
        errors = [m for m in msgs if m.type == "E"]
        assert closed
        if server.name == "postgres":
            return  # PostgreSQL only logs "invalid message length" and closes
        # The gateway is asked to say why (issue 2: "a clear error").
        assert errors, msgs
        assert errors[0].sqlstate == "08P01", errors
    server.assert_serving()


def test_unknown_message_type(server: Endpoint):
    with server.session() as c:
        c.send(b"\x01" + struct.pack("!I", 4))
        msgs, closed = c.read_all_until_closed(5)
        errors = [m for m in msgs if m.type == "E"]
        assert errors and errors[0].sqlstate == "08P01", msgs
        assert closed
    server.assert_serving()


def test_truncated_message_then_eof(server: Endpoint):
    with server.session() as c:
        c.send(b"Q" + struct.pack("!I", 100) + b"select")
        c.sock.shutdown(socket.SHUT_WR)
        _expect_error_or_close(c)
    server.assert_serving()


def test_oversized_message(small_gateway: GatewayProcess):
    ep = Endpoint("gateway", small_gateway.host, small_gateway.port, "alice", "alice-secret", "app")
    # Below the limit is fine.
    with ep.session() as c:
        reply = c.simple("select length('" + "x" * 60000 + "')")
        assert reply[1].values == [b"60000"]
    with ep.session() as c:
        size = 2 * 1024 * 1024
        c.send(b"Q" + struct.pack("!I", size + 4) + b"select '" + b"y" * 1000)
        msgs, closed = c.read_all_until_closed(3)
        if not msgs and not closed:
            # The gateway may read and discard the body first: send the rest.
            try:
                c.send(b"y" * (size - 1008) + b"'\0")
            except OSError:
                pass
            msgs, closed = c.read_all_until_closed(10)
        errors = [m for m in msgs if m.type == "E"]
        assert errors, f"no ErrorResponse for a message over max_message_size: {msgs} closed={closed}"
        assert errors[0].sqlstate in ("08P01", "54000"), errors[0]
    ep.assert_serving()


def test_abrupt_disconnects_release_upstream(server: Endpoint, direct):
    baseline = _upstream_sessions(direct)
    conns = [server.session() for _ in range(4)]
    conns[0].send(pgwire.query("select pg_sleep(0.2)"))  # one mid-query
    conns[1].send(pgwire.terminate())  # one polite
    conns[2].sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    for c in conns:
        c.close()
    n = wait_for(lambda: _upstream_sessions(direct) <= baseline, timeout=8)
    assert n, f"upstream sessions not released: {_upstream_sessions(direct)} > {baseline}"
    server.assert_serving()


def test_many_concurrent_sessions(via):
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with psycopg.connect(via.dsn("alice", "app"), autocommit=True, connect_timeout=15) as c:
                assert c.execute("select %s::int, pg_sleep(0.2)", (i,)).fetchone()[0] == i
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


# -- upstream lost ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_upstream_killed_mid_query(server: Endpoint, direct):
    marker = uuid.uuid4().hex
    with server.session() as c:
        c.send(pgwire.query(f"select pg_sleep(30), '{marker}'"))
        pid = wait_for(lambda: direct.execute(
            "select pid from pg_stat_activity where state = 'active' and query like %s and pid <> pg_backend_pid()",
            (f"%{marker}%",)).fetchone(), timeout=5)
        assert pid, "the query never reached PostgreSQL"
        direct.execute("select pg_terminate_backend(%s)", (pid[0],))
        msgs, closed = c.read_all_until_closed(10)
        errors = [m for m in msgs if m.type == "E"]
        assert errors and errors[-1].severity == "FATAL", msgs
        assert closed, "the client connection must close after the FATAL"
    server.assert_serving()


@pytest.mark.timeout(60)
def test_upstream_killed_psycopg(gateway: GatewayProcess, direct):
    marker = uuid.uuid4().hex
    conn = psycopg.connect(gateway.dsn("alice", "alice-secret", "app"), autocommit=True)
    try:
        upstream_pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        threading.Timer(0.5, lambda: direct.execute("select pg_terminate_backend(%s)", (upstream_pid,))).start()
        with pytest.raises(psycopg.OperationalError):
            conn.execute(f"select pg_sleep(30), '{marker}'")
        assert conn.closed or conn.broken
    finally:
        conn.close()
    with psycopg.connect(gateway.dsn("alice", "alice-secret", "app")) as c2:
        assert c2.execute("select 1").fetchone() == (1,)


# -- authentication and targets -----------------------------------------------------------------


def test_wrong_password_fatal_28P01(gw_endpoint: Endpoint):
    with pytest.raises(pgwire.PgError) as ei:
        pgwire.open_session(gw_endpoint.host, gw_endpoint.port, "alice", "wrong-password", "app")
    assert ei.value.severity == "FATAL" and ei.value.sqlstate == "28P01", ei.value
    gw_endpoint.assert_serving()


def test_unknown_user_gets_the_refusal_of_a_wrong_password(gw_endpoint: Endpoint):
    """Without [[oidc]] a name that is not a static identity cannot log in, and is refused exactly
    as a static identity with a wrong password is (28P01 after a SCRAM exchange), so a client
    cannot enumerate static identities (issue 12; before, it got 28000 "only over TLS")."""
    for user in ("nobody-such", "alice"):
        with pytest.raises(pgwire.PgError) as ei:
            pgwire.open_session(gw_endpoint.host, gw_endpoint.port, user, "wrong-password", "app")
        assert ei.value.severity == "FATAL" and ei.value.sqlstate == "28P01", ei.value
        assert f'password authentication failed for user "{user}"' in str(ei.value), ei.value
    gw_endpoint.assert_serving()


def test_wrong_password_psycopg(gateway: GatewayProcess):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(gateway.dsn("alice", "wrong-password", "app"))


def test_unknown_target_fatal_3D000(gw_endpoint: Endpoint):
    with pytest.raises(pgwire.PgError) as ei:
        pgwire.open_session(gw_endpoint.host, gw_endpoint.port, "alice", "alice-secret", "no_such_target")
    assert ei.value.severity == "FATAL" and ei.value.sqlstate == "3D000", ei.value
    gw_endpoint.assert_serving()


def test_no_cleartext_password_without_tls(gw_endpoint: Endpoint):
    for user in ("alice", "nobody-such"):  # without [[oidc]] an unknown name looks like a static one
        with gw_endpoint.connect() as c:
            c.send(pgwire.startup_message({"user": user, "database": "app"}))
            first = c.read_message()
            assert first.type == "R", first
            assert first.auth_code != pgwire.AUTH_CLEARTEXT, "cleartext password offered over plain TCP"
            assert first.auth_code == pgwire.AUTH_SASL
            mechs = [x.decode() for x in first.payload[4:].split(b"\0") if x]
            # Without TLS there is no channel to bind to.
            assert mechs == ["SCRAM-SHA-256"], mechs


def test_no_cleartext_password_over_tls_without_token_login(tls_gateway: GatewayProcess, gateway_pki):
    """Over TLS, without [[oidc]], a user who is not a static identity is asked for SCRAM like a
    static one (no token can log in, and the auth request must not tell the names apart); with
    [[oidc]] it is asked for a cleartext password, the seam for tokens (tests/integration/
    test_identity.py)."""
    with pgwire.RawConn.connect(tls_gateway.host, tls_gateway.port) as c:
        assert c.request_ssl() == b"S"
        c.start_tls(ca_file=str(gateway_pki.ca_file))
        c.send(pgwire.startup_message({"user": "token-user", "database": "app"}))
        first = c.read_message()
        assert first.type == "R" and first.auth_code == pgwire.AUTH_SASL, first


def test_tls_session_authenticates(tls_gateway: GatewayProcess, gateway_pki):
    with pgwire.open_session(tls_gateway.host, tls_gateway.port, "alice", "alice-secret", "app", tls=True,
                             ca_file=str(gateway_pki.ca_file)) as c:
        assert c.simple("select 'tls'")[1].values == [b"tls"]


def test_tls_required_refuses_plaintext(tls_required_gateway: GatewayProcess):
    with pgwire.RawConn.connect(tls_required_gateway.host, tls_required_gateway.port) as c:
        c.send(pgwire.startup_message({"user": "alice", "database": "app"}))
        msgs, closed = c.read_all_until_closed(5)
        assert msgs and msgs[0].type == "E" and msgs[0].severity == "FATAL", msgs
        text = " ".join(msgs[0].fields.values())
        assert "TLS" in text or "SSL" in text, msgs[0].fields
        assert closed
    with pytest.raises(psycopg.OperationalError, match="FATAL"):
        psycopg.connect(tls_required_gateway.dsn("alice", "alice-secret", "app", sslmode="disable"))
    with psycopg.connect(tls_required_gateway.dsn("alice", "alice-secret", "app", sslmode="require")) as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_psycopg_tls_and_channel_binding(tls_gateway: GatewayProcess, gateway_pki):
    dsn = tls_gateway.dsn("alice", "alice-secret", "app", sslmode="verify-full", sslrootcert=str(gateway_pki.ca_file))
    with psycopg.connect(dsn) as c:
        assert c.execute("select 1").fetchone() == (1,)
        assert c.pgconn.ssl_in_use
    # libpq's default channel_binding=prefer uses SCRAM-SHA-256-PLUS whenever it is offered,
    # so this fails if the gateway offers channel binding and gets it wrong.
    with psycopg.connect(dsn + "&channel_binding=prefer") as c:
        assert c.execute("select 2").fetchone() == (2,)


def test_direct_tls_negotiation(tls_gateway: GatewayProcess, gateway_pki):
    """DESIGN §4 lists direct TLS (PostgreSQL 17 `sslnegotiation=direct`, ALPN "postgresql")."""
    if psycopg.pq.version() < 170000:
        pytest.skip("libpq < 17")
    dsn = tls_gateway.dsn("alice", "alice-secret", "app", sslmode="require", sslnegotiation="direct")
    with psycopg.connect(dsn) as c:
        assert c.execute("select 1").fetchone() == (1,)


# -- cancel ------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cancel_request_with_wrong_secret_cancels_nothing(server: Endpoint):
    with server.session() as c:
        assert c.backend_pid is not None and c.secret_key is not None
        wrong = bytes(b ^ 0x5A for b in c.secret_key)
        c.send(pgwire.query("select pg_sleep(1.5), 'survived'"))
        time.sleep(0.3)
        # The server closes a cancel connection without answering, whatever the outcome.
        assert pgwire.send_cancel(server.host, server.port, c.backend_pid, wrong)
        assert pgwire.send_cancel(server.host, server.port, (c.backend_pid + 12345) & 0x7FFFFFFF, c.secret_key)
        reply = c.read_until("Z")
        assert [m.type for m in reply] == ["T", "D", "C", "Z"], reply
        assert reply[1].values[1] == b"survived"
        # The right secret does cancel.
        c.send(pgwire.query("select pg_sleep(10)"))
        time.sleep(0.3)
        t0 = time.monotonic()
        assert pgwire.send_cancel(server.host, server.port, c.backend_pid, c.secret_key)
        reply = c.read_until("Z")
        assert time.monotonic() - t0 < 5
        errors = [m for m in reply if m.type == "E"]
        assert errors and errors[0].sqlstate == "57014", reply
        assert c.simple("select 'after cancel'")[1].values == [b"after cancel"]


def test_backend_key_data_not_upstream(gw_endpoint: Endpoint):
    with gw_endpoint.session() as c:
        upstream_pid = int(c.simple("select pg_backend_pid()")[1].values[0])
        assert c.backend_pid != upstream_pid


@pytest.mark.parametrize("params", [
    {"options": "-c role=postgres"},
    {"options": "--session_authorization=postgres"},
    {"role": "postgres"},
])
def test_startup_settings_cannot_change_the_upstream_role(gateway: GatewayProcess, params: dict):
    """`role` / `session_authorization` given at connection start would change who the upstream
    thinks we are before any statement is decided: refused with a FATAL naming the setting."""
    with pytest.raises(pgwire.PgError) as ei:  # raw startup packet: libpq has no "role" option
        pgwire.open_session(gateway.host, gateway.port, "alice", "alice-secret", "app", params=params)
    assert ei.value.sqlstate == "42501" and "not allowed through sqlward" in str(ei.value)
    with psycopg.connect(gateway.dsn("alice", "alice-secret", "app")) as c:
        assert c.execute("select 1").fetchone() == (1,)
