"""Issue 12, identity and tokens, end to end on the MySQL / MariaDB side (the twin of
tests/integration/test_identity_issue12.py): the real gateway, the system MariaDB, PyMySQL over
real TLS, a test OIDC issuer whose JWKS is served over local HTTPS. Nothing is mocked.

* a token can never log in under a static identity's name in any spelling, nor name one as its
  subject or actor;
* a token inside the login leeway logs in and its statements run;
* tokens that are not access tokens (typ dpop+jwt, logout+jwt) are refused;
* the audit's `who` carries the token's issuer (needs adapters/base.py
  `SessionContext.set_identity` to copy `Identity.issuer` into `Who`);
* failed logins are throttled per address and user name, audited, and do not slow a client from
  another address (needs adapters/mysql/session.py calling the login hooks).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pymysql
import pytest

from tests.integration.mysql.conftest import default_targets, mysql_listener
from tests.integration.test_identity import is_authenticated, is_refused, uniq, wait_event
from tests.support.gateway import GatewayProcess, tls_listener
from tests.support.oidc import TestIssuer, actor_chain


@pytest.fixture(scope="module")
def my_issuer12(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestIssuer]:
    with TestIssuer(tmp_path_factory.mktemp("my-idp-12")) as iss:
        yield iss


@pytest.fixture(scope="module")
def my_gw12(mysql_it_database: str, my_pki, my_issuer12: TestIssuer) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=default_targets(),
        listener=mysql_listener(tls=tls_listener(my_pki, require=False)),
        extra={"oidc": [my_issuer12.oidc_table(leeway_seconds=60)], "identity": {"on_token_expiry": "close"}},
        name="it-mysql-identity-12",
    ) as gw:
        yield gw


@pytest.fixture
def ca(my_pki) -> Path:
    return my_pki.ca_file


def my_connect(gw: GatewayProcess, ca: Path | None, user: str, password: str, **kw: Any) -> pymysql.Connection:
    args: dict[str, Any] = dict(host=gw.host, port=gw.port, user=user, password=password, database="app",
                                autocommit=True, connect_timeout=15, charset="utf8mb4")
    if ca is None:
        args["ssl_disabled"] = True
    else:
        args["ssl"] = {"ca": str(ca)}
    args.update(kw)
    return pymysql.connect(**args)


def refused_login(gw: GatewayProcess, ca: Path, user: str, token: str) -> tuple[int, str]:
    with pytest.raises(pymysql.err.OperationalError) as info:
        my_connect(gw, ca, user, token).close()
    return info.value.args[0], str(info.value.args[1])


def one(conn: pymysql.Connection, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


# -- A. one canonical form of a name --------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["ALICE", "Alice", "ａｌｉｃｅ", "al\u200bice", "alice "])
def test_a_token_never_logs_in_under_a_static_name(my_gw12: GatewayProcess, ca: Path, my_issuer12: TestIssuer, spelling: str) -> None:
    since = my_gw12.audit_offset()
    errno, _message = refused_login(my_gw12, ca, spelling, my_issuer12.mint(sub=spelling))
    assert errno == 1045
    wait_event(my_gw12, since, is_refused(spelling), f"connection.refused for {spelling!r}")
    assert not [e for e in my_gw12.audit_events(since) if e.get("event") == "connection.authenticated"]


def test_a_token_naming_a_static_identity_as_subject_or_actor_is_refused(my_gw12: GatewayProcess, ca: Path, my_issuer12: TestIssuer) -> None:
    agent = uniq("my-agent")
    assert refused_login(my_gw12, ca, agent, my_issuer12.mint(sub="BOB", act=actor_chain(agent)))[0] == 1045
    person = uniq("my-person")
    assert refused_login(my_gw12, ca, person, my_issuer12.mint(sub=person, act=actor_chain("Bob")))[0] == 1045


# -- B. expiry with the login leeway; typ; the issuer in the audit ------------------------------


def test_a_token_inside_the_leeway_logs_in_and_its_statements_run(my_gw12: GatewayProcess, ca: Path, my_issuer12: TestIssuer) -> None:
    sub = uniq("my-leeway")
    with my_connect(my_gw12, ca, sub, my_issuer12.mint(sub=sub, ttl=-20)) as c:
        assert one(c, "select 41 + 1") == 42
        assert one(c, "select 'still here'") == "still here"


@pytest.mark.parametrize("typ", ["dpop+jwt", "logout+jwt"])
def test_tokens_that_are_not_access_tokens_are_refused(my_gw12: GatewayProcess, ca: Path, my_issuer12: TestIssuer, typ: str) -> None:
    sub = uniq("my-typ")
    errno, message = refused_login(my_gw12, ca, sub, my_issuer12.mint(sub=sub, header={"typ": typ}))
    assert errno == 1045 and "not an access token" in message, message


def test_the_audit_names_the_issuer(my_gw12: GatewayProcess, ca: Path, my_issuer12: TestIssuer) -> None:
    """Depends on adapters/base.py `SessionContext.set_identity` passing `issuer=identity.issuer`."""
    sub = uniq("my-issuer")
    since = my_gw12.audit_offset()
    with my_connect(my_gw12, ca, sub, my_issuer12.mint(sub=sub)) as c:
        one(c, "select 1")
    auth = wait_event(my_gw12, since, is_authenticated(sub), f"connection.authenticated for {sub}")
    assert auth["who"]["issuer"] == my_issuer12.issuer


# -- B. failed logins are throttled ------------------------------------------------------------------


@pytest.fixture(scope="module")
def my_throttled_gw(mysql_it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=default_targets(),
        listener=mysql_listener(),
        extra={"login_throttle": {
            "failures_before_delay": 2, "base_delay_seconds": 1.5, "max_delay_seconds": 3.0,
            "exempt_addresses": [],  # the harness exempts loopback by default
        }},
        name="it-mysql-throttle-12",
    ) as gw:
        yield gw


def test_failed_logins_are_throttled_audited_and_do_not_slow_other_clients(my_throttled_gw: GatewayProcess) -> None:
    """Depends on adapters/mysql/session.py calling login_gate / login_failed / login_succeeded."""
    gw = my_throttled_gw
    since = gw.audit_offset()
    for _ in range(2):
        start = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as info:
            my_connect(gw, None, "bob", "wrong")
        assert info.value.args[0] == 1045 and time.monotonic() - start < 1.0
    result: dict[str, float] = {}

    def third() -> None:
        start = time.monotonic()
        my_connect(gw, None, "bob", "bob-secret").close()
        result["bob"] = time.monotonic() - start

    thread = threading.Thread(target=third)
    thread.start()
    time.sleep(0.2)
    start = time.monotonic()
    my_connect(gw, None, "alice", "alice-secret", bind_address="127.0.0.2").close()
    other = time.monotonic() - start
    thread.join(15)
    assert other < 1.0, other
    assert result["bob"] >= 1.4, result
    events = gw.wait_audit(lambda evs: any(e.get("event") == "login.throttled" for e in evs), since=since)
    throttled = [e for e in events if e.get("event") == "login.throttled"]
    assert throttled and throttled[0]["user"] == "bob" and throttled[0]["client_addr"] == "127.0.0.1"
