"""Inline approvals end to end on PostgreSQL (issue 13): real gateway processes, real clients
(psql, asyncpg, psycopg), the admin API and the `sqlward approvals` CLI, the audit trail.

The policy: target `app` (and `app2`, the same database) in production, which allows by default;
the `mass-write` guardrail sends writes of more than 10 estimated rows to review, approved by
`group:dba` or the bot `change-bot`. Requesters log in as static identities (bob, carol) or with
OIDC tokens (an agent acting for alice); approvers are the bot (API token) and people with
OIDC tokens (alice: dba, sam: security). Each test gets a table `t` of 500 rows afresh and counts
what is left of it in PostgreSQL itself: a statement that ran once leaves exactly 100.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.conftest import _admin_dsn, scratch_database
from tests.support.approvals import BOT_TOKEN, api, approval_gateway, approve_cli, cli, events, requests, wait_pending
from tests.support.gateway import GatewayProcess, target
from tests.support.oidc import TestIssuer, actor_chain

DB = "sqlward_ap_pg"
DELETE = "DELETE FROM t WHERE id > 100"
STATIC = [{"name": "bob", "secret": "bob-secret"}, {"name": "carol", "secret": "carol-secret"}]
APPROVAL = {"approvers": ["group:dba", "bot:change-bot"], "hold_timeout": 20.0}


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with scratch_database(DB, "CREATE SCHEMA other; CREATE TABLE other.t (id int primary key, v text)") as name:
        yield name


@pytest.fixture
def table(database: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(_admin_dsn(database), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS t; CREATE TABLE t (id int primary key, v text)")
        c.execute("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 500) g; ANALYZE t")
        yield c


def left(c: psycopg.Connection) -> int:
    row = c.execute("SELECT count(*) FROM t").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> TestIssuer:
    return TestIssuer(tmp_path_factory.mktemp("idp"))


def _gateway(
    tmp_path: Path, database: str, issuer: TestIssuer, *, approval: dict[str, Any] | None = None,
    store: str = "", name: str = "it", extra: dict[str, Any] | None = None,
) -> GatewayProcess:
    dsn = f"postgresql://postgres@127.0.0.1:5432/{database}"
    return approval_gateway(
        tmp_path / name,
        targets=[target("app", dsn, environment="production"), target("app2", dsn, environment="production")],
        identities=STATIC,
        environments={"production": {"default_action": "allow"}},
        guardrails={"mass-write": {"environments": ["production"], "action": "review", "max_rows": 10,
                                   "approval": approval or APPROVAL}},
        listener={"allow_plaintext_tokens": True},
        extra={"oidc": [issuer.oidc_table(source="file")], **(extra or {})},
        store=store, name=name,
    )


@pytest.fixture
def gw(tmp_path: Path, database: str, issuer: TestIssuer) -> Iterator[GatewayProcess]:
    with _gateway(tmp_path, database, issuer) as g:
        yield g


def psql(gw: GatewayProcess, sql: str, *, user: str = "bob", password: str = "bob-secret", db: str = "app",
         extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    return subprocess.Popen(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(gw.port), "-U", user, "-d", db, "-v", "ON_ERROR_STOP=0", *extra, "-c", sql],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def person(issuer: TestIssuer, sub: str, *groups: str, **claims: Any) -> str:
    return issuer.mint(sub=sub, groups=list(groups), **claims)


def decide(gw: GatewayProcess, aid: str, verdict: str, token: str = BOT_TOKEN, comment: str = "") -> Any:
    return api(gw, "POST", f"/api/v1/approvals/{aid}/{verdict}", token=token, json={"comment": comment} if comment else None)


# -- hold: the statement waits in the session -------------------------------------------------


def test_psql_held_delete_runs_once_after_the_bot_approves_through_the_cli(gw: GatewayProcess, table: psycopg.Connection) -> None:
    client = psql(gw, DELETE)
    [request] = wait_pending(gw)
    assert request["sql"] == DELETE and request["requester"]["subject"] == "bob"
    assert request["target"] == "app" and request["environment"] == "production" and request["rules"] == ["mass-write"]
    assert request["estimated_rows"] and request["estimated_rows"] > 10
    assert left(table) == 500  # held: nothing ran yet
    done = approve_cli(gw, request["id"])
    assert done.returncode == 0, done.stderr
    out, err = client.communicate(timeout=30)
    assert client.returncode == 0 and "DELETE 400" in out, err
    # The NoticeResponse told the client at once, with the id and how to approve.
    assert request["id"] in err and f"sqlward approvals approve {request['id']}" in err
    assert left(table) == 100
    trail = events(gw)
    aid = request["id"]
    names = [e["event"] for e in trail if e.get("approval_id") == aid]
    assert names == ["approval.requested", "approval.decided", "approval.executed", "statement.decided", "statement.completed"]
    decided = next(e for e in trail if e["event"] == "approval.decided")
    assert decided["approver"] == {"subject": "change-bot", "kind": "bot", "groups": ["bots"], "verified_by": "api-token"}
    completed = [e for e in trail if e["event"] == "statement.completed" and e.get("approval_id") == aid]
    assert len(completed) == 1 and completed[0]["rows"] == 400
    [stored] = [r for r in requests(gw) if r["id"] == aid]
    assert stored["status"] == "executed" and stored["decisions"][0]["comment"] == "looks right"


def test_asyncpg_held_delete_with_parameters_is_approved_with_its_values(gw: GatewayProcess, table: psycopg.Connection, issuer: TestIssuer) -> None:
    """Extended protocol: the Parse is prepared, the Bind (with $1 = 100) is what is approved;
    a person (OIDC token, group dba) approves through the API."""
    result: list[Any] = []

    async def run() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=gw.port, user="bob", password="bob-secret", database="app")
        try:
            result.append(await conn.execute("DELETE FROM t WHERE id > $1", 100))
            result.append(await conn.fetchval("SELECT count(*) FROM t"))
        finally:
            await conn.close()

    thread = threading.Thread(target=lambda: asyncio.run(run()))
    thread.start()
    [request] = wait_pending(gw)
    # asyncpg binds int4 in binary: shown as the bytes the server reads (100 = 0x64).
    assert request["sql"] == "DELETE FROM t WHERE id > $1" and request["parameters"] == ["\\x00000064"]
    r = decide(gw, request["id"], "approve", token=person(issuer, "alice", "dba"))
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text
    thread.join(30)
    assert result == ["DELETE 400", 100]
    assert left(table) == 100
    decided = next(e for e in events(gw, "approval.decided"))
    assert decided["approver"]["subject"] == "alice" and decided["approver"]["verified_by"] == "oidc"


def test_rejection_refuses_with_the_comment_and_the_session_goes_on(gw: GatewayProcess, table: psycopg.Connection) -> None:
    client = psql(gw, f"{DELETE}; SELECT 'still here'", extra=())
    [request] = wait_pending(gw)
    done = cli(gw, "reject", request["id"], "--comment", "not during business hours")
    assert done.returncode == 0, done.stderr
    out, err = client.communicate(timeout=30)
    assert f"approval request {request['id']} was rejected by change-bot: not during business hours" in err
    assert left(table) == 500
    assert [r["status"] for r in requests(gw) if r["id"] == request["id"]] == ["rejected"]
    # The session goes on: a next statement in the same connection works.
    with psycopg.connect(gw.dsn("bob", "bob-secret", "app"), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(DELETE)  # held again (a new request): cancel it by timeout of the test's reject
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_hold_timeout_withdraws_the_request_and_the_session_goes_on(tmp_path: Path, database: str, issuer: TestIssuer, table: psycopg.Connection) -> None:
    with _gateway(tmp_path, database, issuer, approval={**APPROVAL, "hold_timeout": 1.5}) as g:
        with psycopg.connect(g.dsn("bob", "bob-secret", "app"), autocommit=True) as c:
            started = time.monotonic()
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                c.execute(DELETE)
            assert 1.0 < time.monotonic() - started < 10
            assert "got no decision within 2 s and was withdrawn" in str(info.value)
            assert c.execute("SELECT count(*) FROM t").fetchone() == (500,)
        [request] = requests(g)
        assert request["status"] == "withdrawn"
        assert [e["reason"] for e in events(g, "approval.withdrawn")] == ["no decision within 2 s"]


def test_cancel_request_withdraws_a_held_statement(gw: GatewayProcess, table: psycopg.Connection) -> None:
    conn = psycopg.connect(gw.dsn("bob", "bob-secret", "app"), autocommit=True)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn.execute(DELETE)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    [request] = wait_pending(gw)
    conn.cancel()  # a CancelRequest on a connection of its own
    thread.join(15)
    assert len(errors) == 1 and f"approval request {request['id']} was withdrawn: the statement was cancelled" in str(errors[0])
    assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    conn.close()
    assert [r["status"] for r in requests(gw) if r["id"] == request["id"]] == ["withdrawn"]
    assert left(table) == 500
    # Approving a withdrawn request changes nothing.
    assert decide(gw, request["id"], "approve").status_code == 409


def test_client_disconnect_withdraws_the_request(gw: GatewayProcess, table: psycopg.Connection) -> None:
    client = psql(gw, DELETE)
    [request] = wait_pending(gw)
    client.send_signal(signal.SIGKILL)  # no cancel: the socket just closes
    client.wait(10)
    deadline = time.monotonic() + 10
    while [r["status"] for r in requests(gw) if r["id"] == request["id"]] != ["withdrawn"]:
        assert time.monotonic() < deadline, requests(gw)
        time.sleep(0.1)
    assert decide(gw, request["id"], "approve").status_code == 409
    assert left(table) == 500
    assert any(e["reason"] == "the client disconnected" for e in events(gw, "approval.withdrawn"))


def test_held_statement_in_an_extended_protocol_pipeline(gw: GatewayProcess, table: psycopg.Connection) -> None:
    """psycopg pipeline mode: an INSERT, the held DELETE and a SELECT go out together before
    any answer; the whole pipeline waits for the verdict and then runs in order."""
    out: list[Any] = []

    def run() -> None:
        with psycopg.connect(gw.dsn("bob", "bob-secret", "app"), autocommit=True) as c:
            with c.pipeline():
                c.execute("INSERT INTO t VALUES (1000, 'new')")
                c.execute("DELETE FROM t WHERE id > %s", (100,))
                cur = c.execute("SELECT count(*) FROM t")
            out.append(cur.fetchone())

    thread = threading.Thread(target=run)
    thread.start()
    [request] = wait_pending(gw)
    assert request["parameters"] == ["\\x0064"]  # psycopg binds 100 as a binary int2
    assert left(table) == 500  # nothing of the pipeline ran while the DELETE is held
    assert decide(gw, request["id"], "approve").status_code == 200
    thread.join(30)
    assert out == [(100,)]  # the INSERT ran before the DELETE, the SELECT after it
    assert left(table) == 100


def test_rejected_statement_inside_a_pipeline_discards_to_sync(gw: GatewayProcess, table: psycopg.Connection) -> None:
    errors: list[BaseException] = []
    after: list[Any] = []

    def run() -> None:
        with psycopg.connect(gw.dsn("bob", "bob-secret", "app"), autocommit=True) as c:
            try:
                with c.pipeline():
                    c.execute("DELETE FROM t WHERE id > %s", (100,))
                    c.execute("INSERT INTO t VALUES (2000, 'after')")
            except psycopg.Error as exc:
                errors.append(exc)
            after.append(c.execute("SELECT count(*) FROM t").fetchone())

    thread = threading.Thread(target=run)
    thread.start()
    [request] = wait_pending(gw)
    assert decide(gw, request["id"], "reject", comment="no").status_code == 200
    thread.join(30)
    assert len(errors) == 1 and "was rejected" in str(errors[0])
    assert after == [(500,)]  # the INSERT after it in the pipeline was discarded too


def test_self_approval_is_refused(gw: GatewayProcess, table: psycopg.Connection, issuer: TestIssuer) -> None:
    """alice (dba) logs in with her token and is held; her own token cannot approve it."""
    token = person(issuer, "alice", "dba")
    client = psql(gw, DELETE, user="alice", password=token)
    [request] = wait_pending(gw)
    r = decide(gw, request["id"], "approve", token=person(issuer, "alice", "dba"))
    assert r.status_code == 403 and "own request" in r.json()["error"]
    r = decide(gw, request["id"], "approve", token=person(issuer, "ALICE", "dba"))  # another spelling
    assert r.status_code == 403
    assert decide(gw, request["id"], "reject").status_code == 200
    client.communicate(timeout=30)
    assert left(table) == 500


def test_an_agents_principal_approves_where_the_rule_says_so(tmp_path: Path, database: str, issuer: TestIssuer, table: psycopg.Connection) -> None:
    """agent-7 acts for alice (act claim); alice approves its statement with principal = true."""
    approval = {"approvers": ["bot:change-bot"], "principal": True, "hold_timeout": 20.0}
    with _gateway(tmp_path, database, issuer, approval=approval) as g:
        agent_token = issuer.mint(sub="alice", act=actor_chain("agent-7"), groups=["dev"])
        client = psql(g, DELETE, user="agent-7", password=agent_token)
        [request] = wait_pending(g)
        assert request["requester"]["subject"] == "alice" and request["requester"]["actor"] == ["agent-7"]
        # The agent itself (a token of agent-7) cannot approve; alice, the principal, can.
        assert decide(g, request["id"], "approve", token=person(issuer, "agent-7", "dba")).status_code == 403
        r = decide(g, request["id"], "approve", token=person(issuer, "alice"))
        assert r.status_code == 200 and r.json()["status"] == "approved", r.text
        out, err = client.communicate(timeout=30)
        assert "DELETE 400" in out, err
    assert left(table) == 100


def test_without_principal_the_agents_principal_cannot_approve(gw: GatewayProcess, issuer: TestIssuer, table: psycopg.Connection) -> None:
    agent_token = issuer.mint(sub="alice", act=actor_chain("agent-7"), groups=["dev"])
    client = psql(gw, DELETE, user="agent-7", password=agent_token)
    [request] = wait_pending(gw)
    r = decide(gw, request["id"], "approve", token=person(issuer, "alice", "dba"))
    assert r.status_code == 403 and "principal = true" in r.json()["error"]
    assert decide(gw, request["id"], "reject").status_code == 200
    client.communicate(timeout=30)
    assert left(table) == 500


def test_two_approvals_from_two_groups(tmp_path: Path, database: str, issuer: TestIssuer, table: psycopg.Connection) -> None:
    approval = {"approvers": ["group:dba", "group:security"], "approvals": 2, "all_groups": ["dba", "security"], "hold_timeout": 20.0}
    with _gateway(tmp_path, database, issuer, approval=approval) as g:
        client = psql(g, DELETE)
        [request] = wait_pending(g)
        first = decide(g, request["id"], "approve", token=person(issuer, "alice", "dba"))
        assert first.status_code == 200 and first.json()["status"] == "pending"
        second_dba = decide(g, request["id"], "approve", token=person(issuer, "dan", "dba"))
        assert second_dba.status_code == 200 and second_dba.json()["status"] == "pending"  # two, but no security
        time.sleep(0.5)
        assert client.poll() is None and left(table) == 500
        last = decide(g, request["id"], "approve", token=person(issuer, "sam", "security"))
        assert last.status_code == 200 and last.json()["status"] == "approved"
        out, err = client.communicate(timeout=30)
        assert "DELETE 400" in out, err
    assert left(table) == 100


# -- retry: refused at once, the same statement runs once after approval ------------------------


RETRY = {"approvers": ["bot:change-bot"], "mode": "retry", "expires": 120.0, "hold_timeout": 60.0}


def _run(gw: GatewayProcess, sql: str, *, user: str = "bob", db: str = "app", setup: str = "") -> str:
    """Runs `sql` (after `setup`); returns "ok" or the error text."""
    with psycopg.connect(gw.dsn(user, f"{user}-secret", db), autocommit=True) as c:
        if setup:
            c.execute(setup)
        try:
            c.execute(sql)
        except psycopg.Error as exc:
            return str(exc)
    return "ok"


def test_retry_mode_runs_the_same_statement_once_after_approval(tmp_path: Path, database: str, issuer: TestIssuer, table: psycopg.Connection) -> None:
    with _gateway(tmp_path, database, issuer, approval=RETRY) as g:
        first = _run(g, DELETE)
        [request] = requests(g)
        assert request["status"] == "pending" and f"approval request {request['id']} was made" in first
        assert f"approval request {request['id']} for this statement is still pending" in _run(g, DELETE)
        assert len(requests(g)) == 1
        assert decide(g, request["id"], "approve").status_code == 200
        # What does not match the approval: another literal, identity, search_path, target.
        assert "was made" in _run(g, "DELETE FROM t WHERE id > 101")
        assert "was made" in _run(g, DELETE, user="carol")
        assert "was made" in _run(g, DELETE, setup="SELECT set_config('search_path', 'other, public', false)")
        assert "was made" in _run(g, DELETE, db="app2")
        assert left(table) == 500
        assert _run(g, DELETE) == "ok"
        assert left(table) == 100
        # Used once: the same statement again needs a new approval.
        again = _run(g, DELETE)
        assert "was made" in again and request["id"] not in again
        statuses = {r["id"]: r["status"] for r in requests(g)}
        assert statuses[request["id"]] == "executed" and len(statuses) == 6


def test_a_pending_request_survives_a_restart(tmp_path: Path, database: str, issuer: TestIssuer, table: psycopg.Connection) -> None:
    with _gateway(tmp_path, database, issuer, approval=RETRY, name="a") as g:
        _run(g, DELETE)
        [request] = requests(g)
    store = str(tmp_path / "a" / "approvals.sqlite3")
    with _gateway(tmp_path, database, issuer, approval=RETRY, name="b", store=store) as g2:
        [again] = requests(g2)
        assert again["id"] == request["id"] and again["status"] == "pending"
        assert decide(g2, request["id"], "approve").status_code == 200
        assert _run(g2, DELETE) == "ok"
    assert left(table) == 100


def test_expired_requests_expire_on_their_own(tmp_path: Path, database: str, issuer: TestIssuer, table: psycopg.Connection) -> None:
    with _gateway(tmp_path, database, issuer, approval={**RETRY, "expires": 1.0, "hold_timeout": 1.0}) as g:
        _run(g, DELETE)
        [request] = requests(g)
        deadline = time.monotonic() + 10
        while requests(g)[0]["status"] != "expired":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert decide(g, request["id"], "approve").status_code == 409
        assert [e["approval_id"] for e in events(g, "approval.expired")] == [request["id"]]
    assert left(table) == 500


# -- two gateways sharing one PostgreSQL store ----------------------------------------------------


def test_two_gateways_share_a_postgresql_store(tmp_path: Path, database: str, issuer: TestIssuer, table: psycopg.Connection) -> None:
    with scratch_database("sqlward_ap_store") as store_db:
        store = f"postgresql://postgres@127.0.0.1:5432/{store_db}"
        with _gateway(tmp_path, database, issuer, store=store, name="one") as one, \
                _gateway(tmp_path, database, issuer, store=store, name="two") as two:
            client = psql(one, DELETE)
            [request] = wait_pending(two)  # seen through the other replica
            assert request["gateway"] == "one"
            assert decide(two, request["id"], "approve").status_code == 200  # approved on two
            out, err = client.communicate(timeout=30)
            assert "DELETE 400" in out, err  # ran on one
            assert [e["event"] for e in events(two) if e.get("approval_id") == request["id"]] == ["approval.decided"]
            assert "approval.executed" in [e["event"] for e in events(one) if e.get("approval_id") == request["id"]]
            # Retry mode across replicas: made on one, approved on two, run on two.
        assert left(table) == 100


# -- webhooks --------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]] = []
    fail_first = 0

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


def test_webhooks_carry_signed_payloads_and_are_retried(tmp_path: Path, database: str, issuer: TestIssuer, table: psycopg.Connection) -> None:
    _Receiver.got = []
    _Receiver.fail_first = 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "webhook-signing-secret-0123456789"
    hook = {"url": f"http://127.0.0.1:{server.server_address[1]}/hook", "secret": secret, "backoff_seconds": 0.2,
            "events": ["approval.requested", "approval.decided"]}
    try:
        with _gateway(tmp_path, database, issuer, extra={"webhooks": [hook]}) as g:
            client = psql(g, DELETE)
            [request] = wait_pending(g)
            assert decide(g, request["id"], "approve").status_code == 200
            client.communicate(timeout=30)
            deadline = time.monotonic() + 15
            while len({json.loads(b)["event"] for _, b in _Receiver.got}) < 2:
                assert time.monotonic() < deadline, _Receiver.got
                time.sleep(0.1)
    finally:
        server.shutdown()
    requested = [(h, b) for h, b in _Receiver.got if json.loads(b)["event"] == "approval.requested"]
    assert len(requested) == 3  # 503, 503, then delivered
    assert len({h["x-sqlward-delivery"] for h, _ in requested}) == 1  # one delivery, retried
    for headers, body in _Receiver.got:
        expected = hmac.new(secret.encode(), headers["x-sqlward-timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["x-sqlward-signature"] == f"sha256={expected}"
    payload = json.loads(requested[-1][1])
    assert payload["approval"]["id"] == request["id"] and payload["link"].endswith(f"/api/v1/approvals/{request['id']}")
    assert request["id"] in payload["text"] and "bob" in payload["text"] and BOT_TOKEN not in payload["text"]
    assert left(table) == 100


def test_statements_not_held_get_no_approval_machinery(gw: GatewayProcess, table: psycopg.Connection) -> None:
    with psycopg.connect(gw.dsn("bob", "bob-secret", "app"), autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM t").fetchone() == (500,)
        c.execute("DELETE FROM t WHERE id = 1")  # one row: under the guardrail's limit
    assert left(table) == 499
    assert requests(gw) == [] and events(gw, "approval.requested") == []


def test_one_identity_cannot_flood_the_store(tmp_path: Path, database: str, issuer: TestIssuer, table: psycopg.Connection) -> None:
    with _gateway(tmp_path, database, issuer, approval=RETRY, extra={"approvals": {
        "store": str(tmp_path / "flood.sqlite3"), "poll_seconds": 0.2, "sweep_seconds": 0.5, "max_pending_per_identity": 2,
    }}) as g:
        assert "was made" in _run(g, "DELETE FROM t WHERE id > 100")
        assert "was made" in _run(g, "DELETE FROM t WHERE id > 101")
        third = _run(g, "DELETE FROM t WHERE id > 102")
        assert "already has 2 approval requests waiting" in third
        assert "was made" in _run(g, DELETE, user="carol")  # others are not held back
        assert len(requests(g, "pending")) == 3
        r = api(g, "GET", "/api/v1/approvals?requester=bob&status=pending")
        assert r.status_code == 200 and len(r.json()["approvals"]) == 2


def test_a_client_sending_too_much_while_held_withdraws_its_request(gw: GatewayProcess, table: psycopg.Connection) -> None:
    """What a client sends while its statement is held is kept for after the verdict, up to
    1 MiB: beyond that the request is withdrawn (a disconnect could not be noticed any more), and
    the session answers everything in order."""
    from tests.support import pgwire

    with pgwire.RawConn.connect(gw.host, gw.port) as raw:
        raw.send(pgwire.startup_message({"user": "bob", "database": "app"}))
        raw.authenticate("bob", "bob-secret")
        raw.send(pgwire.query(DELETE))
        [request] = wait_pending(gw)
        raw.send(pgwire.query("SELECT 1") * 80_000)  # about 1.2 MiB
        replies = raw.read_until("Z")
        errors = [m for m in replies if m.type == "E"]
        assert errors and "sent more than 1 MiB while the statement was held" in errors[0].text
    assert [r["status"] for r in requests(gw) if r["id"] == request["id"]] == ["withdrawn"]
    assert left(table) == 500


def test_a_statement_held_when_the_gateway_drains_runs_once_approved_during_the_drain(
    tmp_path: Path, database: str, issuer: TestIssuer, table: psycopg.Connection,
) -> None:
    """SIGTERM while a statement waits for approval: the gateway stops accepting, its admin API
    keeps serving, the approver approves, the statement runs, its client gets the result, and
    the gateway then stops (exit 0)."""
    gw = _gateway(tmp_path, database, issuer, extra={"gateway": {"name": "it-drain-held", "drain_seconds": 20}})
    with gw:
        client = psql(gw, DELETE)
        [request] = wait_pending(gw)
        assert gw.proc is not None
        gw.exit_expected = True
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert gw.proc.poll() is None  # draining: the held statement keeps it up
        assert decide(gw, request["id"], "approve").status_code == 200  # the admin API still serves
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0 and "DELETE 400" in out, err
        assert left(table) == 100
        assert gw.proc.wait(15) == 0
        trail = events(gw)
        assert [e["event"] for e in trail if e.get("approval_id") == request["id"]][-1] == "statement.completed"
