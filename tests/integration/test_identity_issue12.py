"""Issue 12, identity and tokens, end to end on the PostgreSQL side: the real gateway process,
the real PostgreSQL, real clients (psycopg, a raw protocol client), real TLS and a test OIDC
issuer whose JWKS is served over local HTTPS. Nothing is mocked.

* a token can never log in under a static identity's name, in any spelling (case, fullwidth
  letters, zero-width characters, a trailing space), nor name one as its subject or actor;
* a token inside the login leeway logs in and its statements run (they were refused at once);
* a token typed other than an access token (dpop+jwt, logout+jwt) is refused;
* the audit's `who` carries the token's issuer (needs `SessionContext.set_identity` in
  adapters/base.py to copy `Identity.issuer` into `Who`);
* failed logins are throttled per address and user name, audited (`login.throttled`), and a
  throttled attempt does not slow a client from another address (needs the adapters' calls of
  `login_gate` / `login_failed`, in adapters/postgres/session.py).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from tests.integration.conftest import default_targets
from tests.integration.test_identity import is_authenticated, is_refused, pg_connect, uniq, wait_event
from tests.support import pgwire
from tests.support.gateway import GatewayProcess, tls_listener
from tests.support.oidc import TestIssuer, actor_chain


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestIssuer]:
    with TestIssuer(tmp_path_factory.mktemp("pg-idp-12")) as iss:
        yield iss


@pytest.fixture(scope="module")
def gw12(it_database: str, gateway_pki, issuer: TestIssuer) -> Iterator[GatewayProcess]:
    """TLS listener, the test issuer with a 60 s leeway, sessions closed at expiry."""
    with GatewayProcess(
        targets=default_targets(),
        listener={"tls": tls_listener(gateway_pki, require=False)},
        extra={"oidc": [issuer.oidc_table(leeway_seconds=60)], "identity": {"on_token_expiry": "close"}},
        name="it-identity-12",
    ) as gw:
        yield gw


@pytest.fixture
def ca(gateway_pki) -> Path:
    return gateway_pki.ca_file


def refused_login(gw: GatewayProcess, ca: Path, user: str, token: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        pg_connect(gw, ca, user, token).close()
    return str(info.value)


# -- A. one canonical form of a name --------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["ALICE", "Alice", "ａｌｉｃｅ", "al\u200bice", "alice "])
def test_a_token_never_logs_in_under_a_static_name(gw12: GatewayProcess, ca: Path, issuer: TestIssuer, spelling: str) -> None:
    since = gw12.audit_offset()
    message = refused_login(gw12, ca, spelling, issuer.mint(sub=spelling))
    assert "password authentication failed" in message, message
    wait_event(gw12, since, is_refused(spelling), f"connection.refused for {spelling!r}")
    assert not [e for e in gw12.audit_events(since) if e.get("event") == "connection.authenticated"]


def test_a_token_naming_a_static_identity_as_subject_or_actor_is_refused(gw12: GatewayProcess, ca: Path, issuer: TestIssuer) -> None:
    agent = uniq("agent")
    message = refused_login(gw12, ca, agent, issuer.mint(sub="BOB", act=actor_chain(agent)))
    assert "password authentication failed" in message, message
    person = uniq("person")
    message = refused_login(gw12, ca, person, issuer.mint(sub=person, act=actor_chain("Bob")))
    assert "password authentication failed" in message, message


def test_user_name_and_subject_compare_in_the_canonical_form(gw12: GatewayProcess, ca: Path, issuer: TestIssuer) -> None:
    sub = uniq("carol")
    with pg_connect(gw12, ca, sub.upper(), issuer.mint(sub=sub)) as c:
        assert c.execute("select 1").fetchone() == (1,)


# -- B. expiry with the login leeway; typ -----------------------------------------------------


def test_a_token_inside_the_leeway_logs_in_and_its_statements_run(gw12: GatewayProcess, ca: Path, issuer: TestIssuer) -> None:
    sub = uniq("leeway")
    token = issuer.mint(sub=sub, ttl=-20)  # expired 20 s ago; the issuer's leeway is 60 s
    with pg_connect(gw12, ca, sub, token) as c:
        assert c.execute("select 41 + 1").fetchone() == (42,)
        assert c.execute("select 'still here'").fetchone() == ("still here",)


@pytest.mark.parametrize("typ", ["dpop+jwt", "logout+jwt"])
def test_tokens_that_are_not_access_tokens_are_refused(gw12: GatewayProcess, ca: Path, issuer: TestIssuer, typ: str) -> None:
    sub = uniq("typ")
    message = refused_login(gw12, ca, sub, issuer.mint(sub=sub, header={"typ": typ}))
    assert "typ" in message and "not an access token" in message, message


def test_at_jwt_tokens_log_in(gw12: GatewayProcess, ca: Path, issuer: TestIssuer) -> None:
    sub = uniq("atjwt")
    with pg_connect(gw12, ca, sub, issuer.mint(sub=sub, header={"typ": "at+jwt"})) as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_the_audit_names_the_issuer(gw12: GatewayProcess, ca: Path, issuer: TestIssuer) -> None:
    """Depends on adapters/base.py `SessionContext.set_identity` passing `issuer=identity.issuer`
    to `Who` (audit/events.py has the field)."""
    sub = uniq("issuer")
    since = gw12.audit_offset()
    with pg_connect(gw12, ca, sub, issuer.mint(sub=sub)) as c:
        c.execute("select 1")
    auth = wait_event(gw12, since, is_authenticated(sub), f"connection.authenticated for {sub}")
    assert auth["who"]["issuer"] == issuer.issuer


# -- B. failed logins are throttled ------------------------------------------------------------------


@pytest.fixture(scope="module")
def throttled_gw(it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=default_targets(),
        extra={"login_throttle": {
            "failures_before_delay": 2, "base_delay_seconds": 1.5, "max_delay_seconds": 3.0,
            "exempt_addresses": [],  # the harness exempts loopback by default
        }},
        name="it-throttle-12",
    ) as gw:
        yield gw


def raw_login(gw: GatewayProcess, user: str, password: str, source: str = "127.0.0.1") -> pgwire.RawConn:
    sock = socket.create_connection((gw.host, gw.port), timeout=15, source_address=(source, 0))
    c = pgwire.RawConn(sock, 15)
    try:
        c.send(pgwire.startup_message({"user": user, "database": "app"}))
        c.authenticate(user, password)
    except BaseException:
        c.close()
        raise
    return c


def test_failed_logins_are_throttled_audited_and_do_not_slow_other_clients(throttled_gw: GatewayProcess) -> None:
    """Depends on adapters/postgres/session.py calling login_gate / login_failed /
    login_succeeded around authentication."""
    gw = throttled_gw
    since = gw.audit_offset()
    for _ in range(2):  # free failures
        start = time.monotonic()
        with pytest.raises(pgwire.PgError) as info:
            raw_login(gw, "bob", "wrong")
        assert info.value.sqlstate == "28P01" and time.monotonic() - start < 1.0
    # The third attempt from this address waits its turn (1.5 s), then the right secret works.
    result: dict[str, Any] = {}

    def third() -> None:
        start = time.monotonic()
        raw_login(gw, "bob", "bob-secret").close()
        result["bob"] = time.monotonic() - start

    thread = threading.Thread(target=third)
    thread.start()
    time.sleep(0.2)
    # Meanwhile a client from another address logs in at once.
    start = time.monotonic()
    raw_login(gw, "alice", "alice-secret", source="127.0.0.2").close()
    other = time.monotonic() - start
    thread.join(15)
    assert other < 1.0, other
    assert result["bob"] >= 1.4, result
    events = gw.wait_audit(lambda evs: any(e.get("event") == "login.throttled" for e in evs), since=since)
    throttled = [e for e in events if e.get("event") == "login.throttled"]
    assert throttled and throttled[0]["user"] == "bob" and throttled[0]["client_addr"] == "127.0.0.1"
    assert throttled[0]["delay_seconds"] >= 1.0 and throttled[0]["scope"] in ("address", "user")
