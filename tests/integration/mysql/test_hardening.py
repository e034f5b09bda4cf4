"""Issue 12, hardened edges of the MySQL / MariaDB adapter (attacker tests).

* Identity labels cannot inject: the statement that shows the identity upstream is immune to the
  client's character set (a hex literal converted to utf8mb4), at login, after COM_CHANGE_USER
  and after COM_RESET_CONNECTION.
* Pre-authentication bounds: handshake and auth packets over the login-sized cap are refused
  from their header, before the body is read.
* Every `connection.opened` is followed by `connection.closed` or `connection.refused`.
* The audit fails closed for every execution path, and the session goes on.
* Login edges: one refusal text for a wrong user and a wrong secret; advice that is true.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from tests.integration.mysql.conftest import MY_ENVIRONMENTS, default_targets, direct_rows, mysql_listener
from tests.support import mywire
from tests.support.gateway import DEFAULT_IDENTITIES, SECRETS, GatewayProcess
from tests.support.inprocess import InProcessGateway
from tests.support.mariadb import SYSTEM_HOST, SYSTEM_PORT

# A subject whose UTF-8 bytes end in a GBK / Big5 / SJIS lead byte right before the quote
# escaping's backslash: with the label in a quoted string read in such a charset, the escape is
# swallowed and the quote closes the string early.
EVIL_SUBJECT = "myh12\u4e2d\\', @sqlward_identity = 0x61646d696e, @myh12_pwned = 1 #"
EVIL_SECRET = "evil-secret-1"

ALL_CHARSETS = [
    "armscii8", "ascii", "big5", "binary", "cp1250", "cp1251", "cp1256", "cp1257", "cp850", "cp852", "cp866",
    "cp932", "dec8", "eucjpms", "euckr", "gb2312", "gbk", "geostd8", "greek", "hebrew", "hp8", "keybcs2", "koi8r",
    "koi8u", "latin1", "latin2", "latin5", "latin7", "macce", "macroman", "sjis", "swe7", "tis620", "ujis",
    "utf8mb3", "utf8mb4",
]


@pytest.mark.parametrize("charset", ALL_CHARSETS)
def test_identity_statement_is_immune_to_every_client_charset(charset: str) -> None:
    """The exact bytes the gateway sends, run on MariaDB itself in every client charset it
    allows: the variable holds the label and nothing else is assigned."""
    from sqlward.adapters.mysql.session import identity_statement

    label = f"sqlward:{EVIL_SUBJECT}"
    conn = pymysql.connect(host=SYSTEM_HOST, port=SYSTEM_PORT, user="root", password="", charset="utf8mb4",
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET NAMES {charset}")
            # send the gateway's bytes untouched (PyMySQL would re-encode a str)
            conn._execute_command(pymysql.constants.COMMAND.COM_QUERY, identity_statement(label))
            conn._read_query_result()
            cur.execute("SET NAMES utf8mb4")
            cur.execute("SELECT HEX(CONVERT(@sqlward_identity USING utf8mb4)), @myh12_pwned")
            hexed, pwned = cur.fetchone()
    finally:
        conn.close()
    assert bytes.fromhex(hexed).decode("utf-8") == label and pwned is None


GBK_CI = 28  # gbk_chinese_ci
LATIN1_SWEDISH_CI = 8

EVIL_IDENTITIES = [*DEFAULT_IDENTITIES, {"name": EVIL_SUBJECT, "secret": EVIL_SECRET}]


@pytest.fixture(scope="module")
def evil_gw(mysql_it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(targets=default_targets(), identities=EVIL_IDENTITIES, environments=MY_ENVIRONMENTS,
                        listener=mysql_listener(default_target="app"), name="myh12-label") as g:
        yield g


def raw_login(g: GatewayProcess, user: str, password: str, database: str | None = "app", *,
              charset: int = 45, attrs: dict[str, str] | None = None,
              capabilities: int = mywire.DEFAULT_CAPABILITIES) -> mywire.RawMySQL:
    """A raw login with the collation id `charset` in the handshake response."""
    c = mywire.RawMySQL.connect(g.host, g.port)
    try:
        assert c.handshake is not None
        c._password = password.encode()
        c.plugin = c.handshake.auth_plugin or mywire.NATIVE
        first = c.scramble(c.plugin, password.encode(), c.nonce)
        c.send_packet(c.handshake_response(user, first, database, c.plugin, capabilities, attrs=attrs,
                                           charset=charset), 1)
        c._auth_loop()
    except BaseException:
        c.close()
        raise
    return c


def _label_seen(c: mywire.RawMySQL) -> tuple[str, Any]:
    row = c.query_rows("SELECT HEX(CONVERT(@sqlward_identity USING utf8mb4)), @myh12_pwned", decode=True)[0]
    return bytes.fromhex(row[0]).decode("utf-8"), row[1]


@pytest.mark.parametrize("charset", [LATIN1_SWEDISH_CI, 45])
def test_label_is_shown_exactly_at_login_change_user_and_reset(evil_gw: GatewayProcess, charset: int) -> None:
    label = f"sqlward:{EVIL_SUBJECT}"
    with raw_login(evil_gw, EVIL_SUBJECT, EVIL_SECRET, charset=charset) as c:
        assert _label_seen(c) == (label, None)
        c.reset_connection()
        assert _label_seen(c) == (label, None)
        c.change_user("alice", SECRETS["alice"], "app", charset=charset)
        assert _label_seen(c) == ("sqlward:alice", None)
        c.change_user(EVIL_SUBJECT, EVIL_SECRET, "app", charset=charset)
        assert _label_seen(c) == (label, None)


# -- a gateway of this module's own (alice, bob; TLS listener for the TLS cases) ---------------


@pytest.fixture(scope="module")
def gw(mysql_it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(targets=default_targets(), environments=MY_ENVIRONMENTS,
                        listener=mysql_listener(default_target="app"), name="myh12-edges") as g:
        yield g
        g.audit_writable()


def gateway_rss(g: GatewayProcess) -> int:
    """The gateway process's resident set, bytes."""
    assert g.proc is not None
    with open(f"/proc/{g.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def lifecycle(g: GatewayProcess, gateway_conn_id: int, timeout: float = 5.0) -> list[str]:
    """The connection-level events of the session the greeting numbered `gateway_conn_id`,
    once it has a closing one."""
    prefix = f"my-{gateway_conn_id}-"

    def mine(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in evs if str(e.get("connection_id", "")).startswith(prefix)]

    def ended(evs: list[dict[str, Any]]) -> bool:
        return any(e["event"] in ("connection.closed", "connection.refused") for e in mine(evs))

    return [e["event"] for e in mine(g.wait_audit(ended, timeout=timeout))]


def test_oversized_handshake_response_is_refused_from_its_header(gw: GatewayProcess) -> None:
    """A 16 MiB HandshakeResponse is refused as soon as its header arrives (ERR 1153), before
    its body, and the connection's lifecycle is closed in the audit trail."""
    c = mywire.RawMySQL.connect(gw.host, gw.port)
    with c:
        assert c.handshake is not None
        c.send_raw(mywire.header(0xFFFFFE, 1) + b"\0" * 1024)
        c.seq = 2
        c.sock.settimeout(5)
        err = mywire.parse_err(c.read_packet())
        assert (err.errno, err.sqlstate) == (1153, "08S01") and "before authentication" in err.message, err
        assert mywire.wait_closed(c)
        assert lifecycle(gw, c.handshake.connection_id) == ["connection.opened", "connection.refused"]


def test_oversized_login_packets_do_not_grow_the_gateway(gw: GatewayProcess) -> None:
    """Eight clients each sending 15 MiB of a 16 MiB handshake response and holding on: the
    gateway closes them before the bodies arrive, so its memory does not grow by their size."""
    before = gateway_rss(gw)
    socks = []
    body = b"A" * (1 << 20)
    for _ in range(8):
        c = mywire.RawMySQL.connect(gw.host, gw.port)
        socks.append(c)
        c.send_raw(mywire.header(0xFFFFFE, 1))
    for c in socks:
        try:
            for _ in range(15):
                c.sock.sendall(body)
        except OSError:
            pass  # closed by the gateway: what we want
    time.sleep(1.0)  # let the gateway read whatever reached it
    grown = gateway_rss(gw) - before
    for c in socks:
        c.close()
    assert grown < 24 << 20, f"gateway RSS grew by {grown >> 20} MiB"


def test_oversized_auth_switch_response_is_refused(gw: GatewayProcess) -> None:
    """The packets after the handshake response (auth switch, caching_sha2 full path) are
    capped the same way."""
    c = mywire.RawMySQL.connect(gw.host, gw.port)
    with c:
        assert c.handshake is not None
        # ask for mysql_native_password with an empty answer: the gateway switches to caching_sha2
        c.send_packet(c.handshake_response("alice", b"", "app", "unknown_plugin"), 1)
        switch = c.read_packet()
        assert switch[:1] == b"\xfe", switch
        c.send_raw(mywire.header(1 << 20, c.seq) + b"\0" * 100)
        c.seq += 1
        err = mywire.parse_err(c.read_packet())
        assert err.errno == 1153 and "before authentication" in err.message, err
        assert lifecycle(gw, c.handshake.connection_id) == ["connection.opened", "connection.refused"]


def test_largest_legitimate_login_still_works(gw: GatewayProcess) -> None:
    """Connection attributes of 40 KiB (a long token would be as large) stay under the cap."""
    attrs = {"_client_name": "myh12", "big": "x" * 40000}
    with raw_login(gw, "alice", SECRETS["alice"], attrs=attrs) as c:
        assert c.query_rows("select 1") == [(1,)]


# -- every connection.opened is followed by connection.closed or connection.refused -----------


def test_malformed_handshake_response_is_refused_in_the_audit(gw: GatewayProcess) -> None:
    c = mywire.RawMySQL.connect(gw.host, gw.port)
    with c:
        assert c.handshake is not None
        c.send_packet(b"\x05\x82\x00", 1)  # truncated client head
        pkts, closed = c.read_all_until_closed(5)
        assert closed and pkts and pkts[-1][:1] == b"\xff"
        assert lifecycle(gw, c.handshake.connection_id) == ["connection.opened", "connection.refused"]


def test_client_gone_mid_authentication_is_refused_in_the_audit(gw: GatewayProcess) -> None:
    c = mywire.RawMySQL.connect(gw.host, gw.port)
    assert c.handshake is not None
    conn_id = c.handshake.connection_id
    c.send_packet(c.handshake_response("alice", b"", "app", "unknown_plugin"), 1)
    assert c.read_packet()[:1] == b"\xfe"  # the gateway waits for the switch answer
    c.close()
    assert lifecycle(gw, conn_id) == ["connection.opened", "connection.refused"]


def test_client_gone_before_answering_the_greeting_is_refused_in_the_audit(gw: GatewayProcess) -> None:
    c = mywire.RawMySQL.connect(gw.host, gw.port)
    assert c.handshake is not None
    c.close()
    assert lifecycle(gw, c.handshake.connection_id) == ["connection.opened", "connection.refused"]


# -- the audit fails closed for every execution ---------------------------------------------



def _audit_refused(exc: BaseException) -> bool:
    """The refusal of a request whose record cannot be written: 1227 / 42000 naming the rule
    `audit-unavailable`, as the pipeline refuses statements (errors.AuditRefused)."""
    return (isinstance(exc, mywire.MySQLError) and (exc.errno, exc.sqlstate) == (1227, "42000")
            and "audit-unavailable" in exc.message)


def test_prepared_execution_is_refused_when_its_record_cannot_be_written(
    gw: GatewayProcess, my_direct: pymysql.Connection, my_table: str,
) -> None:
    """A statement prepared while the trail worked, executed while it does not: the upstream
    never runs it, the client gets 1105 and the session goes on; the retry applies it once."""
    with raw_login(gw, "alice", SECRETS["alice"]) as c:
        st = c.stmt_prepare(f"insert into {my_table} values (?, 'myh12-prepared')")
        try:
            gw.audit_full()
            with pytest.raises(mywire.MySQLError) as ei:
                c.stmt_execute(st, [1])
            assert _audit_refused(ei.value), ei.value
            assert direct_rows(my_direct, f"select count(*) from {my_table}") == [(0,)]
            with pytest.raises(mywire.MySQLError) as ei:  # still refused, session still there
                c.stmt_execute(st, [1])
            assert _audit_refused(ei.value), ei.value
        finally:
            gw.audit_writable()
        c.stmt_execute(st, [1])  # the retry, once the trail is writable
        assert direct_rows(my_direct, f"select id from {my_table}") == [(1,)]
        assert c.query_rows("select 'still here'") == [("still here",)]
    # the execution has its record before its completion
    events = [e for e in gw.audit_events() if e.get("statement_name") == str(st.stmt_id) or
              (e["event"] == "statement.completed" and e.get("prepared_ref"))]
    assert events


def test_prepared_execution_through_pymysql_and_connector_is_refused(
    gw: GatewayProcess, my_direct: pymysql.Connection, my_table: str,
) -> None:
    """mysql-connector's prepared cursor (COM_STMT_EXECUTE) sees the 1105 and keeps its session."""
    import mysql.connector

    conn = mysql.connector.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                   database="app", use_pure=True, ssl_disabled=True, autocommit=True)
    try:
        cur = conn.cursor(prepared=True)
        cur.execute(f"insert into {my_table} values (%s, 'myh12-connector')", (1,))
        try:
            gw.audit_full()
            with pytest.raises(mysql.connector.Error) as ei:
                cur.execute(f"insert into {my_table} values (%s, 'myh12-connector')", (2,))
            assert ei.value.errno == 1227 and "audit-unavailable" in ei.value.msg, ei.value
        finally:
            gw.audit_writable()
        cur.execute(f"insert into {my_table} values (%s, 'myh12-connector')", (2,))
        assert direct_rows(my_direct, f"select id from {my_table} order by id") == [(1,), (2,)]
    finally:
        conn.close()


def test_reset_connection_and_init_db_are_refused_when_their_record_cannot_be_written(gw: GatewayProcess) -> None:
    with raw_login(gw, "alice", SECRETS["alice"]) as c:
        c.query("set @myh12_kept = 42")
        try:
            gw.audit_full()
            with pytest.raises(mywire.MySQLError) as ei:
                c.reset_connection()
            assert _audit_refused(ei.value), ei.value
            with pytest.raises(mywire.MySQLError) as ei:
                c.init_db("sqlward_it2")
            assert _audit_refused(ei.value), ei.value
            with pytest.raises(mywire.MySQLError) as ei:
                c.field_list("accounts")
            assert _audit_refused(ei.value), ei.value
            with pytest.raises(mywire.MySQLError) as ei:
                c.process_kill(999999)
            assert _audit_refused(ei.value), ei.value
        finally:
            gw.audit_writable()
        # nothing of either reached the server: the variable and the database are as they were
        assert c.query_rows("select @myh12_kept, database()") == [(42, "sqlward_it")]
        c.init_db("sqlward_it2")
        assert c.query_rows("select database()") == [("sqlward_it2",)]


def test_statement_cut_off_by_the_upstreams_death_gets_its_completed_record(
    gw: GatewayProcess, my_direct: pymysql.Connection, marker: str,
) -> None:
    with raw_login(gw, "alice", SECRETS["alice"]) as c:
        up_id = c.query_rows("select connection_id()")[0][0]
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["rows"] = c.query_rows(f"select '{marker}', sleep(5)")
            except (mywire.MySQLError, mywire.Closed, OSError) as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 3
        while not gw.decided(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        direct_rows(my_direct, f"KILL CONNECTION {int(up_id)}")
        worker.join(10)
        assert "rows" not in outcome
    cid = gw.decided(marker)[0]["connection_id"]
    evs = gw.wait_audit(lambda evs: any(e["event"] == "connection.closed" and e.get("connection_id") == cid
                                        for e in evs))
    rid = gw.decided(marker)[0]["request_id"]
    done = [e for e in evs if e.get("connection_id") == cid and e["event"] == "statement.completed"
            and e["request_id"] == rid]
    assert len(done) == 1 and done[0]["tags"] == ["ERROR"] and done[0]["error"], done
    assert [e["event"] for e in evs if e.get("connection_id") == cid][-1] == "connection.closed"


# -- login edges: one refusal for a wrong name and a wrong secret, true advice ----------------


def _refusal_of(fn: Any) -> tuple[Any, ...]:
    try:
        fn()
    except (pymysql.err.MySQLError, mywire.MySQLError) as exc:
        if isinstance(exc, mywire.MySQLError):
            return (exc.errno, exc.sqlstate, exc.message)
        return (exc.args[0], None, exc.args[1])
    except Exception as exc:  # mysql-connector
        return (getattr(exc, "errno", None), getattr(exc, "sqlstate", None), getattr(exc, "msg", str(exc)))
    raise AssertionError("login succeeded")


@pytest.mark.parametrize("client", ["pymysql", "connector", "raw-sha2", "raw-native"])
def test_wrong_user_and_wrong_secret_get_the_same_refusal(gw: GatewayProcess, client: str) -> None:
    # alice has logged in since the gateway started (caching_sha2's fast path is open for her)
    with raw_login(gw, "alice", SECRETS["alice"]):
        pass

    def attempt(user: str, password: str) -> tuple[Any, ...]:
        if client == "pymysql":
            return _refusal_of(lambda: pymysql.connect(host=gw.host, port=gw.port, user=user, password=password,
                                                       database="app", ssl_disabled=True, connect_timeout=5))
        if client == "connector":
            import mysql.connector

            return _refusal_of(lambda: mysql.connector.connect(
                host=gw.host, port=gw.port, user=user, password=password, database="app", use_pure=True,
                ssl_disabled=True, connection_timeout=5))
        plugin = mywire.SHA2 if client == "raw-sha2" else mywire.NATIVE
        trace: list[str] = []

        def go() -> None:
            c = mywire.RawMySQL.connect(gw.host, gw.port)
            try:
                c.login(user, password, "app", plugin=plugin)
            finally:
                trace.extend(c.auth_trace)
                c.close()

        return (*_refusal_of(go), tuple(trace))

    wrong_secret = attempt("alice", "not-her-secret")
    unknown_user = attempt("myh12_nobody", "not-her-secret")
    assert wrong_secret[0] == 1045 and "(using password: YES)" in wrong_secret[2], wrong_secret
    assert unknown_user == tuple(x.replace("alice", "myh12_nobody") if isinstance(x, str) else x
                                 for x in wrong_secret), (unknown_user, wrong_secret)


def test_tls_advice_is_not_given_on_a_listener_without_tls(gw: GatewayProcess) -> None:
    c = mywire.RawMySQL.connect(gw.host, gw.port)
    with c, pytest.raises(mywire.MySQLError) as ei:
        c.login("alice", SECRETS["alice"], "app", plugin=mywire.CLEAR)
    assert "--ssl" not in ei.value.message and "no TLS" in ei.value.message, ei.value


@pytest.fixture(scope="module")
def tls_gw(mysql_it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    from tests.support.gateway import make_gateway_certs, tls_listener

    pki = make_gateway_certs(tmp_path_factory.mktemp("myh12-tls"))
    with GatewayProcess(targets=default_targets(), environments=MY_ENVIRONMENTS,
                        listener=mysql_listener(default_target="app", tls=tls_listener(pki, require=False)),
                        name="myh12-tls") as g:
        yield g


def test_tls_advice_is_given_on_a_listener_with_tls(tls_gw: GatewayProcess) -> None:
    c = mywire.RawMySQL.connect(tls_gw.host, tls_gw.port)
    with c, pytest.raises(mywire.MySQLError) as ei:
        c.login("alice", SECRETS["alice"], "app", plugin=mywire.CLEAR)
    assert "--ssl" in ei.value.message, ei.value


def test_tls_failure_ends_the_lifecycle_with_a_refusal(tls_gw: GatewayProcess) -> None:
    c = mywire.RawMySQL.connect(tls_gw.host, tls_gw.port)
    with c:
        assert c.handshake is not None
        req = struct.pack("<IIB", (mywire.DEFAULT_CAPABILITIES | mywire.CLIENT_SSL) & c.handshake.capabilities,
                          1 << 24, 45) + b"\0" * 23
        c.send_packet(req, 1)
        c.send_raw(b"\x16\x03\x01\x00\x05hello-not-tls" + b"\0" * 64)
        c.read_all_until_closed(5)
        events = lifecycle(tls_gw, c.handshake.connection_id)
    assert events == ["connection.opened", "connection.refused"], events


# -- the login throttle hooks and the authentication timeout (gateway run in this process) -----


def _gateway(tmp: Any, gate_refuses: str = "") -> InProcessGateway:
    return InProcessGateway(tmp, protocol="mysql", name="myh12-inproc", targets=default_targets(),
                            listener={"default_target": "app"}, gate_refuses=gate_refuses)


def test_login_hooks_are_called_for_every_mechanism(mysql_it_database: str, tmp_path: Any) -> None:
    with _gateway(tmp_path, gate_refuses="myh12_blocked") as g:
        with pytest.raises(pymysql.err.OperationalError):
            pymysql.connect(host="127.0.0.1", port=g.port, user="alice", password="wrong", database="app",
                            ssl_disabled=True, connect_timeout=5)
        assert g.hook_calls("alice") == ["gate", "failed"]
        pymysql.connect(host="127.0.0.1", port=g.port, user="alice", password=SECRETS["alice"], database="app",
                        ssl_disabled=True, connect_timeout=5).close()
        assert g.hook_calls("alice") == ["gate", "failed", "gate", "succeeded"]
        assert all(host == "127.0.0.1" for _k, host, _u in g.calls)
        # mysql_native_password, then COM_CHANGE_USER with a wrong and a right secret
        c = mywire.login("127.0.0.1", g.port, "alice", SECRETS["alice"], "app", plugin=mywire.NATIVE)
        with c:
            c.change_user("bob", SECRETS["bob"], "app")
        c = mywire.login("127.0.0.1", g.port, "alice", SECRETS["alice"], "app")
        with c, pytest.raises(mywire.MySQLError):
            c.change_user("bob", "wrong", "app")
        assert g.hook_calls("bob") == ["gate", "succeeded", "gate", "failed"]
        # the gate refuses outright: nothing is judged, nothing counted
        with pytest.raises(pymysql.err.OperationalError) as ei:
            pymysql.connect(host="127.0.0.1", port=g.port, user="myh12_blocked", password="x", database="app",
                            ssl_disabled=True, connect_timeout=5)
        assert ei.value.args[0] == 1045 and "too many failed logins" in ei.value.args[1], ei.value
        assert g.hook_calls("myh12_blocked") == ["gate"]


def test_authentication_timeout_ends_the_lifecycle_with_a_refusal(
    mysql_it_database: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlward.adapters.mysql import session as my_session

    monkeypatch.setattr(my_session, "AUTH_TIMEOUT", 0.5)
    with _gateway(tmp_path) as g:
        c = mywire.RawMySQL.connect("127.0.0.1", g.port)
        with c:
            assert c.handshake is not None
            c.seq = 1
            err = mywire.parse_err(c.read_packet())
            assert err.errno == 1043 and "timed out" in err.message, err
        prefix = f"my-{c.handshake.connection_id}-"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            mine = [e["event"] for e in g.events() if e.get("connection_id", "").startswith(prefix)]
            if "connection.refused" in mine:
                break
            time.sleep(0.05)
        assert mine == ["connection.opened", "connection.refused"], mine


# -- COM_CHANGE_USER applies [[access]] exactly like the handshake ---------------------------------

ACCESS = [
    {"targets": ["prod"], "groups": ["dba"], "action": "allow"},
    {"targets": ["app"], "action": "allow"},
]


@pytest.fixture(scope="module")
def access_gw(mysql_it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(targets=default_targets(), environments=MY_ENVIRONMENTS, extra={"access": ACCESS},
                        listener=mysql_listener(default_target="app"), name="myh12-access") as g:
        yield g


def test_login_and_change_user_get_the_same_access_verdict(access_gw: GatewayProcess) -> None:
    """bob may reach app but not prod: refused at login and in COM_CHANGE_USER alike (1044),
    whatever the session was before; alice (dba) reaches prod both ways."""
    expected = "identity bob may not reach target prod (no [[access]] rule allows it)"
    with pytest.raises(mywire.MySQLError) as ei:
        raw_login(access_gw, "bob", SECRETS["bob"], "prod").close()
    assert (ei.value.errno, ei.value.message) == (1044, expected)
    with raw_login(access_gw, "alice", SECRETS["alice"], "prod") as c:
        c.query("set @myh12_before = 'alice state'")
        with pytest.raises(mywire.MySQLError) as ei:
            c.change_user("bob", SECRETS["bob"], "prod")
        assert (ei.value.errno, ei.value.message) == (1044, expected)
        assert mywire.wait_closed(c)
    # an allowed switch of identity and target in CHANGE USER (bob on app -> alice on prod): nothing of
    # the previous session survives
    with raw_login(access_gw, "bob", SECRETS["bob"], "app") as c:
        c.query("set @myh12_before = 'bob state'")
        c.change_user("alice", SECRETS["alice"], "prod")
        assert c.query_rows("select @myh12_before, @sqlward_identity, database()") == [
            (None, "sqlward:alice", "sqlward_it")]


def test_connector_change_user_to_a_target_refused_by_access(access_gw: GatewayProcess) -> None:
    import mysql.connector

    conn = mysql.connector.connect(host=access_gw.host, port=access_gw.port, user="alice",
                                   password=SECRETS["alice"], database="app", use_pure=True, ssl_disabled=True)
    try:
        conn.cmd_change_user(username="bob", password=SECRETS["bob"], database="app")  # allowed
        cur = conn.cursor()
        cur.execute("select @sqlward_identity")
        assert cur.fetchall() == [("sqlward:bob",)]
        cur.close()
        with pytest.raises(mysql.connector.Error) as ei:
            conn.cmd_change_user(username="bob", password=SECRETS["bob"], database="prod")
        assert ei.value.errno == 1044 and "may not reach target prod" in ei.value.msg, ei.value
    finally:
        try:
            conn.close()
        except Exception:
            pass
    refused = [e for e in access_gw.audit_events()
               if e["event"] == "connection.refused" and e.get("user") == "bob" and e.get("target") == "prod"]
    assert refused


def test_long_data_of_a_refused_execution_is_not_applied_on_the_retry(
    gw: GatewayProcess, my_direct: pymysql.Connection, my_table: str,
) -> None:
    """COM_STMT_SEND_LONG_DATA accumulates on the server until the statement runs: an execution
    the gateway refuses must not leave it there, or the client's retry (long data again, then
    execute) writes it twice."""
    with raw_login(gw, "alice", SECRETS["alice"]) as c:
        st = c.stmt_prepare(f"insert into {my_table} values (?, ?)")
        c.stmt_send_long_data(st, 1, b"myh12-long")
        try:
            gw.audit_full()
            with pytest.raises(mywire.MySQLError) as ei:
                c.stmt_execute(st, [1, None], long_data=[1])
            assert _audit_refused(ei.value), ei.value
        finally:
            gw.audit_writable()
        c.stmt_send_long_data(st, 1, b"myh12-long")  # the retry
        c.stmt_execute(st, [1, None], long_data=[1])
    assert direct_rows(my_direct, f"select id, v from {my_table}") == [(1, "myh12-long")]


def test_long_data_retry_through_mysql_connector(gw: GatewayProcess, my_direct: pymysql.Connection,
                                                 my_table: str) -> None:
    """The same with mysql-connector, which streams file-like parameters as long data."""
    import io

    import mysql.connector

    conn = mysql.connector.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                   database="app", use_pure=True, ssl_disabled=True, autocommit=True)
    try:
        cur = conn.cursor(prepared=True)
        sql = f"insert into {my_table} values (%s, %s)"
        cur.execute(sql, (1, "prepared"))
        try:
            gw.audit_full()
            with pytest.raises(mysql.connector.Error) as ei:
                cur.execute(sql, (2, io.BytesIO(b"myh12-stream")))
            assert ei.value.errno == 1227 and "audit-unavailable" in ei.value.msg, ei.value
        finally:
            gw.audit_writable()
        cur.execute(sql, (2, io.BytesIO(b"myh12-stream")))
    finally:
        conn.close()
    assert direct_rows(my_direct, f"select id, v from {my_table} order by id") == [(1, "prepared"), (2, "myh12-stream")]


@pytest.fixture(scope="module")
def infile_gw(mysql_it_database: str) -> Iterator[GatewayProcess]:
    from tests.integration.mysql.conftest import my_target

    with GatewayProcess(targets=[my_target("app", allow_local_infile=True)], environments=MY_ENVIRONMENTS,
                        listener=mysql_listener(default_target="app"), name="myh12-infile") as g:
        yield g
        g.audit_writable()


@pytest.mark.parametrize("client", ["pymysql", "connector"])
def test_load_data_local_is_refused_before_the_file_is_asked_for_when_unrecorded(
    infile_gw: GatewayProcess, my_direct: pymysql.Connection, my_table: str, tmp_path: Any, client: str,
) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("1,one\n2,two\n")
    sql = f"load data local infile '{csv}' into table {my_table} fields terminated by ','"
    if client == "pymysql":
        conn: Any = pymysql.connect(host=infile_gw.host, port=infile_gw.port, user="alice", password=SECRETS["alice"],
                                    database="app", local_infile=True, ssl_disabled=True, autocommit=True)
    else:
        import mysql.connector

        conn = mysql.connector.connect(host=infile_gw.host, port=infile_gw.port, user="alice",
                                       password=SECRETS["alice"], database="app", use_pure=True, ssl_disabled=True,
                                       autocommit=True, allow_local_infile=True,
                                       allow_local_infile_in_path=str(tmp_path))
    try:
        cur = conn.cursor()
        try:
            infile_gw.audit_full()
            with pytest.raises(Exception) as ei:
                cur.execute(sql)
            assert "audit-unavailable" in str(ei.value), ei.value
        finally:
            infile_gw.audit_writable()
        assert direct_rows(my_direct, f"select count(*) from {my_table}") == [(0,)]
        cur.execute(sql)  # the retry loads the file once
        cur.close()
    finally:
        conn.close()
    assert direct_rows(my_direct, f"select id from {my_table} order by id") == [(1,), (2,)]
