"""`sqlward approvals ...` against a real gateway process: the CLI as a subprocess, the admin
listener (TLS, a private CA) inside the gateway, the SQLite approval store shared through its file.

How it works: one gateway (`tests.support.gateway.GatewayProcess`, its config in a temp dir) with
`[admin]` on a free port behind TLS (a throw-away CA from `tests.support.certs.make_pki`), the
approval store at a SQLite file of the test, and a bot identity `change-bot` whose API token is in
a file. The test puts pending approval requests into that SQLite file (as the pipeline would),
then runs `python -m sqlward.gateway approvals list | show | approve | reject` as subprocesses and
checks their output, their exit status and the store. The gateway's target is never contacted
(nothing is relayed here), so no upstream database is needed.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from sqlward.gateway.approvals.model import ApprovalRequest, Requester
from sqlward.gateway.approvals.service import new_id
from sqlward.gateway.approvals.store import SqliteStore
from sqlward.policy.approval import ApprovalRule
from tests.support.certs import make_pki
from tests.support.gateway import REPO_ROOT, GatewayProcess, free_port, target

BOT_TOKEN = "change-bot-api-token-6b1f0c7e9d2a4b58"


def _store(path: Path, *requests: ApprovalRequest) -> None:
    async def go() -> None:
        store = SqliteStore(str(path))
        for r in requests:
            await store.insert(r)
        await store.aclose()

    trio.run(go)


def _stored(path: Path, approval_id: str) -> ApprovalRequest:
    async def go() -> ApprovalRequest:
        store = SqliteStore(str(path))
        try:
            found = await store.get(approval_id)
        finally:
            await store.aclose()
        assert found is not None
        return found

    return trio.run(go)


def _request(n: int, **changes: Any) -> ApprovalRequest:
    now = time.time()
    fields: dict[str, Any] = dict(
        id=new_id(), binding=f"{n:064x}",
        requester=Requester(subject="alice", groups=("dev",), actor=("deploy-agent",), verified_by="static", is_agent=True),
        reason="CHG-4711 purge old sessions", gateway="it", target="app", environment="production", protocol="postgres",
        names='"$user", public', sql=f"DELETE FROM sessions\nWHERE last_seen < now() - interval '{n} days'",
        operations=("delete",), tables=("public.sessions",), rules=("mass-write",), estimated_rows=48000 + n,
        message="a write of many rows in production needs approval",
        requirements=(ApprovalRule(approvers=("bot:change-bot", "group:dba")),),
        created=now + n * 0.001, expires=now + 900,
    )
    fields.update(changes)
    return ApprovalRequest(**fields)


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    work = tmp_path / "gw"
    work.mkdir()
    pki = make_pki(tmp_path / "pki", prefix="admin-")
    token_file = tmp_path / "bot.token"
    token_file.write_text(BOT_TOKEN + "\n")
    db = tmp_path / "approvals.sqlite3"
    admin_port = free_port()
    gw = GatewayProcess(
        targets=[target("app", "postgresql://svc@127.0.0.1:5432/app", environment="production")],
        identities=[
            {"name": "alice", "groups": ["dev"], "secret": "alice-secret"},
            {"name": "change-bot", "groups": ["approvers"], "bot": True, "api_token_file": str(token_file)},
        ],
        extra={
            "admin": {
                "listen": f"127.0.0.1:{admin_port}",
                "tls": {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)},
                "access": {"approvals_read": ["approvers"], "approvals_decide": ["approvers"]},
            },
            "approvals": {"store": str(db)},
        },
        workdir=work,
    )
    url = f"https://127.0.0.1:{admin_port}"
    with gw:
        # the gateway reports itself started once its SQL listener listens; wait for the admin one
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/api/v1/whoami", verify=ssl.create_default_context(cafile=str(pki.ca_file)), timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the admin listener did not come up:\n" + gw.stderr_text()
                time.sleep(0.1)
        yield {"gw": gw, "url": url, "ca": str(pki.ca_file), "token_file": str(token_file), "db": db, "dir": tmp_path}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("SQLWARD_ADMIN_URL", "SQLWARD_TOKEN")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sqlward.gateway", "approvals", *args],
        cwd=str(REPO_ROOT), env=full_env, capture_output=True, text=True, timeout=60,
    )


def test_list_show_approve_through_the_cli(setup: dict[str, Any]) -> None:
    db, url, ca = setup["db"], setup["url"], setup["ca"]
    first, second = _request(1), _request(2)
    done = _request(3, status="rejected", decided=time.time())
    _store(db, first, second, done)
    auth = ("--url", url, "--ca-file", ca, "--token-file", setup["token_file"])

    # list: the pending ones (default), newest first, as a table
    out = cli("list", *auth)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "REQUESTER", "TARGET", "RULES", "EXPIRES", "STATEMENT"]
    assert [line.split()[0] for line in lines[1:]] == [second.id, first.id]
    assert "alice via deploy-agent" in lines[1] and "app (production)" in lines[1] and "mass-write" in lines[1]
    assert "DELETE FROM sessions WHERE last_seen < now() - interval '2 days'" in lines[1]
    assert out.stderr == ""

    # the URL and token from the environment; --status all; --json is the API's JSON
    out = cli("list", "--status", "all", "--json", "--ca-file", ca, env={"SQLWARD_ADMIN_URL": url, "SQLWARD_TOKEN": BOT_TOKEN})
    assert out.returncode == 0, out.stderr
    assert [a["id"] for a in json.loads(out.stdout)["approvals"]] == [done.id, second.id, first.id]

    # show: the whole request
    out = cli("show", first.id, *auth)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"approval request {first.id}: pending" in text
    assert "requester:   alice via deploy-agent [dev] (static)" in text
    assert "target:      app (production, postgres)" in text
    assert "rules:       mass-write: a write of many rows in production needs approval" in text
    assert "about 48001 rows" in text
    assert "needs:       1 approval from bot:change-bot, group:dba" in text
    assert "    DELETE FROM sessions\n    WHERE last_seen < now() - interval '1 days'" in text
    assert "reason:      CHG-4711 purge old sessions" in text
    assert "decisions:   none yet" in text
    assert f"link:        {url}/api/v1/approvals/{first.id}" in text

    # approve, with a comment
    out = cli("approve", first.id, "--comment", "ticket checked", *auth)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{first.id}: approved; the request is now approved"
    stored = _stored(db, first.id)
    assert stored.status == "approved"
    (decision,) = stored.decisions
    assert (decision.verdict, decision.comment) == ("approve", "ticket checked")
    assert (decision.approver.kind, decision.approver.subject, decision.approver.verified_by) == ("bot", "change-bot", "api-token")
    out = cli("show", first.id, *auth)
    assert "approve  bot change-bot (api-token): ticket checked" in out.stdout

    # reject the other one
    out = cli("reject", second.id, "-m", "not in the change window", *auth)
    assert out.returncode == 0, out.stderr
    assert _stored(db, second.id).status == "rejected"

    # the gateway's audit trail has both decisions
    decided = [e for e in setup["gw"].audit_events() if e.get("event") == "approval.decided"]
    assert [(e["approval_id"], e["verdict"], e["comment"]) for e in decided] == [
        (first.id, "approve", "ticket checked"), (second.id, "reject", "not in the change window"),
    ]


def test_refusals_exit_1_with_the_servers_message(setup: dict[str, Any]) -> None:
    db, url, ca = setup["db"], setup["url"], setup["ca"]
    r = _request(1, status="approved", decided=time.time())
    _store(db, r)
    auth = ("--url", url, "--ca-file", ca, "--token-file", setup["token_file"])

    out = cli("approve", r.id, *auth)
    assert out.returncode == 1
    assert out.stderr.strip() == f"sqlward approvals approve: refused (HTTP 409): approval request {r.id} is approved, not pending"
    assert out.stdout == ""

    out = cli("show", "ap-000000000000", *auth)
    assert out.returncode == 1
    assert "refused (HTTP 404): no approval request ap-000000000000" in out.stderr

    out = cli("list", "--url", url, "--ca-file", ca, "--token", "not-the-token")
    assert out.returncode == 1
    assert out.stderr.strip() == "sqlward approvals list: refused (HTTP 401): a valid bearer token is required"
    assert _stored(db, r.id).decisions == ()


def test_usage_and_connection_errors_exit_2_without_a_traceback(setup: dict[str, Any]) -> None:
    url, ca, token_file = setup["url"], setup["ca"], setup["token_file"]
    cases = [
        (("list", "--ca-file", ca, "--token-file", token_file), "no admin API URL: pass --url or set SQLWARD_ADMIN_URL"),
        (("list", "--url", url, "--ca-file", ca), "no bearer token: pass --token or --token-file, or set SQLWARD_TOKEN"),
        (("list", "--url", url, "--token-file", token_file),
         f"cannot reach the admin API at {url}: TLS certificate not trusted"),
        (("list", "--url", f"https://127.0.0.1:{free_port()}", "--ca-file", ca, "--token-file", token_file),
         "cannot reach the admin API at https://127.0.0.1:"),
        (("list", "--url", url, "--ca-file", ca, "--token-file", str(setup["dir"] / "missing.token")),
         "cannot read the token file"),
        (("list", "--url", url, "--ca-file", ca, "--token-file", token_file, "--status", "pending,soon"),
         "unknown status 'soon'"),
        (("list", "--url", "ftp://example.com", "--token", "x"), "expected an http:// or https:// URL"),
    ]
    for args, message in cases:
        out = cli(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    out = cli()
    assert out.returncode == 2 and "expected a command: list, show, approve or reject" in out.stderr
    out = cli("approve")  # argparse: the ID is missing
    assert out.returncode == 2 and "the following arguments are required: ID" in out.stderr


def test_show_escapes_what_could_rewrite_the_terminal(setup: dict[str, Any]) -> None:
    """The statement and reason come from the requester: an ANSI escape or a bidi override in them
    must not reach the approver's terminal (it could show a statement other than the one run)."""
    db = setup["db"]
    sneaky = _request(
        1, sql="DELETE FROM sessions\x1b[2K\x1b[1A\rSELECT 1 -- harmless", reason="CHG-1 \u202eevil\u202c\nneeds:       nothing",
    )
    _store(db, sneaky)
    auth = ("--url", setup["url"], "--ca-file", setup["ca"], "--token-file", setup["token_file"])
    for args in (("show", sneaky.id), ("list",)):
        out = cli(*args, *auth)
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout and "\r" not in out.stdout and "\u202e" not in out.stdout
    out = cli("show", sneaky.id, *auth)
    assert "    DELETE FROM sessions\\x1b[2K\\x1b[1A\\x0dSELECT 1 -- harmless" in out.stdout
    assert "reason:      CHG-1 \\u202eevil\\u202c\\x0aneeds:       nothing" in out.stdout
    assert [line for line in out.stdout.splitlines() if line.lstrip().startswith("needs:")] == [
        "  needs:       1 approval from bot:change-bot, group:dba",
    ]
