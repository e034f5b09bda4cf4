"""The gateway logs into its MySQL upstreams: mysql_native_password and MariaDB's client_ed25519 on
the system MariaDB, and TLS towards a private MariaDB (tests.support.mariadb) that requires
secure transport: sslmode require / verify-ca / verify-full with the test CA work, a wrong CA
and sslmode=disable fail with a clear error; wrong passwords and unreachable upstreams too.
The client (alice) always logs into the gateway the same way and picks the case by target name.

caching_sha2_password towards the upstream needs a MySQL server (MariaDB has no server side of
it): covered by the lead's unit tests against the auth module, not here.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pymysql
import pytest

from tests.integration.mysql.conftest import IT_DB, VIA, direct_rows, my_target, mysql_listener, upstream_dsn
from tests.support.gateway import SECRETS, GatewayProcess, free_port
from tests.support.mariadb import PrivateMariaDB, root_sql

NATIVE_USER, NATIVE_PW = "sqlward_native_u", "native-pw-81f2"
ED_USER, ED_PW = "sqlward_ed_u", "ed25519-pw-5a9e ünï"


@pytest.fixture(scope="module")
def upstream_users(mysql_it_database: str) -> Iterator[None]:
    (n,), = root_sql("select count(*) from information_schema.plugins where plugin_name = 'ed25519' "
                     "and plugin_status = 'ACTIVE'")
    installed_here = False
    if not n:
        root_sql("INSTALL SONAME 'auth_ed25519'")
        installed_here = True
    for u in (NATIVE_USER, ED_USER):
        root_sql(f"DROP USER IF EXISTS '{u}'@'%'")
    root_sql(
        f"CREATE USER '{NATIVE_USER}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{NATIVE_PW}')",
        f"CREATE USER '{ED_USER}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{ED_PW}')",
        f"GRANT ALL ON {IT_DB}.* TO '{NATIVE_USER}'@'%'",
        f"GRANT ALL ON {IT_DB}.* TO '{ED_USER}'@'%'",
    )
    try:
        yield
    finally:
        for u in (NATIVE_USER, ED_USER):
            root_sql(f"DROP USER IF EXISTS '{u}'@'%'")
        if installed_here:
            root_sql("UNINSTALL SONAME 'auth_ed25519'")


def _targets(m: PrivateMariaDB) -> list[dict[str, Any]]:
    p = m.passwords
    return [
        my_target("up_native", dsn=upstream_dsn(user=NATIVE_USER), password=NATIVE_PW),
        my_target("up_ed25519", dsn=upstream_dsn(user=ED_USER), password=ED_PW),
        my_target("up_wrong_pw", dsn=upstream_dsn(user=NATIVE_USER), password="not-the-password"),
        my_target("up_down", dsn=upstream_dsn(port=free_port(), connect_timeout="3"), password="x"),
        my_target("tls_require", dsn=m.dsn("native_user", sslmode="require"), password=p["native_user"]),
        my_target("tls_prefer", dsn=m.dsn("native_user", sslmode="prefer"), password=p["native_user"]),
        my_target("tls_verify_ca", dsn=m.dsn("tls_user", sslmode="verify-ca", sslrootcert=m.ca_file),
                  password=p["tls_user"]),
        my_target("tls_verify_full", dsn=m.dsn("tls_user", sslmode="verify-full", sslrootcert=m.ca_file),
                  password=p["tls_user"]),
        my_target("tls_verify_full_localhost",
                  dsn=m.dsn("tls_user", sslmode="verify-full", sslrootcert=m.ca_file).replace("127.0.0.1", "localhost"),
                  password=p["tls_user"]),
        my_target("tls_wrong_ca", dsn=m.dsn("tls_user", sslmode="verify-full", sslrootcert=m.wrong_ca_file),
                  password=p["tls_user"]),
        my_target("tls_disabled", dsn=m.dsn("native_user", sslmode="disable"), password=p["native_user"]),
    ]


@pytest.fixture(scope="module")
def up_gateway(upstream_users: None, private_mariadb: PrivateMariaDB) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    with GatewayProcess(targets=_targets(private_mariadb), listener=mysql_listener(default_target="up_native"),
                        name="it-mysql-upstream") as gw:
        yield gw


def connect(gw: GatewayProcess, target: str, **kw: Any) -> pymysql.Connection:
    return pymysql.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"], database=target,
                           connect_timeout=15, autocommit=True, ssl_disabled=True, **kw)


def one(conn: pymysql.Connection, sql: str) -> tuple[Any, ...]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


def test_native_upstream(up_gateway: GatewayProcess):
    with connect(up_gateway, "up_native") as c:
        assert one(c, "select current_user(), database()") == (f"{NATIVE_USER}@%", IT_DB)
        assert one(c, "select count(*) from accounts") == (3,)
        assert one(c, "show session status like 'Ssl_version'") in ((("Ssl_version", "")), None)


def test_ed25519_upstream(up_gateway: GatewayProcess, my_direct):
    (plugin,), = direct_rows(my_direct, "select plugin from mysql.user where user = %s", (ED_USER,))
    assert plugin == "ed25519"
    for _ in range(3):  # a fresh signature per connection
        with connect(up_gateway, "up_ed25519") as c:
            assert one(c, "select current_user(), database()") == (f"{ED_USER}@%", IT_DB)


@pytest.mark.parametrize("name,user", [
    ("tls_require", "native_user"), ("tls_prefer", "native_user"), ("tls_verify_ca", "tls_user"),
    ("tls_verify_full", "tls_user"), ("tls_verify_full_localhost", "tls_user"),
])
def test_upstream_tls(up_gateway: GatewayProcess, name: str, user: str):
    with connect(up_gateway, name) as c:
        assert one(c, "select current_user()") == (f"{user}@%",)
        # Session status of the upstream connection: TLS between the gateway and MariaDB.
        _, version = one(c, "show session status like 'Ssl_version'")
        assert version.startswith("TLSv1"), version
        assert one(c, "select v from t where id = 1") == ("private",)


@pytest.mark.parametrize("name,words", [
    ("tls_wrong_ca", ("certificate", "verify", "TLS", "SSL")),
    ("tls_disabled", ("insecure", "secure transport", "SSL", "TLS")),
    ("up_wrong_pw", ("Access denied", "denied")),
    ("up_down", ("connect", "refused", "reach", "unavailable")),
])
def test_upstream_failures_are_clear(up_gateway: GatewayProcess, name: str, words: tuple[str, ...]):
    t = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as ei:
        connect(up_gateway, name)
    assert time.monotonic() - t < 12, "the client waited too long for the upstream failure"
    errno, message = ei.value.args[0], str(ei.value.args[1])
    assert errno not in (2013, 2006), f"the gateway hung up without an ERR packet: {ei.value.args}"
    assert any(w.lower() in message.lower() for w in words), ei.value.args
    # Secrets never reach the client.
    assert "not-the-password" not in message
    with connect(up_gateway, "up_native") as c:
        assert one(c, "select 1") == (1,)


def test_upstream_password_not_in_gateway_output(up_gateway: GatewayProcess, private_mariadb: PrivateMariaDB):
    with pytest.raises(pymysql.err.OperationalError):
        connect(up_gateway, "up_wrong_pw")
    text = up_gateway.stderr_text() + up_gateway.stdout_text() + up_gateway.audit_text()
    for secret in (NATIVE_PW, ED_PW, "not-the-password", *private_mariadb.passwords.values()):
        assert secret not in text
