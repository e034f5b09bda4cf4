"""Fixtures for the MySQL / MariaDB integration tests: the system MariaDB (127.0.0.1:3306, root
without a password), the real gateway process with a `protocol = "mysql"` listener, real drivers.

Session fixtures
    mysql_it_database   databases `sqlward_it` (tables accounts, guarded, vault) and `sqlward_it2`
                        (table vault) and the upstream user `sqlward_up` (mysql_native_password,
                        ALL on both) on the system MariaDB; all dropped at the end
    mysql_gateway       a GatewayProcess with a mysql listener (default_target `app`), targets `app`
                        (development) and `prod` (production) as sqlward_up on sqlward_it,
                        identities alice (group dba) and bob, rules MY_RULES (the PostgreSQL suite's
                        RULES, the same `no-drop` rule, plus `no-vault`)
    my_via              where the driver tests connect (MyVia): the gateway, or with
                        SQLWARD_IT_VIA=direct (development only) MariaDB itself as root on sqlward_it;
                        gateway-only tests call `my_via.require_gateway()` and skip there
    my_pki              test CA + server certificate for 127.0.0.1 (TLS listeners)
    mysql_tls_gateway   the same targets behind a TLS listener (require = false, no default_target)
    mysql_tls_required_gateway   ... with require = true
    private_mariadb     a PrivateMariaDB (tests.support.mariadb) with TLS and require_secure_transport

Function fixtures
    my_server           (parametrized gateway/mariadb) a raw-protocol MyEndpoint; the `mariadb`
                        instance is the reference run against MariaDB itself
    my_gw               the gateway's MyEndpoint only
    my_direct           an autocommit PyMySQL connection to sqlward_it as root (to verify effects)
    my_table            a fresh table `t_<hex>(id int primary key, v varchar(200))` in sqlward_it
    marker              a unique string to find a statement (and its session) in the audit trail

The parent conftest marks every test `integration` and checks after each test that every running
gateway is alive and printed no Python traceback.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pymysql
import pytest

from tests.integration.conftest import ENVIRONMENTS, RULES
from tests.support import mywire
from tests.support.gateway import SECRETS, GatewayProcess, make_gateway_certs, target, tls_listener
from tests.support.mariadb import SYSTEM_HOST, SYSTEM_PORT, PrivateMariaDB, root_sql, system_root

VIA = os.environ.get("SQLWARD_IT_VIA", "gateway")
IT_DB = "sqlward_it"
IT_DB2 = "sqlward_it2"
UP_USER = "sqlward_up"
UP_PASSWORD = "sqlward-up-pw-3b9d"

# The PostgreSQL suite's rules (the same `no-drop` rule refuses DROP here), plus one on a
# qualified table name so that USE / COM_INIT_DB tracking is visible to policy.
MY_RULES: list[dict[str, Any]] = [
    {"id": "no-vault", "tables": [f"{IT_DB2}.vault"], "action": "deny"},
    *RULES,
]
MY_ENVIRONMENTS = ENVIRONMENTS

REFUSAL_ERRNOS = {1142, 1227}  # ER_TABLEACCESS_DENIED_ERROR, ER_SPECIFIC_ACCESS_DENIED_ERROR

SCHEMA = [
    "CREATE TABLE accounts (id INT PRIMARY KEY, owner VARCHAR(50) NOT NULL, balance DECIMAL(12,2) NOT NULL DEFAULT 0)",
    "INSERT INTO accounts VALUES (1, 'alice', 100.00), (2, 'bob', 50.50), (3, 'carol', 0)",
    "CREATE TABLE guarded (id INT PRIMARY KEY, note VARCHAR(100))",
    "INSERT INTO guarded VALUES (1, 'must survive')",
    "CREATE TABLE vault (id INT PRIMARY KEY, secret VARCHAR(100))",
    "INSERT INTO vault VALUES (1, 'not secret: sqlward_it.vault')",
    # One column per type the binary protocol encodes differently; row 2 is all NULL.
    """CREATE TABLE typed (
        id INT PRIMARY KEY, i INT, bu BIGINT UNSIGNED, ti TINYINT, si SMALLINT, dec6 DECIMAL(20,6),
        dbl DOUBLE, fl FLOAT, d DATE, dt6 DATETIME(6), tm TIME(6), yr YEAR,
        vc VARCHAR(100) CHARACTER SET utf8mb4, bl BLOB, js JSON, en ENUM('red','green'), ch CHAR(3)
    )""",
    """INSERT INTO typed VALUES
        (1, -2147483648, 18446744073709551615, -128, 32767, -12345678901234.123456,
         1.5e300, 0.25, '2024-02-29', '2024-02-29 12:34:56.789012', '-838:59:58.999999', 2024,
         'héllo wörld 😀 ✓', x'00ff10ee', '{"a": [1, 2, null], "k": "v"}', 'green', 'abc'),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (3, 7, 0, 0, -1, 0.000001, -0.0, -3.5, '1000-01-01', '9999-12-31 23:59:59.999999', '00:00:00', 1901,
         '', x'', '[]', 'red', '')""",
]
TYPED_COLUMNS = ("id", "i", "bu", "ti", "si", "dec6", "dbl", "fl", "d", "dt6", "tm", "yr", "vc", "bl", "js", "en", "ch")
SCHEMA2 = [
    "CREATE TABLE vault (id INT PRIMARY KEY, secret VARCHAR(100))",
    "INSERT INTO vault VALUES (1, 'SECRET of sqlward_it2')",
]


def upstream_dsn(database: str = IT_DB, user: str = UP_USER, host: str = SYSTEM_HOST, port: int = SYSTEM_PORT,
                 **params: str) -> str:
    q = "&".join(f"{k}={v}" for k, v in {"sslmode": "disable", **params}.items())
    return f"mysql://{user}@{host}:{port}/{database}?{q}"


def my_target(name: str, environment: str = "development", dsn: str | None = None,
              password: str | None = UP_PASSWORD, **extra: Any) -> dict[str, Any]:
    t = target(name, dsn or upstream_dsn(), environment, protocol="mysql", **extra)
    if password is not None:
        t["password"] = password
    return t


def default_targets() -> list[dict[str, Any]]:
    return [my_target("app", "development"), my_target("prod", "production")]


def mysql_listener(**extra: Any) -> dict[str, Any]:
    return {"protocol": "mysql", **extra}


def is_refusal(err_args: Iterable[Any] | Exception, rule: str = "") -> bool:
    """Does an error (PyMySQL / mysql-connector exception, MySQLError, or args) look like a
    gateway refusal (errno 1142 or 1227) naming `rule`?"""
    errno = getattr(err_args, "errno", None)
    msg = getattr(err_args, "msg", None) or getattr(err_args, "message", None)
    if errno is None:
        args = list(err_args.args if isinstance(err_args, Exception) else err_args)
        errno, msg = (args + [None, None])[:2]
    return errno in REFUSAL_ERRNOS and (not rule or rule in str(msg))


# -- databases --------------------------------------------------------------------------------


def _drop_all() -> None:
    root_sql(
        f"DROP DATABASE IF EXISTS {IT_DB}",
        f"DROP DATABASE IF EXISTS {IT_DB2}",
        f"DROP USER IF EXISTS '{UP_USER}'@'%'",
    )


@pytest.fixture(scope="session")
def mysql_it_database() -> Iterator[str]:
    _drop_all()
    root_sql(
        f"CREATE DATABASE {IT_DB} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
        f"CREATE DATABASE {IT_DB2} CHARACTER SET utf8mb4",
        f"CREATE USER '{UP_USER}'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{UP_PASSWORD}')",
        f"GRANT ALL ON {IT_DB}.* TO '{UP_USER}'@'%'",
        f"GRANT ALL ON {IT_DB2}.* TO '{UP_USER}'@'%'",
        # LOAD DATA (the non-LOCAL form reads server files) needs FILE; not granted on purpose.
    )
    root_sql(*SCHEMA, database=IT_DB)
    root_sql(*SCHEMA2, database=IT_DB2)
    yield IT_DB
    _drop_all()


@pytest.fixture
def my_direct(mysql_it_database: str) -> Iterator[pymysql.Connection]:
    with system_root(mysql_it_database) as c:
        yield c


def direct_rows(conn: pymysql.Connection, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


@pytest.fixture
def my_table(my_direct: pymysql.Connection) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    direct_rows(my_direct, f"CREATE TABLE {name} (id INT PRIMARY KEY, v VARCHAR(200))")
    yield name
    direct_rows(my_direct, f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def marker() -> str:
    return f"mk-{uuid.uuid4().hex[:12]}"


# -- gateways -----------------------------------------------------------------------------------


def _skip_direct() -> None:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")


@pytest.fixture(scope="session")
def mysql_gateway(mysql_it_database: str) -> Iterator[GatewayProcess]:
    _skip_direct()
    with GatewayProcess(
        targets=default_targets(),
        rules=MY_RULES,
        environments=MY_ENVIRONMENTS,
        listener=mysql_listener(default_target="app"),
        name="it-mysql",
    ) as gw:
        yield gw


@pytest.fixture(scope="session")
def my_pki(tmp_path_factory: pytest.TempPathFactory):
    return make_gateway_certs(tmp_path_factory.mktemp("mysql-gateway-tls"))


@pytest.fixture(scope="session")
def mysql_tls_gateway(mysql_it_database: str, my_pki) -> Iterator[GatewayProcess]:
    _skip_direct()
    with GatewayProcess(
        targets=default_targets(),
        rules=MY_RULES,
        environments=MY_ENVIRONMENTS,
        listener=mysql_listener(tls=tls_listener(my_pki, require=False)),
        name="it-mysql-tls",
    ) as gw:
        yield gw


@pytest.fixture(scope="session")
def mysql_tls_required_gateway(mysql_it_database: str, my_pki) -> Iterator[GatewayProcess]:
    _skip_direct()
    with GatewayProcess(
        targets=default_targets(),
        rules=MY_RULES,
        environments=MY_ENVIRONMENTS,
        listener=mysql_listener(tls=tls_listener(my_pki, require=True)),
        name="it-mysql-tls-required",
    ) as gw:
        yield gw


@pytest.fixture(scope="session")
def private_mariadb() -> Iterator[PrivateMariaDB]:
    with PrivateMariaDB() as server:
        yield server


# -- where clients connect ----------------------------------------------------------------------


@dataclass
class MyEndpoint:
    """A raw-protocol endpoint: the gateway (alice on `app`, refusals on `prod`) or MariaDB
    itself as the reference (root on sqlward_it)."""

    name: str  # "gateway" or "mariadb"
    host: str
    port: int
    user: str
    password: str
    database: str
    refuse_database: str = ""

    @property
    def is_gateway(self) -> bool:
        return self.name == "gateway"

    def connect(self, timeout: float = 10.0) -> mywire.RawMySQL:
        """Socket open, handshake read, nothing sent."""
        return mywire.RawMySQL.connect(self.host, self.port, timeout)

    def raw(self, user: str | None = None, password: str | None = None, database: str | None = None,
            **kw: Any) -> mywire.RawMySQL:
        """A logged-in raw session."""
        return mywire.login(self.host, self.port, user or self.user,
                            self.password if password is None else password,
                            self.database if database is None else database, **kw)

    def pymysql(self, **kw: Any) -> pymysql.Connection:
        args = dict(host=self.host, port=self.port, user=self.user, password=self.password,
                    database=self.database, autocommit=True, connect_timeout=10, charset="utf8mb4",
                    ssl_disabled=True)
        args.update(kw)
        return pymysql.connect(**args)

    def assert_serving(self) -> None:
        """A fresh PyMySQL session works."""
        with self.pymysql() as c, c.cursor() as cur:
            cur.execute("select 'still serving'")
            assert cur.fetchone() == ("still serving",)


class MyVia:
    """Where the driver tests connect: the gateway, or (development only) MariaDB directly."""

    def __init__(self, gw: GatewayProcess | None) -> None:
        self.gw = gw
        self.name = "gateway" if gw else "direct"

    @property
    def is_direct(self) -> bool:
        return self.gw is None

    def require_gateway(self) -> GatewayProcess:
        if self.gw is None:
            pytest.skip("needs the gateway (SQLWARD_IT_VIA=direct)")
        return self.gw

    @property
    def host(self) -> str:
        return self.gw.host if self.gw else SYSTEM_HOST

    @property
    def port(self) -> int:
        return self.gw.port if self.gw else SYSTEM_PORT

    def kw(self, user: str = "alice", target: str = "app", password: str | None = None) -> dict[str, Any]:
        """host, port, user, password, database for `user` on `target` (driver keywords)."""
        if self.gw is None:
            return {"host": SYSTEM_HOST, "port": SYSTEM_PORT, "user": "root", "password": "", "database": IT_DB}
        return {"host": self.gw.host, "port": self.gw.port, "user": user,
                "password": SECRETS[user] if password is None else password, "database": target}

    def pymysql(self, user: str = "alice", target: str = "app", **kw: Any) -> pymysql.Connection:
        args: dict[str, Any] = dict(self.kw(user, target), autocommit=True, connect_timeout=10,
                                    charset="utf8mb4", ssl_disabled=True)
        args.update(kw)
        return pymysql.connect(**args)

    def endpoint(self, user: str = "alice") -> MyEndpoint:
        k = self.kw(user)
        return MyEndpoint(self.name if self.gw else "mariadb", k["host"], k["port"], k["user"], k["password"],
                          k["database"], "prod" if self.gw else IT_DB)

    def url(self, driver: str = "pymysql", user: str = "alice", target: str = "app") -> str:
        """SQLAlchemy URL."""
        k = self.kw(user, target)
        from urllib.parse import quote

        auth = quote(k["user"], safe="") + (":" + quote(k["password"], safe="") if k["password"] else "")
        return f"mysql+{driver}://{auth}@{k['host']}:{k['port']}/{k['database']}?charset=utf8mb4"


@pytest.fixture(scope="session")
def my_via(request: pytest.FixtureRequest, mysql_it_database: str) -> MyVia:
    if VIA == "direct":
        return MyVia(None)
    return MyVia(request.getfixturevalue("mysql_gateway"))


@pytest.fixture(params=["gateway", "mariadb"])
def my_server(request: pytest.FixtureRequest, mysql_it_database: str) -> MyEndpoint:
    """Raw-protocol endpoint: the gateway, or MariaDB itself as the reference (id `mariadb`)."""
    if request.param == "gateway":
        gw: GatewayProcess = request.getfixturevalue("mysql_gateway")
        return MyEndpoint("gateway", gw.host, gw.port, "alice", SECRETS["alice"], "app", "prod")
    return MyEndpoint("mariadb", SYSTEM_HOST, SYSTEM_PORT, "root", "", IT_DB, IT_DB)


@pytest.fixture
def my_gw(mysql_gateway: GatewayProcess) -> MyEndpoint:
    return MyEndpoint("gateway", mysql_gateway.host, mysql_gateway.port, "alice", SECRETS["alice"], "app", "prod")


# -- audit helpers --------------------------------------------------------------------------------


def session_of_marker(gw: GatewayProcess, marker: str, since: int = 0, timeout: float = 5.0,
                      closed: bool = True) -> list[dict[str, Any]]:
    """All audit events of the connection that sent a statement containing `marker` (once that
    connection has closed, unless closed=False)."""

    def cid_of(evs: list[dict[str, Any]]) -> str | None:
        for e in evs:
            if e.get("event") == "statement.decided" and marker in (e.get("sql") or ""):
                return e.get("connection_id")
        return None

    def ready(evs: list[dict[str, Any]]) -> bool:
        cid = cid_of(evs)
        if cid is None:
            return False
        return not closed or any(e.get("event") == "connection.closed" and e.get("connection_id") == cid for e in evs)

    evs = gw.wait_audit(ready, since=since, timeout=timeout)
    cid = cid_of(evs)
    assert cid, f"no statement.decided containing {marker!r} in the audit trail"
    return [e for e in evs if e.get("connection_id") == cid]
