"""Client-facing authentication of the MySQL listener: caching_sha2_password (fast path; full path
over TLS; full path with the RSA public-key request on plain TCP), mysql_native_password,
mysql_clear_password (TLS only), wrong secrets, unknown targets, the gateway's own connection
ids, and TLS on the client side.

Which path is taken is proven two ways: the raw client (tests.support.mywire) records every
AuthMoreData it gets (`auth_trace`), and real clients are run against listeners whose
`caching_sha2_full_auth` setting leaves them no other path ("never": fast path only; "always":
full path on every login). PyMySQL has no RSA key configured (`server_public_key` unset), so on
a plain connection it must request the key (0x02) to finish the full path.

Seen from these clients in the full path on plain TCP:
  * PyMySQL requests the public key and sends the RSA-encrypted password;
  * the mariadb CLI (libmariadb's caching_sha2_password plugin) requests the key as well;
  * mysql-connector-python sends the password in clear on plain TCP, which a server must
    refuse (its docstring: "encrypting using RSA is not supported").
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Iterator

import mysql.connector
import pymysql
import pytest

from tests.integration.mysql.conftest import (
    IT_DB,
    MY_ENVIRONMENTS,
    MY_RULES,
    VIA,
    default_targets,
    direct_rows,
    mysql_listener,
)
from tests.support import mywire
from tests.support.gateway import SECRETS, GatewayProcess, tls_listener

IDENTITIES = [
    {"name": "alice", "groups": ["dba"], "secret": "alice-secret"},
    {"name": "bob", "secret": "bob-secret"},
    {"name": "carol", "secret": "carol-secret ünïcödé"},
    {"name": "dave", "secret": "dave-secret"},
]
PW = {i["name"]: i["secret"] for i in IDENTITIES}


def _gateway(pki, name: str, full_auth: str, **listener: Any) -> GatewayProcess:
    return GatewayProcess(
        targets=default_targets(),
        identities=IDENTITIES,
        rules=MY_RULES,
        environments=MY_ENVIRONMENTS,
        listener=mysql_listener(tls=tls_listener(pki, require=False), caching_sha2_full_auth=full_auth,
                                default_target="app", **listener),
        name=name,
    )


@pytest.fixture(scope="module")
def fast_gw(mysql_it_database: str, my_pki) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    with _gateway(my_pki, "it-mysql-auth-fast", "never") as gw:
        yield gw


@pytest.fixture(scope="module")
def full_gw(mysql_it_database: str, my_pki) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    with _gateway(my_pki, "it-mysql-auth-full", "always") as gw:
        yield gw


@pytest.fixture(scope="module")
def first_login_gw(mysql_it_database: str, my_pki) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    with _gateway(my_pki, "it-mysql-auth-first", "first-login") as gw:
        yield gw


def raw(gw: GatewayProcess, user: str = "alice", password: str | None = None, database: str | None = "app",
        **kw: Any) -> mywire.RawMySQL:
    return mywire.login(gw.host, gw.port, user, PW[user] if password is None else password, database, **kw)


def py(gw: GatewayProcess, user: str = "alice", password: str | bytes | None = None, database: str | None = "app",
       **kw: Any) -> pymysql.Connection:
    args: dict[str, Any] = dict(host=gw.host, port=gw.port, user=user, password=PW[user] if password is None else password,
                                database=database, connect_timeout=10, autocommit=True, ssl_disabled=True)
    args.update(kw)
    return pymysql.connect(**args)


def connector(gw: GatewayProcess, user: str = "alice", password: str | None = None, database: str = "app",
              **kw: Any):
    args: dict[str, Any] = dict(host=gw.host, port=gw.port, user=user, password=PW[user] if password is None else password,
                                database=database, use_pure=True, connection_timeout=10, autocommit=True,
                                ssl_disabled=True)
    args.update(kw)
    return mysql.connector.connect(**args)


def cli(gw: GatewayProcess, *args: str, user: str = "alice", password: str | None = None, database: str = "app",
        sql: str = "select current_user(), database()") -> subprocess.CompletedProcess[str]:
    cmd = ["mariadb", "--no-defaults", "-h", gw.host, "-P", str(gw.port), "-u", user,
           f"-p{PW[user] if password is None else password}", "--connect-timeout=10", "-N", "-B", *args,
           "-e", sql, database]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env={**os.environ, "LC_ALL": "C.UTF-8"})


def whoami(conn: Any) -> tuple[Any, ...]:
    cur = conn.cursor()
    cur.execute("select current_user(), database()")
    row = tuple(cur.fetchone())
    cur.close()
    return row


UP = f"sqlward_up@%"


# -- the greeting ---------------------------------------------------------------------------------


def test_greeting(fast_gw: GatewayProcess, mysql_gateway: GatewayProcess):
    with mywire.RawMySQL.connect(fast_gw.host, fast_gw.port) as c:
        hs = c.handshake
        assert hs.protocol_version == 10
        assert hs.auth_plugin == "caching_sha2_password"
        assert len(hs.nonce) == 20 and b"\0" not in hs.nonce
        for flag in (mywire.CLIENT_PROTOCOL_41, mywire.CLIENT_SECURE_CONNECTION, mywire.CLIENT_PLUGIN_AUTH,
                     mywire.CLIENT_SSL, mywire.CLIENT_MULTI_STATEMENTS, mywire.CLIENT_MULTI_RESULTS):
            assert hs.capabilities & flag, f"capability {flag:#x} not offered: {hs.capabilities:#x}"
        assert hs.server_version and hs.connection_id > 0
    with mywire.RawMySQL.connect(mysql_gateway.host, mysql_gateway.port) as c:
        assert not c.handshake.capabilities & mywire.CLIENT_SSL, "a listener without TLS must not offer SSL"
    with mywire.RawMySQL.connect(fast_gw.host, fast_gw.port) as a, mywire.RawMySQL.connect(fast_gw.host, fast_gw.port) as b:
        assert a.handshake.connection_id != b.handshake.connection_id
        assert a.handshake.nonce != b.handshake.nonce


# -- caching_sha2_password ---------------------------------------------------------------------


def test_sha2_fast_path_raw(fast_gw: GatewayProcess):
    with raw(fast_gw, plugin="caching_sha2_password") as c:
        assert c.auth_trace == ["plugin:caching_sha2_password", "fast-auth-ok", "ok"]
        assert c.query_rows("select current_user(), database()") == [(UP, IT_DB)]


def test_sha2_fast_path_real_clients(fast_gw: GatewayProcess):
    # caching_sha2_full_auth = "never": a successful login is a fast-path login.
    with py(fast_gw) as c:
        assert whoami(c) == (UP, IT_DB)
    # A non-ASCII secret, sent as UTF-8 bytes (PyMySQL encodes str passwords as latin-1).
    with py(fast_gw, "carol", password=PW["carol"].encode()) as c:
        assert whoami(c) == (UP, IT_DB)
    with connector(fast_gw) as c:
        assert whoami(c) == (UP, IT_DB)
    res = cli(fast_gw, "--skip-ssl")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [UP, IT_DB]


def test_sha2_full_path_over_tls_raw(full_gw: GatewayProcess):
    with raw(full_gw, plugin="caching_sha2_password", tls=True) as c:
        assert c.auth_trace == ["plugin:caching_sha2_password", "full-auth", "ok"]
        assert c.query_rows("select 1") == [(1,)]


def test_sha2_full_path_rsa_on_plain_raw(full_gw: GatewayProcess):
    with raw(full_gw, plugin="caching_sha2_password") as c:
        assert c.auth_trace == ["plugin:caching_sha2_password", "full-auth", "public-key", "ok"]
        assert c.public_key.startswith(b"-----BEGIN PUBLIC KEY-----")
        assert c.query_rows("select 1") == [(1,)]


def test_sha2_full_path_cleartext_on_plain_refused(full_gw: GatewayProcess):
    """A password in clear on plain TCP (what mysql-connector sends) must not be accepted."""
    with pytest.raises(mywire.MySQLError) as ei:
        raw(full_gw, plugin="caching_sha2_password", full_auth="clear")
    assert ei.value.errno == 1045 and ei.value.sqlstate == "28000"


def test_sha2_wrong_scramble_then_full_path(fast_gw: GatewayProcess):
    """A scramble that does not match (a client with a stale cache) gets the full path."""
    with raw(fast_gw, plugin="caching_sha2_password", auth_response=b"\x01" * 32) as c:
        assert c.auth_trace == ["plugin:caching_sha2_password", "full-auth", "public-key", "ok"]
    with raw(fast_gw, plugin="caching_sha2_password", auth_response=b"\x01" * 32, tls=True) as c:
        assert c.auth_trace == ["plugin:caching_sha2_password", "full-auth", "ok"]


def test_sha2_full_path_real_clients(full_gw: GatewayProcess, my_pki):
    # PyMySQL on plain TCP: no server_public_key configured, so it requests the key (0x02).
    with py(full_gw) as c:
        assert whoami(c) == (UP, IT_DB)
    # ... and with the key given up front it encrypts without asking.
    with raw(full_gw, plugin="caching_sha2_password") as r:
        key = r.public_key
    with py(full_gw, "bob", server_public_key=key) as c:
        assert whoami(c) == (UP, IT_DB)
    # Over TLS (verified): the password in clear inside TLS.
    with py(full_gw, ssl_disabled=False, ssl={"ca": str(my_pki.ca_file)}) as c:
        assert c._sock.version().startswith("TLS")
        assert whoami(c) == (UP, IT_DB)
    with connector(full_gw, ssl_disabled=False, ssl_ca=str(my_pki.ca_file), ssl_verify_cert=True) as c:
        assert whoami(c) == (UP, IT_DB)
    res = cli(full_gw, "--ssl", f"--ssl-ca={my_pki.ca_file}", "--ssl-verify-server-cert")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [UP, IT_DB]
    # The mariadb CLI on plain TCP: libmariadb requests the key too.
    res = cli(full_gw, "--skip-ssl")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [UP, IT_DB]


def test_connector_full_path_on_plain_is_refused(full_gw: GatewayProcess):
    """mysql-connector answers perform-full-authentication on plain TCP with the password in
    clear; the gateway must refuse it (access denied), not take it."""
    with pytest.raises(mysql.connector.Error) as ei:
        connector(full_gw)
    assert ei.value.errno == 1045, ei.value


def test_first_login_takes_full_path_then_fast(first_login_gw: GatewayProcess):
    with raw(first_login_gw, "dave", plugin="caching_sha2_password") as c:
        assert c.auth_trace[1:] == ["full-auth", "public-key", "ok"]
    with raw(first_login_gw, "dave", plugin="caching_sha2_password") as c:
        assert c.auth_trace[1:] == ["fast-auth-ok", "ok"]
    # A failed full path does not fill the cache.
    with pytest.raises(mywire.MySQLError):
        raw(first_login_gw, "carol", password="wrong", plugin="caching_sha2_password")
    with raw(first_login_gw, "carol", plugin="caching_sha2_password", tls=True) as c:
        assert c.auth_trace[1:] == ["full-auth", "ok"]


# -- mysql_native_password ---------------------------------------------------------------------------


def test_native_password_raw(fast_gw: GatewayProcess):
    with raw(fast_gw, plugin="mysql_native_password") as c:
        assert c.auth_trace == ["plugin:mysql_native_password", "ok"]
        assert c.query_rows("select current_user()") == [(UP,)]
    with pytest.raises(mywire.MySQLError) as ei:
        raw(fast_gw, password="wrong", plugin="mysql_native_password")
    assert ei.value.errno == 1045 and ei.value.sqlstate == "28000"


def test_native_password_real_clients(fast_gw: GatewayProcess):
    res = cli(fast_gw, "--skip-ssl", "--default-auth=mysql_native_password")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [UP, IT_DB]
    with connector(fast_gw, "bob", auth_plugin="mysql_native_password") as c:
        assert whoami(c) == (UP, IT_DB)
    res = cli(fast_gw, "--skip-ssl", "--default-auth=mysql_native_password", password="wrong")
    assert res.returncode != 0 and "ERROR 1045 (28000)" in res.stderr, res.stderr


def test_native_password_accepted_even_when_full_auth_forced(full_gw: GatewayProcess):
    # caching_sha2_full_auth is about caching_sha2 only; native has no full path.
    with raw(full_gw, "bob", plugin="mysql_native_password") as c:
        assert c.auth_trace == ["plugin:mysql_native_password", "ok"]


def test_auth_switch_from_unknown_plugin(fast_gw: GatewayProcess):
    """A client starting with a plugin the gateway does not take is switched to caching_sha2."""
    with raw(fast_gw, plugin="sha256_password") as c:
        assert c.auth_trace[:2] == ["plugin:sha256_password", "switch:caching_sha2_password"]
        assert c.auth_trace[-1] == "ok"


# -- mysql_clear_password ---------------------------------------------------------------------------


def test_clear_password_over_tls(fast_gw: GatewayProcess, my_pki):
    with raw(fast_gw, plugin="mysql_clear_password", ca_file=str(my_pki.ca_file)) as c:
        assert c.tls and c.auth_trace == ["plugin:mysql_clear_password", "ok"]
        assert c.query_rows("select current_user()") == [(UP,)]
    res = cli(fast_gw, "--ssl", f"--ssl-ca={my_pki.ca_file}", "--ssl-verify-server-cert",
              "--default-auth=mysql_clear_password", "--enable-cleartext-plugin", user="bob")
    assert res.returncode == 0, res.stderr
    with connector(fast_gw, "bob", auth_plugin="mysql_clear_password", ssl_disabled=False,
                   ssl_ca=str(my_pki.ca_file)) as c:
        assert whoami(c) == (UP, IT_DB)
    with pytest.raises(mywire.MySQLError) as ei:
        raw(fast_gw, password="wrong", plugin="mysql_clear_password", tls=True)
    assert ei.value.errno == 1045


def test_clear_password_refused_on_plain_tcp(fast_gw: GatewayProcess):
    with pytest.raises(mywire.MySQLError) as ei:
        raw(fast_gw, plugin="mysql_clear_password")
    assert ei.value.errno in (1045, 1251, 3159), ei.value
    assert "TLS" in ei.value.message or "SSL" in ei.value.message or "secure" in ei.value.message, ei.value
    res = cli(fast_gw, "--skip-ssl", "--default-auth=mysql_clear_password", "--enable-cleartext-plugin")
    assert res.returncode != 0 and "TLS" in res.stderr, res.stderr


# -- failures ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("alice", ""), ("nobody", "x"), ("root", "")])
def test_wrong_password_or_unknown_user(fast_gw: GatewayProcess, user: str, password: str):
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(host=fast_gw.host, port=fast_gw.port, user=user, password=password, database="app",
                        connect_timeout=10, ssl_disabled=True)
    assert ei.value.args[0] == 1045 and f"'{user}'" in ei.value.args[1], ei.value.args
    with pytest.raises(pymysql.err.OperationalError) as ei:  # over TLS: the full path in clear
        pymysql.connect(host=fast_gw.host, port=fast_gw.port, user=user, password=password, database="app",
                        connect_timeout=10)
    assert ei.value.args[0] == 1045, ei.value.args
    fast_gw_alive = py(fast_gw)
    fast_gw_alive.close()


def test_wrong_password_full_path_rsa_pymysql(full_gw: GatewayProcess):
    # Full path on plain TCP with a wrong password: PyMySQL requests the key, encrypts, gets 1045.
    with pytest.raises(pymysql.err.OperationalError) as ei:
        py(full_gw, password="not-the-secret")
    assert ei.value.args[0] == 1045
    res = cli(full_gw, "--skip-ssl", password="not-the-secret")
    assert res.returncode != 0 and "ERROR 1045 (28000)" in res.stderr, res.stderr


def test_unknown_target(fast_gw: GatewayProcess):
    with pytest.raises(pymysql.err.OperationalError) as ei:
        py(fast_gw, database="no_such_target")
    assert ei.value.args[0] in (1049, 1044), ei.value.args
    assert "no_such_target" in ei.value.args[1]
    with pytest.raises(mywire.MySQLError) as ei2:
        raw(fast_gw, database="no_such_target")
    assert ei2.value.errno in (1049, 1044) and ei2.value.sqlstate == "42000"
    res = cli(fast_gw, "--skip-ssl", database="no_such_target")
    assert res.returncode != 0 and "no_such_target" in res.stderr and ("ERROR 1049" in res.stderr or "ERROR 1044" in res.stderr)


def test_upstream_database_name_is_not_a_target(fast_gw: GatewayProcess):
    # The handshake schema names a *target*; the upstream's own database name is not one.
    with pytest.raises(pymysql.err.OperationalError) as ei:
        py(fast_gw, database=IT_DB)
    assert ei.value.args[0] in (1049, 1044)


def test_default_target(fast_gw: GatewayProcess, mysql_tls_gateway: GatewayProcess):
    with py(fast_gw, database=None) as c:
        assert whoami(c) == (UP, IT_DB)
    with raw(fast_gw, database=None) as c:  # no CLIENT_CONNECT_WITH_DB at all
        assert c.query_rows("select database()") == [(IT_DB,)]
    # A listener without default_target: a clear error naming what is missing.
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(host=mysql_tls_gateway.host, port=mysql_tls_gateway.port, user="alice",
                        password=SECRETS["alice"], connect_timeout=10, ssl_disabled=True)
    assert ei.value.args[0] in (1046, 1049, 1044) and "target" in ei.value.args[1], ei.value.args


# -- connection ids ------------------------------------------------------------------------------------


def test_connection_id_is_the_gateways(fast_gw: GatewayProcess, my_direct):
    with py(fast_gw) as a, py(fast_gw) as b:
        gw_a, gw_b = a.thread_id(), b.thread_id()
        with a.cursor() as cur:
            cur.execute("select connection_id()")
            up_a = cur.fetchone()[0]
        with b.cursor() as cur:
            cur.execute("select connection_id()")
            up_b = cur.fetchone()[0]
        assert gw_a != gw_b and up_a != up_b
        assert {gw_a, gw_b}.isdisjoint({up_a, up_b}), (gw_a, gw_b, up_a, up_b)
        # The upstream ids are real sessions of the gateway's upstream user on sqlward_it.
        rows = direct_rows(my_direct, "select id, user, db from information_schema.processlist where id in (%s, %s)",
                           (up_a, up_b))
        assert sorted(rows) == sorted([(up_a, "sqlward_up", IT_DB), (up_b, "sqlward_up", IT_DB)])
        # The gateway ids are not upstream sessions of the gateway's user.
        rows = direct_rows(my_direct, "select id from information_schema.processlist where id in (%s, %s) "
                                      "and user = 'sqlward_up'", (gw_a, gw_b))
        assert rows == []


# -- TLS on the client side ----------------------------------------------------------------------------


def test_tls_clients(mysql_tls_gateway: GatewayProcess, my_pki):
    gw = mysql_tls_gateway
    ca = str(my_pki.ca_file)
    with pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database="app",
                         ssl={"ca": ca, "check_hostname": True}, connect_timeout=10) as c:
        assert c._sock.version() in ("TLSv1.2", "TLSv1.3")
        with c.cursor() as cur:
            cur.execute("select repeat('t', 1000000), current_user()")
            v, who = cur.fetchone()
        assert len(v) == 1000000 and who == UP
    res = subprocess.run(
        ["mariadb", "--no-defaults", "-h", gw.host, "-P", str(gw.port), "-u", "bob", "-pbob-secret", "--ssl",
         f"--ssl-ca={ca}", "--ssl-verify-server-cert", "-e", "status", "app"],
        capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert "Cipher in use is" in res.stdout, res.stdout
    with mywire.login(gw.host, gw.port, "alice", SECRETS["alice"], "app", ca_file=ca) as r:
        assert r.tls and r.query_rows("select 'over tls'") == [("over tls",)]


@pytest.mark.parametrize("server", ["gateway", "mariadb"])
def test_tls_request_and_client_hello_in_one_segment(mysql_tls_gateway: GatewayProcess, my_pki, private_mariadb,
                                                    server: str):
    """The server does not answer an SSLRequest, so clients send their TLS ClientHello right
    behind it; both often arrive in one read. The reference is a TLS-enabled MariaDB."""
    if server == "gateway":
        host, port, ca = mysql_tls_gateway.host, mysql_tls_gateway.port, str(my_pki.ca_file)
    else:
        host, port, ca = private_mariadb.host, private_mariadb.port, private_mariadb.ca_file
    for _ in range(3):
        with mywire.RawMySQL.connect(host, port) as c:
            assert c.tls_handshake_coalesced(ca) in ("TLSv1.2", "TLSv1.3")


def test_tls_wrong_ca_fails_on_the_client(mysql_tls_gateway: GatewayProcess, tmp_path):
    from tests.support.certs import make_pki

    other = make_pki(tmp_path / "other")
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(host=mysql_tls_gateway.host, port=mysql_tls_gateway.port, user="alice",
                        password=SECRETS["alice"], database="app", ssl={"ca": str(other.ca_file)}, connect_timeout=10)
    assert "CERTIFICATE_VERIFY_FAILED" in str(ei.value)


def test_tls_required_listener(mysql_tls_required_gateway: GatewayProcess, my_pki):
    gw = mysql_tls_required_gateway
    with pytest.raises(pymysql.err.OperationalError) as ei:
        pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database="app",
                        ssl_disabled=True, connect_timeout=10)
    assert ei.value.args[0] in (3159, 1045, 1043), ei.value.args
    assert "TLS" in ei.value.args[1] or "SSL" in ei.value.args[1] or "secure" in ei.value.args[1]
    with pytest.raises(mywire.MySQLError) as ei2:
        mywire.login(gw.host, gw.port, "alice", SECRETS["alice"], "app")
    assert ei2.value.errno in (3159, 1045, 1043)
    with pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database="app",
                         ssl={"ca": str(my_pki.ca_file)}, connect_timeout=10) as c:
        with c.cursor() as cur:
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
