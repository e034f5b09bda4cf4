"""A gateway with approvals for end-to-end tests: its admin listener, a bot, the CLI.

    gw = approval_gateway(tmp_path, targets=[...], guardrails={...})
    with gw:
        ... a client runs a statement the policy holds ...
        [request] = wait_pending(gw)
        assert approve_cli(gw, request["id"]).returncode == 0

`approval_gateway` starts nothing: it builds a `GatewayProcess` with `[admin]` on a free port,
the approval store (a SQLite file in the test's directory unless `store` names one, e.g. a
postgresql:// DSN shared by two gateways), and the bot identity `change-bot` (group `bots`)
whose API token is `BOT_TOKEN`, plus the identities and policy given. The helpers reach the
admin API with httpx and the CLI as a subprocess (`python -m sqlward.gateway approvals ...`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.gateway import REPO_ROOT, GatewayProcess, free_port

BOT_TOKEN = "change-bot-api-token-3f9c2a7d1e5b4c68"
BOT = {"name": "change-bot", "bot": True, "groups": ["bots"], "api_token": BOT_TOKEN}


def approval_gateway(
    directory: Path, *, targets: list[dict[str, Any]], identities: list[dict[str, Any]],
    guardrails: dict[str, Any] | None = None, rules: list[dict[str, Any]] | None = None,
    environments: dict[str, dict[str, Any]] | None = None, store: str = "", listener: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None, name: str = "it", poll_seconds: float = 0.2,
) -> GatewayProcess:
    directory.mkdir(parents=True, exist_ok=True)
    admin_port = free_port()
    doc: dict[str, Any] = {
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "approvals": {"store": store or str(directory / "approvals.sqlite3"), "poll_seconds": poll_seconds, "sweep_seconds": 0.5},
    }
    if guardrails:
        doc["guardrails"] = guardrails
    doc.update(extra or {})
    gw = GatewayProcess(
        targets=targets, identities=[*identities, BOT], rules=rules, environments=environments, listener=listener,
        extra=doc, name=name, workdir=directory,
    )
    gw.admin_url = f"http://127.0.0.1:{admin_port}"  # type: ignore[attr-defined]
    return gw


def api(gw: GatewayProcess, method: str, path: str, *, token: str = BOT_TOKEN, json: Any = None) -> httpx.Response:
    url = gw.admin_url + path  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10  # the admin listener opens just after the database listeners
    while True:
        try:
            return httpx.request(method, url, headers={"Authorization": f"Bearer {token}"}, json=json, timeout=10)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def requests(gw: GatewayProcess, status: str = "all") -> list[dict[str, Any]]:
    query = "limit=500" if status == "all" else f"status={status}&limit=500"
    r = api(gw, "GET", f"/api/v1/approvals?{query}")
    assert r.status_code == 200, r.text
    return list(r.json()["approvals"])


def wait_pending(gw: GatewayProcess, count: int = 1, timeout: float = 15.0, *, known: set[str] | None = None) -> list[dict[str, Any]]:
    """The pending requests once there are `count` of them (not among `known`)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in requests(gw, "pending") if not known or r["id"] not in known]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} pending approval request(s) after {timeout} s, expected {count}")
        time.sleep(0.1)


def cli(gw: GatewayProcess, *args: str, token: str = BOT_TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SQLWARD_ADMIN_URL": gw.admin_url, "SQLWARD_TOKEN": token}  # type: ignore[attr-defined]
    return subprocess.run(
        [sys.executable, "-m", "sqlward.gateway", "approvals", *args], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60,
    )


def approve_cli(gw: GatewayProcess, approval_id: str, *, token: str = BOT_TOKEN, comment: str = "looks right") -> subprocess.CompletedProcess[str]:
    return cli(gw, "approve", approval_id, "--comment", comment, token=token)


def events(gw: GatewayProcess, *names: str) -> list[dict[str, Any]]:
    return [e for e in gw.audit_events() if not names or e["event"] in names]
