"""Identity (issue 4) on the MySQL / MariaDB side, end to end: the real gateway process, the
system MariaDB, real clients (PyMySQL, mysql-connector-python, the mariadb command-line client),
real TLS, and a test OIDC issuer whose JWKS is served over local HTTPS. Nothing is mocked.

* people log in with an OIDC token as their password over TLS (the gateway switches non-static
  users to mysql_clear_password); the audit names them, their groups reach the policy;
* an agent's delegated token shows both names: audit `who.actor`, the upstream session variable
  `@sqlward_identity` (read through the gateway, and by a trigger in the database itself);
* bad tokens are refused with ERR 1045 naming the failed check and a `connection.refused` event;
  an unknown kid works once the issuer publishes the key;
* tokens on plain TCP are refused (ERR 1045) unless the listener allows loopback clients;
* a session cannot outlive its token (statements and an already prepared statement are refused
  with rule `token-expired`; or the session is closed with `on_token_expiry = "close"`);
* the session reason: connection attribute `sqlward.reason`, or a leading SQL comment;
* mutual TLS with a client certificate (subject CN); another CA's certificate is refused;
* `[[access]]`: a refused target gets ERR 1044 naming it, plus an audit event.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import mysql.connector
import pymysql
import pytest

from sqlward.gateway.config import load_config
from sqlward.gateway.policy_check import evaluate
from tests.integration.mysql.conftest import (
    MY_ENVIRONMENTS,
    MY_RULES,
    default_targets,
    direct_rows,
    is_refusal,
    mysql_listener,
)
from tests.integration.test_identity import (
    ACCESS,
    BAD_TOKENS,
    REFETCH_SECONDS,
    ClientPKI,
    assert_not_logged,
    events_of,
    is_authenticated,
    is_refused,
    make_client_pki,
    non_loopback_ipv4,
    short_name,
    sleep_past,
    uniq,
    wait_event,
)
from tests.support import mywire
from tests.support.gateway import SECRETS, GatewayProcess, tls_listener
from tests.support.oidc import TestIssuer, actor_chain

MY_ID_RULES: list[dict[str, Any]] = [
    *MY_RULES,
    {"id": "no-contractors-on-accounts", "groups": ["contractors"], "tables": ["accounts", "*.accounts"],
     "action": "deny"},
]


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def my_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestIssuer]:
    with TestIssuer(tmp_path_factory.mktemp("my-idp")) as iss:
        yield iss


@pytest.fixture(scope="module")
def my_client_pki(tmp_path_factory: pytest.TempPathFactory) -> ClientPKI:
    return make_client_pki(tmp_path_factory.mktemp("my-client-pki"))


@pytest.fixture(scope="module")
def my_idgw(mysql_it_database: str, my_pki, my_issuer: TestIssuer, my_client_pki: ClientPKI) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=default_targets(),
        rules=MY_ID_RULES,
        environments=MY_ENVIRONMENTS,
        listener=mysql_listener(
            tls=tls_listener(my_pki, require=False),
            client_ca_file=str(my_client_pki.ca_file),
            cert_identity="subject-cn",
        ),
        # leeway 0: the expiry tests sleep just past exp (a session ends at exp + leeway, as its login does)
        extra={"oidc": [my_issuer.oidc_table(jwks_min_refetch_seconds=REFETCH_SECONDS, leeway_seconds=0)], "access": ACCESS},
        name="it-mysql-identity",
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def my_close_gw(mysql_it_database: str, my_pki, my_issuer: TestIssuer) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=default_targets(),
        listener=mysql_listener(tls=tls_listener(my_pki, require=False)),
        extra={"oidc": [my_issuer.oidc_table(leeway_seconds=0)], "identity": {"on_token_expiry": "close"}},
        name="it-mysql-identity-close",
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def my_plain_gw(mysql_it_database: str, my_issuer: TestIssuer) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=default_targets(),
        listener=mysql_listener(allow_plaintext_tokens=True),
        listen_host="0.0.0.0",
        extra={"oidc": [my_issuer.oidc_table()]},
        name="it-mysql-identity-plain",
    ) as gw:
        yield gw


@pytest.fixture
def ca(my_pki) -> Path:
    return my_pki.ca_file


def my_connect(gw: GatewayProcess, ca: Path | None, user: str, password: str = "", database: str = "app",
               host: str | None = None, **kw: Any) -> pymysql.Connection:
    """PyMySQL; over TLS verified against the gateway's test CA unless `ca` is None."""
    args: dict[str, Any] = dict(host=host or gw.host, port=gw.port, user=user, password=password, database=database,
                                autocommit=True, connect_timeout=10, charset="utf8mb4")
    if ca is None:
        args["ssl_disabled"] = True
    else:
        args["ssl"] = {"ca": str(ca), **kw.pop("ssl", {})}
    args.update(kw)
    return pymysql.connect(**args)


def connector(gw: GatewayProcess, ca: Path, user: str, password: str, database: str = "app",
              **kw: Any) -> Any:
    """mysql-connector-python (pure Python protocol) over verified TLS."""
    return mysql.connector.connect(
        host=gw.host, port=gw.port, user=user, password=password, database=database, use_pure=True,
        ssl_ca=str(ca), ssl_disabled=False, autocommit=True, connection_timeout=10, **kw,
    )


def sent(gw: GatewayProcess, since: int, subject: str) -> list[dict[str, Any]]:
    """statement.decided events of `subject`, without the `SET NAMES` PyMySQL sends by itself."""
    return [d for d in events_of(gw, since, "statement.decided", subject) if not d["sql"].upper().startswith("SET NAMES")]


def rows(conn: pymysql.Connection, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def mariadb_cli(gw: GatewayProcess, user: str, token: str, database: str, *args: str,
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The mariadb command-line client over TLS (`--ssl`); the token is the password."""
    cmd = ["mariadb", "--no-defaults", f"--host={gw.host}", f"--port={gw.port}", "--connect-timeout=10",
           "--ssl", *args, f"--user={user}", f"--password={token}", database]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "LC_ALL": "C.UTF-8"})


def cli_lines(res: subprocess.CompletedProcess[str]) -> list[str]:
    """Output lines of a successful run, without the client's own option warnings."""
    assert res.returncode == 0, f"mariadb exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return [ln for ln in res.stdout.splitlines() if not ln.startswith("WARNING: option")]


# -- people with OIDC tokens ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_pymysql_logs_in_with_token_over_tls(my_idgw, my_issuer, ca, alg):
    sub = uniq(f"pymysql-{alg.lower()}")
    token = my_issuer.mint(alg=alg, sub=sub, groups=["analysts"])
    since = my_idgw.audit_offset()
    with my_connect(my_idgw, ca, sub, token) as c:
        assert rows(c, "select @sqlward_identity, database(), owner from accounts where id = 1") == [
            (f"sqlward:{sub}", "sqlward_it", "alice")
        ]
    auth = wait_event(my_idgw, since, is_authenticated(sub), f"connection.authenticated for {sub}")
    assert auth["who"] == {"subject": sub, "groups": ["analysts"], "verified_by": "oidc", "issuer": "https://idp.test"}
    assert auth["target"] == "app"
    decided = sent(my_idgw, since, sub)
    assert [d["sql"] for d in decided] == ["select @sqlward_identity, database(), owner from accounts where id = 1"]
    assert decided[0]["who"]["verified_by"] == "oidc"
    assert_not_logged(my_idgw, token)


CLI_AUTH_OPTIONS = {
    # libmariadb answers the gateway's switch to mysql_clear_password by itself
    "switch": [],
    # the token goes in the first packet (no switch)
    "default-auth": ["--default-auth=mysql_clear_password"],
    # docs/identity.md's example; MariaDB's client calls the option obsolete (a WARNING on stdout)
    "enable-cleartext-plugin": ["--enable-cleartext-plugin"],
}


@pytest.mark.parametrize("how", list(CLI_AUTH_OPTIONS))
def test_mariadb_cli_logs_in_with_token_over_tls(my_idgw, my_issuer, ca, how):
    sub = uniq(f"mariadb-cli-{how}")
    token = my_issuer.mint(alg="ES256", sub=sub)
    since = my_idgw.audit_offset()
    res = mariadb_cli(my_idgw, sub, token, "app", f"--ssl-ca={ca}", *CLI_AUTH_OPTIONS[how], "-N", "-B",
                      "-e", "select @sqlward_identity; select count(*) from accounts")
    assert cli_lines(res) == [f"sqlward:{sub}", "3"]
    auth = wait_event(my_idgw, since, is_authenticated(sub), f"connection.authenticated for {sub}")
    assert auth["who"]["verified_by"] == "oidc"
    assert_not_logged(my_idgw, token)


def test_token_groups_reach_the_policy(my_idgw, my_issuer, ca):
    contractor = uniq("contractor")
    since = my_idgw.audit_offset()
    with my_connect(my_idgw, ca, contractor, my_issuer.mint(sub=contractor, groups=["contractors"])) as c:
        assert rows(c, "select 1") == [(1,)]
        with pytest.raises(pymysql.err.OperationalError) as ei:
            rows(c, "select owner from accounts")
        assert is_refusal(ei.value, "no-contractors-on-accounts"), ei.value
        assert rows(c, "select note from guarded") == [("must survive",)]
    refused = [d for d in sent(my_idgw, since, contractor) if d["action"] == "deny"]
    assert [d["rule_id"] for d in refused] == ["no-contractors-on-accounts"]
    assert refused[0]["who"]["groups"] == ["contractors"]

    other = uniq("analyst")
    with my_connect(my_idgw, ca, other, my_issuer.mint(sub=other, groups=["analysts"])) as c:
        assert [r[0] for r in rows(c, "select owner from accounts order by id")] == ["alice", "bob", "carol"]


# -- agents and delegation --------------------------------------------------------------------------


@pytest.fixture
def who_table(my_direct) -> Iterator[str]:
    """A table filled by a trigger with the upstream session's @sqlward_identity: what the
    database itself records about who inserted a row."""
    name = f"t_who_{uuid.uuid4().hex[:10]}"
    direct_rows(my_direct, f"CREATE TABLE {name} (id INT PRIMARY KEY, who VARCHAR(255))")
    direct_rows(my_direct, f"CREATE TRIGGER {name}_who BEFORE INSERT ON {name} FOR EACH ROW SET NEW.who = @sqlward_identity")
    yield name
    direct_rows(my_direct, f"DROP TABLE IF EXISTS {name}")


def test_agent_token_shows_both_names(my_idgw, my_issuer, ca, my_direct, who_table):
    sub = f"al-{uuid.uuid4().hex[:6]}@example.com"
    agent = short_name("agent")
    token = my_issuer.mint(sub=sub, act=actor_chain(agent, "runbook-deploy"))
    label = f"sqlward:{sub} via {agent}"
    since = my_idgw.audit_offset()
    with my_connect(my_idgw, ca, agent, token) as c:
        assert rows(c, "SELECT @sqlward_identity") == [(label,)]
        rows(c, f"insert into {who_table} (id) values (1)")
    assert direct_rows(my_direct, f"select who from {who_table}") == [(label,)]
    auth = wait_event(my_idgw, since, is_authenticated(sub), f"connection.authenticated for {sub}")
    assert auth["who"]["subject"] == sub
    assert auth["who"]["actor"] == [agent, "runbook-deploy"]
    assert auth["who"]["verified_by"] == "oidc"
    decided = sent(my_idgw, since, sub)
    assert len(decided) == 2 and all(d["who"]["actor"] == [agent, "runbook-deploy"] for d in decided)


def test_identity_variable_survives_reset_connection(my_idgw, my_issuer, ca, my_direct, who_table):
    """COM_RESET_CONNECTION (what connection pools send when a connection is returned, e.g.
    mysql-connector's pooling with reset_session) clears user variables upstream. The database
    must still see who is there afterwards, as after COM_CHANGE_USER."""
    sub = uniq("my-pooled")
    label = f"sqlward:{sub}"
    with connector(my_idgw, ca, sub, my_issuer.mint(sub=sub)) as cc:
        cur = cc.cursor()
        cur.execute("select @sqlward_identity")
        assert cur.fetchall() == [(label,)]
        cc.cmd_reset_connection()
        cur = cc.cursor()
        cur.execute("select @sqlward_identity")
        after = cur.fetchall()
        cur.execute(f"insert into {who_table} (id) values (1)")
    assert (after, direct_rows(my_direct, f"select who from {who_table}")) == ([(label,)], [(label,)])


def test_client_cannot_rewrite_the_identity_variable(my_idgw, my_issuer, ca, my_direct, who_table):
    """The MySQL counterpart of PostgreSQL's identity-tampering rule: `SET @sqlward_identity`
    must be refused, or at least not change what the database records."""
    sub = uniq("my-tamper")
    label = f"sqlward:{sub}"
    with my_connect(my_idgw, ca, sub, my_issuer.mint(sub=sub)) as c:
        try:
            rows(c, "SET @sqlward_identity = 'mallory'")
            outcome = "allowed"
        except pymysql.err.OperationalError as exc:
            outcome = f"refused: {exc}"
        rows(c, f"insert into {who_table} (id) values (1)")
    assert direct_rows(my_direct, f"select who from {who_table}") == [(label,)], outcome


# -- bad tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
def test_bad_token_refused_with_err_1045_and_audit(my_idgw, my_issuer, ca, kind):
    make, phrase = BAD_TOKENS[kind]
    sub = uniq(f"my-{kind}")
    token = make(my_issuer, sub)
    since = my_idgw.audit_offset()
    with pytest.raises(pymysql.err.OperationalError) as ei:
        my_connect(my_idgw, ca, sub, token).close()
    errno, msg = ei.value.args[0], str(ei.value.args[1])
    assert errno == 1045, ei.value
    assert msg.startswith(f"Access denied for user '{sub}': token refused: "), msg
    assert phrase in msg, msg
    refused = wait_event(my_idgw, since, is_refused(sub), f"connection.refused for {sub}")
    assert phrase in refused["reason"], refused
    assert not [e for e in my_idgw.audit_events(since) if is_authenticated(sub)(e)]
    assert_not_logged(my_idgw, token)


def test_mariadb_cli_shows_why_an_expired_token_is_refused(my_idgw, my_issuer, ca):
    sub = uniq("cli-expired")
    token = my_issuer.mint(sub=sub, ttl=-600)
    since = my_idgw.audit_offset()
    res = mariadb_cli(my_idgw, sub, token, "app", f"--ssl-ca={ca}", "-e", "select 1")
    assert res.returncode == 1, res
    assert f"ERROR 1045 (28000): Access denied for user '{sub}': token refused: token expired at " in res.stderr, res.stderr
    wait_event(my_idgw, since, is_refused(sub), f"connection.refused for {sub}")


def test_unknown_kid_refused_then_works_after_the_issuer_publishes_the_key(my_idgw, my_issuer, ca):
    sub = uniq("my-rotation")
    token, kid = my_issuer.mint_with_unknown_key(alg="ES256", sub=sub)
    try:
        time.sleep(REFETCH_SECONDS + 0.1)
        fetches = my_issuer.requests
        with pytest.raises(pymysql.err.OperationalError) as ei:
            my_connect(my_idgw, ca, sub, token).close()
        assert ei.value.args[0] == 1045
        assert f"unknown signing key (kid '{kid}') for issuer https://idp.test" in ei.value.args[1]
        assert my_issuer.requests == fetches + 1
        my_issuer.publish(kid)
        time.sleep(REFETCH_SECONDS + 0.1)
        with my_connect(my_idgw, ca, sub, token) as c:
            assert rows(c, "select 'rotated'") == [("rotated",)]
        assert my_issuer.requests == fetches + 2
    finally:
        my_issuer.publish(kid)


# -- plain TCP --------------------------------------------------------------------------------------


def test_token_over_plain_tcp_is_refused(my_idgw, my_issuer):
    sub = uniq("my-plain")
    token = my_issuer.mint(sub=sub)
    since = my_idgw.audit_offset()
    with pytest.raises(pymysql.err.OperationalError) as ei:
        my_connect(my_idgw, None, sub, token).close()
    assert ei.value.args[0] == 1045, ei.value
    assert "tokens only over TLS" in ei.value.args[1], ei.value
    refused = wait_event(my_idgw, since, is_refused(sub), f"connection.refused for {sub}")
    assert "tokens only over TLS" in refused["reason"]
    # On the wire: the gateway never switches a plain-TCP client to mysql_clear_password.
    c = mywire.RawMySQL.connect(my_idgw.host, my_idgw.port)
    try:
        with pytest.raises(mywire.MySQLError) as ei2:
            c.login(sub, token, "app")
        assert ei2.value.errno == 1045
        assert not any(step.startswith("switch:") for step in c.auth_trace), c.auth_trace
    finally:
        c.close()
    assert_not_logged(my_idgw, token)


def test_plaintext_tokens_allowed_for_a_loopback_client_when_the_listener_says_so(my_plain_gw, my_issuer):
    sub = uniq("my-sidecar")
    since = my_plain_gw.audit_offset()
    with my_connect(my_plain_gw, None, sub, my_issuer.mint(sub=sub)) as c:
        assert rows(c, "select @sqlward_identity") == [(f"sqlward:{sub}",)]
    auth = wait_event(my_plain_gw, since, is_authenticated(sub), f"connection.authenticated for {sub}")
    assert auth["who"]["verified_by"] == "oidc"


def test_plaintext_tokens_still_refused_from_a_non_loopback_address(my_plain_gw, my_issuer):
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    sub = uniq("my-remote")
    with pytest.raises(pymysql.err.OperationalError) as ei:
        my_connect(my_plain_gw, None, sub, my_issuer.mint(sub=sub), host=addr).close()
    assert ei.value.args[0] == 1045 and "tokens only over TLS" in ei.value.args[1], ei.value


# -- the session cannot outlive its token ----------------------------------------------------------


def test_statements_after_expiry_are_refused_including_prepared_ones(my_idgw, my_issuer, ca):
    exp = int(time.time()) + 4
    sub = uniq("my-short-lived")
    token = my_issuer.mint(sub=sub, exp=exp)
    since = my_idgw.audit_offset()
    query = "SELECT ? + 1"
    with my_connect(my_idgw, ca, sub, token) as c, connector(my_idgw, ca, sub, token) as cc:
        assert rows(c, "select 'valid'") == [("valid",)]
        cur = cc.cursor(prepared=True)
        cur.execute(query, (1,))  # COM_STMT_PREPARE + COM_STMT_EXECUTE
        assert cur.fetchall() == [(2,)]
        assert time.time() < exp, "the setup took longer than the token's life"

        sleep_past(exp)
        with pytest.raises(pymysql.err.OperationalError) as ei:
            rows(c, "select 'too late'")
        assert is_refusal(ei.value, "token-expired"), ei.value
        assert f"the token of {sub} expired at " in ei.value.args[1] and "reconnect with a fresh token" in ei.value.args[1]
        # The statement prepared while the token was valid (same string: re-executed, not re-prepared).
        with pytest.raises(mysql.connector.Error) as ci:
            cur.execute(query, (2,))
            cur.fetchall()
        assert ci.value.errno in (1142, 1227) and "token-expired" in ci.value.msg, ci.value
        with pytest.raises(mysql.connector.Error) as ci:
            other = cc.cursor()
            other.execute("select 3")
            other.fetchall()
        assert "token-expired" in ci.value.msg
    expired = [d for d in sent(my_idgw, since, sub) if d["rule_id"] == "token-expired"]
    assert {"select 'too late'", "select 3"} <= {d["sql"] for d in expired}, expired
    assert all(d["action"] == "deny" for d in expired)
    # `sqlward policy test` judges a token of that subject expiring then exactly as the session was.
    live = next(d for d in expired if d["sql"] == "select 'too late'")
    report = evaluate(load_config(str(my_idgw.config_file)), identity=sub, target=live["target"], sql=live["sql"], expires_at=exp)
    assert (report.decision, report.rule_id, report.message) == (live["action"], live["rule_id"], live["message"])


def test_refused_execute_of_a_prepared_statement_after_expiry_is_audited(my_idgw, my_issuer, ca):
    """docs/identity.md ("When the token expires"): "Either way it is audited." A
    COM_STMT_EXECUTE refused after expiry must leave an audit record."""
    exp = int(time.time()) + 3
    sub = uniq("my-expiry-audit")
    token = my_issuer.mint(sub=sub, exp=exp)
    since = my_idgw.audit_offset()
    query = "SELECT ? * 10"
    with connector(my_idgw, ca, sub, token) as cc:
        cur = cc.cursor(prepared=True)
        cur.execute(query, (1,))
        assert cur.fetchall() == [(10,)]
        sleep_past(exp)
        with pytest.raises(mysql.connector.Error) as ci:
            cur.execute(query, (2,))
            cur.fetchall()
        assert "token-expired" in ci.value.msg
    auth = wait_event(my_idgw, since, is_authenticated(sub), f"connection.authenticated for {sub}")
    wait_event(my_idgw, since, lambda e: e.get("event") == "connection.closed"
               and e["connection_id"] == auth["connection_id"], f"connection.closed for {sub}")
    session = [e for e in my_idgw.audit_events(since) if e.get("connection_id") == auth["connection_id"]]
    expired = [e for e in session if e.get("rule_id") == "token-expired"]
    assert expired, (
        "the refused COM_STMT_EXECUTE left no audit record; the session's events: "
        + "; ".join(f"{e['event']} {e.get('sql', '')} {e.get('rule_id', '')}".strip() for e in session)
    )


def test_on_token_expiry_close_ends_the_session(my_close_gw, my_issuer, ca):
    exp = int(time.time()) + 3
    sub = uniq("my-closing")
    token = my_issuer.mint(sub=sub, exp=exp)
    since = my_close_gw.audit_offset()
    c = my_connect(my_close_gw, ca, sub, token)
    try:
        assert rows(c, "select 'still valid'") == [("still valid",)]
        sleep_past(exp)
        with pytest.raises(pymysql.err.OperationalError) as ei:
            rows(c, "select 'too late'")
        assert ei.value.args[0] == 1045, ei.value
        assert "the session's token expired; sqlward closed the session" in ei.value.args[1]
        with pytest.raises(pymysql.err.Error):  # the connection is gone
            rows(c, "select 1")
    finally:
        try:
            c.close()
        except pymysql.err.Error:
            pass
    auth = wait_event(my_close_gw, since, is_authenticated(sub), f"connection.authenticated for {sub}")
    closed = wait_event(
        my_close_gw, since,
        lambda e: e.get("event") == "connection.closed" and e["connection_id"] == auth["connection_id"],
        f"connection.closed for {sub}",
    )
    assert closed["reason"] == "token expired"


# -- the session reason ----------------------------------------------------------------------------


def test_reason_from_connection_attribute(my_idgw, my_issuer, ca):
    sub = uniq("my-reason-attr")
    since = my_idgw.audit_offset()
    with connector(my_idgw, ca, sub, my_issuer.mint(sub=sub), conn_attrs={"sqlward.reason": "INC-123"}) as cc:
        cur = cc.cursor()
        cur.execute("select 'with a reason'")
        assert cur.fetchall() == [("with a reason",)]
    auth = wait_event(my_idgw, since, is_authenticated(sub), f"connection.authenticated for {sub}")
    assert auth["who"]["reason"] == "INC-123"
    decided = sent(my_idgw, since, sub)
    assert decided and all(d["who"]["reason"] == "INC-123" for d in decided)


def test_reason_from_a_leading_comment_holds_for_the_rest_of_the_session(my_idgw, my_issuer, ca):
    sub = uniq("my-reason-sql")
    since = my_idgw.audit_offset()
    with my_connect(my_idgw, ca, sub, my_issuer.mint(sub=sub)) as c:
        rows(c, "select 'before'")
        rows(c, "/* sqlward:reason=INC-9 */ select 'stated'")
        rows(c, "select 'after'")
    decided = sent(my_idgw, since, sub)
    assert [(d["sql"], d["who"].get("reason", "")) for d in decided] == [
        ("select 'before'", ""),
        ("/* sqlward:reason=INC-9 */ select 'stated'", "INC-9"),
        ("select 'after'", "INC-9"),
    ]


def test_reason_comment_from_the_mariadb_cli(my_idgw, my_issuer, ca):
    sub = uniq("cli-reason")
    since = my_idgw.audit_offset()
    res = mariadb_cli(my_idgw, sub, my_issuer.mint(sub=sub), "app", f"--ssl-ca={ca}", "--comments", "-N", "-B", "-e", "/* sqlward:reason=INC-42 */ select 'cli'")
    assert cli_lines(res) == ["cli"]
    decided = [d for d in sent(my_idgw, since, sub) if "'cli'" in d["sql"]]
    assert len(decided) == 1 and decided[0]["who"]["reason"] == "INC-42"


# -- mutual TLS -------------------------------------------------------------------------------------


def test_client_certificate_logs_in_without_password(my_idgw, ca, my_client_pki):
    since = my_idgw.audit_offset()
    cert = my_client_pki.reporting
    with my_connect(my_idgw, ca, "svc-reporting", "",
                    ssl={"cert": str(cert.cert_file), "key": str(cert.key_file)}) as c:
        assert rows(c, "select @sqlward_identity") == [("sqlward:svc-reporting",)]
    auth = wait_event(my_idgw, since, is_authenticated("svc-reporting"), "connection.authenticated for svc-reporting")
    assert auth["who"].pop("issuer") and auth["who"] == {"subject": "svc-reporting", "verified_by": "certificate"}


def test_client_certificate_name_is_compared_in_canonical_form(my_idgw, ca, my_client_pki):
    cert = my_client_pki.reporting
    with my_connect(my_idgw, ca, "SVC-Reporting", "",
                    ssl={"cert": str(cert.cert_file), "key": str(cert.key_file)}) as c:
        assert rows(c, "select @sqlward_identity") == [("sqlward:svc-reporting",)]


def test_client_certificate_from_another_ca_is_refused_by_tls(my_idgw, ca, my_client_pki):
    since = my_idgw.audit_offset()
    cert = my_client_pki.foreign
    with pytest.raises(pymysql.err.OperationalError):
        my_connect(my_idgw, ca, "svc-reporting", "",
                   ssl={"cert": str(cert.cert_file), "key": str(cert.key_file)}).close()
    opened = wait_event(my_idgw, since, lambda e: e.get("event") == "connection.opened", "connection.opened")
    time.sleep(0.3)
    session = [e for e in my_idgw.audit_events(since) if e.get("connection_id") == opened["connection_id"]]
    # Refused in the TLS handshake, before any login packet: nothing judged, nothing authenticated;
    # the lifecycle still ends in the trail (issue 12: every opened is followed by refused/closed).
    assert [e["event"] for e in session] == ["connection.opened", "connection.refused"], session
    assert "TLS handshake failed" in session[-1]["reason"], session


# -- target access ----------------------------------------------------------------------------------


def test_access_refused_target_gets_err_1044_naming_it(my_idgw, my_issuer, ca):
    sub = uniq("my-dev")
    token = my_issuer.mint(sub=sub, groups=["developers"])
    with my_connect(my_idgw, ca, sub, token, database="app") as c:
        assert rows(c, "select 1") == [(1,)]
    since = my_idgw.audit_offset()
    with pytest.raises(pymysql.err.OperationalError) as ei:
        my_connect(my_idgw, ca, sub, token, database="prod").close()
    expected = f"identity {sub} may not reach target prod (no [[access]] rule allows it)"
    assert ei.value.args == (1044, expected), ei.value
    refused = wait_event(my_idgw, since, is_refused(sub), f"connection.refused for {sub}")
    assert refused["target"] == "prod" and refused["reason"] == expected


def test_access_agents_refused_by_rule_even_with_the_group(my_idgw, my_issuer, ca):
    sub = uniq("my-oncall")
    agent = short_name("agent")
    with pytest.raises(pymysql.err.OperationalError) as ei:
        my_connect(my_idgw, ca, agent, my_issuer.mint(sub=sub, groups=["oncall"], act=actor_chain(agent)),
                   database="prod").close()
    assert ei.value.args == (1044, f"identity {sub} (via {agent}) may not reach target prod (rule 1 of [[access]])")


def test_access_allowed_identity_reaches_prod(my_idgw, my_issuer, ca):
    sub = uniq("my-dba")
    since = my_idgw.audit_offset()
    with my_connect(my_idgw, ca, sub, my_issuer.mint(sub=sub, groups=["dba"]), database="prod") as c:
        assert rows(c, "select database()") == [("sqlward_it",)]
    auth = wait_event(my_idgw, since, is_authenticated(sub), f"connection.authenticated for {sub}")
    assert auth["target"] == "prod" and auth["environment"] == "production"


def test_access_applies_to_change_user(my_idgw):
    """COM_CHANGE_USER names an identity and a target again: `[[access]]` judges the pair as at
    login (bob may not reach prod), with ERR 1044 naming it and a connection.refused event; the
    session ends, the upstream never runs anything as bob on prod."""
    since = my_idgw.audit_offset()
    with mywire.login(my_idgw.host, my_idgw.port, "alice", SECRETS["alice"], "app") as c:
        with pytest.raises(mywire.MySQLError) as ei:
            c.change_user("bob", SECRETS["bob"], "prod")
        expected = "identity bob may not reach target prod (no [[access]] rule allows it)"
        assert (ei.value.errno, ei.value.sqlstate, ei.value.message) == (1044, "42000", expected), ei.value
        assert mywire.wait_closed(c), "the session goes on after an [[access]] refusal"
    refused = wait_event(my_idgw, since, lambda e: e.get("event") == "connection.refused" and e.get("user") == "bob",
                         "connection.refused for bob")
    assert refused["target"] == "prod" and refused["reason"] == expected
    authenticated = [e for e in my_idgw.audit_events(since)
                     if e.get("event") == "connection.authenticated" and e["who"]["subject"] == "bob"]
    assert authenticated == [], authenticated
