"""Fixtures for integration tests: real PostgreSQL, the real gateway process, real drivers.

Session fixtures
    it_database      creates the database `sqlward_it` on the local PostgreSQL (dropped at the end)
                     with tables `accounts` and `guarded`
    direct_dsn       libpq URI of `sqlward_it` straight on PostgreSQL (superuser, no gateway)
    gateway          a GatewayProcess in front of it: targets `app` (development) and `prod`
                     (production), identities alice (group dba) and bob (no group), rules
                     no-drop, no-truncate, no-delete-without-where (see RULES)
    via              what the driver tests connect through: the gateway; with
                     SQLWARD_IT_VIA=direct (development only) PostgreSQL itself, so a test can be
                     checked against the server before the gateway exists; gateway-only tests skip
    gateway_pki      test CA + certificate for 127.0.0.1 (TLS listeners)
    tls_gateway      the same targets behind a TLS listener (require = false)
    tls_required_gateway   ... with require = true
    server           (function, parametrized gateway/postgres) a raw-protocol Endpoint; the
                     `postgres` instance is the reference run against PostgreSQL itself
    gw_endpoint      the gateway's Endpoint only
    pg_cluster       a private PostgreSQL cluster (tests.support.pgcluster.PgCluster) with one
                     user per authentication method and TLS

Function fixtures
    direct           an autocommit psycopg connection to `sqlward_it` (to verify effects upstream)
    table            a fresh table `t_<hex>(id int primary key, v text)`, dropped afterwards
    app_name         a unique application_name (to find a session in the audit trail)

Every test here is marked `integration`. After each test, every running gateway must still be
alive and must not have printed a Python traceback during the test.
"""

from __future__ import annotations

import contextlib

import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from tests.support import gateway as gwmod
from tests.support.endpoint import Endpoint
from tests.support.gateway import SECRETS, GatewayProcess, make_gateway_certs, target, tls_listener
from tests.support.pgcluster import PgCluster

PGHOST = os.environ.get("SQLWARD_IT_PGHOST", "127.0.0.1")
PGPORT = int(os.environ.get("SQLWARD_IT_PGPORT", "5432"))
IT_DB = "sqlward_it"
VIA = os.environ.get("SQLWARD_IT_VIA", "gateway")

RULES: list[dict[str, Any]] = [
    {"id": "no-drop", "operations": ["drop"], "environments": ["production"], "action": "deny"},
    {"id": "no-truncate", "operations": ["truncate"], "identities": ["bob"], "action": "deny"},
    {
        "id": "no-delete-without-where",
        "operations": ["delete"],
        "has_where": False,
        "environments": ["production"],
        "action": "deny",
    },
]
ENVIRONMENTS = {"production": {"allow_unparsed": False, "default_action": "allow"}}

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def _admin_dsn(dbname: str = "postgres") -> str:
    return f"postgresql://postgres@{PGHOST}:{PGPORT}/{dbname}?sslmode=disable"


def upstream_dsn(extra: str = "") -> str:
    """The DSN a gateway target uses to reach `sqlward_it`."""
    return f"postgresql://postgres@{PGHOST}:{PGPORT}/{IT_DB}?sslmode=disable{extra}"


SCHEMA = """
CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL DEFAULT 0);
INSERT INTO accounts VALUES (1, 'alice', 100.00), (2, 'bob', 50.50), (3, 'carol', 0);
CREATE TABLE guarded (id int PRIMARY KEY, note text);
INSERT INTO guarded VALUES (1, 'must survive');
"""


@contextlib.contextmanager
def scratch_database(name: str, schema: str = "") -> Iterator[str]:
    """A database of a test module's own on the shared server, created afresh (with `schema`
    run in it) and dropped afterwards."""
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {name}")
    if schema:
        with psycopg.connect(_admin_dsn(name), autocommit=True) as c:
            c.execute(schema)
    try:
        yield name
    finally:
        with psycopg.connect(_admin_dsn(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def it_database() -> Iterator[str]:
    with scratch_database(IT_DB, SCHEMA) as name:
        yield name


@pytest.fixture(scope="session")
def direct_dsn(it_database: str) -> str:
    return _admin_dsn(it_database)


@pytest.fixture
def direct(direct_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(direct_dsn, autocommit=True) as c:
        yield c


def default_targets(extra_dsn: str = "") -> list[dict[str, Any]]:
    return [
        target("app", upstream_dsn(extra_dsn), "development"),
        target("prod", upstream_dsn(extra_dsn), "production"),
    ]


@pytest.fixture(scope="session")
def gateway(it_database: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    with GatewayProcess(targets=default_targets(), rules=RULES, environments=ENVIRONMENTS) as gw:
        yield gw


class Via:
    """Where the driver tests connect: the gateway, or (development only) PostgreSQL directly."""

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

    def dsn(self, user: str = "alice", dbname: str = "app", password: str | None = "", **params: Any) -> str:
        """URI for `user` on target `dbname`; password defaults to the identity's secret."""
        if self.gw is None:
            from urllib.parse import urlencode

            q = {"sslmode": "disable", **{k: str(v) for k, v in params.items()}}
            return f"postgresql://postgres@{PGHOST}:{PGPORT}/{IT_DB}?{urlencode(q)}"
        if password == "":
            password = SECRETS.get(user)
        return self.gw.dsn(user, password, dbname, **params)

    def kv_dsn(self, user: str = "alice", dbname: str = "app", **params: Any) -> str:
        if self.gw is None:
            parts = {"host": PGHOST, "port": PGPORT, "user": "postgres", "dbname": IT_DB, **params}
            return " ".join(f"{k}={v}" for k, v in parts.items())
        return self.gw.kv_dsn(user, dbname, **params)

    def password(self, user: str = "alice") -> str:
        return "" if self.gw is None else SECRETS[user]


@pytest.fixture(scope="session")
def via(request: pytest.FixtureRequest, it_database: str) -> Via:
    if VIA == "direct":
        return Via(None)
    return Via(request.getfixturevalue("gateway"))


@pytest.fixture(params=["gateway", "postgres"])
def server(request: pytest.FixtureRequest, it_database: str) -> Endpoint:
    """Raw-protocol endpoint: the gateway (alice on `app`; refusals on `prod`), or PostgreSQL
    itself as the reference (id `postgres`)."""
    if request.param == "gateway":
        gw: GatewayProcess = request.getfixturevalue("gateway")
        return Endpoint("gateway", gw.host, gw.port, "alice", SECRETS["alice"], "app", refuse_database="prod")
    return Endpoint("postgres", PGHOST, PGPORT, "postgres", None, it_database, refuse_database=it_database)


@pytest.fixture
def gw_endpoint(gateway: GatewayProcess) -> Endpoint:
    return Endpoint("gateway", gateway.host, gateway.port, "alice", SECRETS["alice"], "app", refuse_database="prod")


@pytest.fixture(scope="session")
def gateway_pki(tmp_path_factory: pytest.TempPathFactory):
    return make_gateway_certs(tmp_path_factory.mktemp("gateway-tls"))


@pytest.fixture(scope="session")
def tls_gateway(it_database: str, gateway_pki) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    with GatewayProcess(
        targets=default_targets(),
        rules=RULES,
        environments=ENVIRONMENTS,
        listener={"tls": tls_listener(gateway_pki, require=False)},
        name="it-tls",
    ) as gw:
        yield gw


@pytest.fixture(scope="session")
def tls_required_gateway(it_database: str, gateway_pki) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    with GatewayProcess(
        targets=default_targets(),
        rules=RULES,
        environments=ENVIRONMENTS,
        listener={"tls": tls_listener(gateway_pki, require=True)},
        name="it-tls-required",
    ) as gw:
        yield gw


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    with PgCluster() as cluster:
        yield cluster


@pytest.fixture
def table(direct: psycopg.Connection) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    direct.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    yield name
    direct.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def app_name() -> str:
    return f"it-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _gateways_stay_healthy() -> Iterator[None]:
    """Each test must leave every running gateway alive and traceback-free."""
    before = {id(g): (g, g.stderr_size()) for g in list(gwmod.LIVE)}
    yield
    problems = []
    for g, offset in before.values():
        if g in gwmod.LIVE:
            problems += [f"gateway :{g.port}: {p}" for p in g.health_problems(offset)]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
