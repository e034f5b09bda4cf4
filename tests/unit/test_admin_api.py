"""The admin API (gateway.http): a real hypercorn trio listener with the real Starlette app over a
real SqliteStore and ApprovalService, called over HTTP(S) with httpx.

How it works: each test builds a `Gatekeeper` from a real config (a bot identity with an API
token file; an `[[oidc]]` issuer that is `tests.support.oidc.TestIssuer`, serving its JWKS over
local HTTPS), so callers are authenticated by `Gatekeeper.approver_for_bearer` exactly as in the
gateway. `serve` runs `serve_admin` on a free port of 127.0.0.1 in a trio nursery, hands an
`httpx.AsyncClient` to the scenario and cancels the listener afterwards. Requests are put into
the store directly (as the pipeline would have). The service's audit scope writes to an
in-memory sink (`tests.support.auditsink.ListSink`), so the audit events of decisions can be
checked.

[admin.access] here: approvals_read = ["approvers", "auditors"], approvals_decide =
["approvers"]. Callers: the bot `change-bot` (group approvers, API token), bob (OIDC, group
approvers), carol (OIDC, group auditors: reads only), dave (OIDC, no group), alice (OIDC, group
approvers: the requester of the test requests).
"""

from __future__ import annotations

import logging
import socket
import ssl
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from openapi_spec_validator import validate as validate_openapi

from sqlward.audit.recorder import Recorder
from sqlward.gateway.approvals.model import ApprovalRequest, Requester
from sqlward.gateway.approvals.service import ApprovalService, new_id
from sqlward.gateway.approvals.store import SqliteStore
from sqlward.gateway.config import AdminAccess, AdminConfig, AdminTLS, Config, load_config
from sqlward.gateway.gatekeeper import Gatekeeper
from sqlward.gateway.http.app import MAX_BODY, build_app
from sqlward.gateway.http.schema import Approval
from sqlward.gateway.http.server import serve_admin
from sqlward.policy.approval import ApprovalRule, Approver
from tests.support.auditsink import ListSink
from tests.support.certs import make_pki
from tests.support.oidc import TestIssuer

BOT_TOKEN = "bot-token-0123456789abcdef0123456789abcdef"
ACCESS = AdminAccess(approvals_read=("approvers", "auditors"), approvals_decide=("approvers",))
REQUESTER = "alice@example.com"

CONFIG = """
[gateway]
name = "gw-test"

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:6432"

[[targets]]
name = "app"
protocol = "postgres"
environment = "production"
dsn = "postgresql://svc@127.0.0.1:5432/app"

[[identities]]
name = "change-bot"
groups = ["approvers"]
bot = true
api_token_file = "bot.token"

[[identities]]
name = "lonely-bot"
bot = true
api_token = "lonely-bot-token-0123456789abcdef0123"

[audit]
file = "audit.jsonl"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> TestIssuer:
    issuer = TestIssuer(tmp_path_factory.mktemp("api-idp"))
    with issuer:
        yield issuer


@dataclass
class Env:
    dir: Path
    idp: TestIssuer
    gatekeeper: Gatekeeper
    store_path: Path
    sink: ListSink

    def token(self, who: str, groups: list[str], **claims: Any) -> str:
        return self.idp.mint(sub=who, groups=groups, **claims)

    def headers(self, who: str) -> dict[str, str]:
        tokens = {
            "bot": BOT_TOKEN,
            "lonely-bot": "lonely-bot-token-0123456789abcdef0123",
            "bob": self.token("bob@example.com", ["approvers"]),
            "carol": self.token("carol@example.com", ["auditors"]),
            "dave": self.token("dave@example.com", []),
            "alice": self.token(REQUESTER, ["approvers"]),
        }
        return {"Authorization": f"Bearer {tokens[who]}"}


@pytest.fixture
def env(tmp_path: Path, idp: TestIssuer) -> Env:
    (tmp_path / "bot.token").write_text(BOT_TOKEN + "\n")
    path = tmp_path / "sqlward.toml"
    path.write_text(textwrap.dedent(CONFIG) + "\n" + idp.oidc_toml())
    config: Config = load_config(str(path))
    sink = ListSink()
    gatekeeper = Gatekeeper.from_config(config, audit_sink=ListSink())
    yield Env(dir=tmp_path, idp=idp, gatekeeper=gatekeeper, store_path=tmp_path / "approvals.sqlite3", sink=sink)
    gatekeeper.close()


def pending(n: int = 0, **changes: Any) -> ApprovalRequest:
    now = time.time()
    fields: dict[str, Any] = dict(
        id=new_id(), binding=f"{n:064x}", requester=Requester(subject=REQUESTER, groups=("dev",), verified_by="oidc"),
        reason="CHG-1234 purge old rows", gateway="gw-test", target="app", environment="production", protocol="postgres",
        sql=f"DELETE FROM accounts WHERE created < '2020-01-0{n % 9 + 1}'", operations=("delete",),
        tables=("public.accounts",), rules=("mass-write",), estimated_rows=120000,
        requirements=(ApprovalRule(approvers=("bot:change-bot", "group:approvers")),),
        created=now + n * 0.001, expires=now + 900,
    )
    fields.update(changes)
    return ApprovalRequest(**fields)


Scenario = Callable[[httpx.AsyncClient, SqliteStore], Awaitable[None]]


def serve(
    env: Env, scenario: Scenario, *, tls: bool = False, listen: str | None = None,
    authenticate: Callable[[str], Awaitable[Approver]] | None = None, requests: tuple[ApprovalRequest, ...] = (),
) -> None:
    """Run the admin listener on a free port, insert `requests`, run `scenario`, stop it."""
    admin_tls = None
    verify: ssl.SSLContext | bool = False
    if tls:
        pki = make_pki(env.dir / "admin-pki", prefix="admin-")
        admin_tls = AdminTLS(cert_file=str(pki.cert_file), key_file=str(pki.key_file))
        verify = ssl.create_default_context(cafile=str(pki.ca_file))
    cfg = AdminConfig(listen=listen or f"127.0.0.1:{free_port()}", tls=admin_tls, access=ACCESS)

    async def main() -> None:
        store = SqliteStore(str(env.store_path))
        await store.open()
        for r in requests:
            await store.insert(r)
        recorder = Recorder("gw-test", env.sink)
        service = ApprovalService(
            store, scope=recorder.gateway_scope, link=lambda i: f"https://sqlward.example.com/api/v1/approvals/{i}",
        )
        app = build_app(
            approvals=service, authenticate=authenticate or env.gatekeeper.approver_for_bearer, access=ACCESS,
            version="9.9.9-test",
        )
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_admin, cfg, app)
            base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, verify=verify, timeout=10) as client:
                await scenario(client, store)
            nursery.cancel_scope.cancel()
        await store.aclose()

    trio.run(main)


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it (httpx on trio wraps the ssl error without its message)."""
    out: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in out:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


def decided_events(sink: ListSink) -> list[dict[str, Any]]:
    return [e for e in sink.events if e["event"] == "approval.decided"]


# -- authentication ---------------------------------------------------------------------------


def test_no_token_is_401_with_a_bearer_challenge_on_every_path(env: Env) -> None:
    r1 = pending(1)

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        for method, path in (
            ("GET", "/api/v1/approvals"), ("GET", f"/api/v1/approvals/{r1.id}"), ("POST", f"/api/v1/approvals/{r1.id}/approve"),
            ("GET", "/api/v1/openapi.json"), ("GET", "/api/v1/whoami"), ("GET", "/no/such/route"),
        ):
            for headers in ({}, {"Authorization": "Basic Ym90OnNlY3JldA=="}, {"Authorization": "Bearer"}, {"Authorization": "Token abc"}):
                resp = await c.request(method, path, headers=headers)
                assert resp.status_code == 401, (method, path, headers)
                assert resp.headers["www-authenticate"].startswith("Bearer")
                assert resp.json() == {"error": "a valid bearer token is required"}
        assert (await store.get(r1.id)).status == "pending"

    serve(env, scenario, requests=(r1,))


def test_a_refused_token_is_401_and_says_nothing_about_why(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    idp = env.idp

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        bad = {
            "unknown static token": "not-a-bot-token-at-all",
            "forged signature": idp.mint_bad_signature(sub="bob@example.com", groups=["approvers"]),
            "expired": idp.mint(sub="bob@example.com", groups=["approvers"], ttl=-600),
            "other audience": idp.mint(sub="bob@example.com", groups=["approvers"], aud="someone-else"),
            "alg none": idp.mint_unsigned(sub="bob@example.com", groups=["approvers"]),
        }
        bodies = set()
        for what, token in bad.items():
            resp = await c.get("/api/v1/approvals", headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 401, what
            assert resp.headers["www-authenticate"] == 'Bearer realm="sqlward", error="invalid_token"', what
            bodies.add(resp.text)
        assert bodies == {'{"error":"a valid bearer token is required"}'}  # the same for every reason

    with caplog.at_level(logging.INFO, logger="sqlward.admin"):
        serve(env, scenario)
    # ... while the operator can see why in the log
    assert any("token refused" in r.getMessage() for r in caplog.records if r.name == "sqlward.admin")


def test_whoami_names_the_caller_and_what_it_may_do(env: Env) -> None:
    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        bot = (await c.get("/api/v1/whoami", headers=env.headers("bot"))).json()
        assert bot == {
            "approver": {"subject": "change-bot", "groups": ["approvers"], "kind": "bot", "actor": [], "issuer": "",
                         "verified_by": "api-token"},
            "may_read": True, "may_decide": True, "version": "9.9.9-test",
        }
        carol = (await c.get("/api/v1/whoami", headers=env.headers("carol"))).json()
        assert carol["approver"]["subject"] == "carol@example.com"
        assert carol["approver"]["kind"] == "person" and carol["approver"]["verified_by"] == "oidc"
        assert carol["approver"]["issuer"] == env.idp.issuer
        assert (carol["may_read"], carol["may_decide"]) == (True, False)
        dave = (await c.get("/api/v1/whoami", headers=env.headers("dave"))).json()  # no group: still told who it is
        assert (dave["may_read"], dave["may_decide"]) == (False, False)

    serve(env, scenario)


# -- group authorisation -------------------------------------------------------------------------


def test_groups_of_admin_access_gate_reads_and_decisions(env: Env) -> None:
    r1 = pending(1)

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        # dave: in no group of approvals_read
        for path in ("/api/v1/approvals", f"/api/v1/approvals/{r1.id}"):
            resp = await c.get(path, headers=env.headers("dave"))
            assert resp.status_code == 403
            assert "dave@example.com is in no group allowed to read" in resp.json()["error"]
        # carol: reads, but may not decide
        assert (await c.get("/api/v1/approvals", headers=env.headers("carol"))).status_code == 200
        assert (await c.get(f"/api/v1/approvals/{r1.id}", headers=env.headers("carol"))).status_code == 200
        for verdict in ("approve", "reject"):
            resp = await c.post(f"/api/v1/approvals/{r1.id}/{verdict}", headers=env.headers("carol"))
            assert resp.status_code == 403
            assert "carol@example.com is in no group allowed to decide" in resp.json()["error"]
        # a bot in no group is held to [admin.access] as well
        resp = await c.post(f"/api/v1/approvals/{r1.id}/approve", headers=env.headers("lonely-bot"))
        assert resp.status_code == 403
        current = await store.get(r1.id)
        assert current.status == "pending" and current.decisions == ()
        assert decided_events(env.sink) == []

    serve(env, scenario, requests=(r1,))


# -- reads ---------------------------------------------------------------------------------------


def test_list_filters_by_status_newest_first_and_show_returns_the_stored_request(env: Env) -> None:
    r1, r2, r3 = pending(1), pending(2), pending(3, status="rejected")

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        h = env.headers("carol")
        resp = await c.get("/api/v1/approvals", params={"status": "pending"}, headers=h)
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
        assert [a["id"] for a in resp.json()["approvals"]] == [r2.id, r1.id]
        every = (await c.get("/api/v1/approvals", headers=h)).json()["approvals"]
        assert [a["id"] for a in every] == [r3.id, r2.id, r1.id]
        both = (await c.get("/api/v1/approvals", params={"status": "rejected,pending", "limit": "2"}, headers=h)).json()
        assert [a["id"] for a in both["approvals"]] == [r3.id, r2.id]

        shown = await c.get(f"/api/v1/approvals/{r1.id}", headers=h)
        assert shown.status_code == 200
        got = msgspec.json.decode(shown.content, type=Approval)
        assert got.link == f"https://sqlward.example.com/api/v1/approvals/{r1.id}"
        # the request as stored, every field, plus its link
        assert msgspec.structs.asdict(got) == {**msgspec.structs.asdict(r1), "link": got.link}
        assert shown.json()["requester"]["subject"] == REQUESTER
        assert shown.json()["requirements"] == [{
            "approvers": ["bot:change-bot", "group:approvers"], "approvals": 1, "all_groups": [], "principal": False,
            "mode": "hold", "expires": 900.0, "hold_timeout": 300.0, "reason_pattern": "",
        }]

        for params, message in (
            ({"status": "pending,maybe"}, "unknown status 'maybe'"),
            ({"status": ""}, "unknown status"),
            ({"limit": "501"}, "limit must be a whole number from 1 to 500"),
            ({"limit": "0"}, "limit must be"),
            ({"limit": "ten"}, "limit must be"),
            ({"limit": "\u00b2"}, "limit must be"),  # superscript two: a digit to str.isdigit, not to int()
            ({"limit": "\u0661"}, "limit must be"),  # Arabic-Indic one
            ({"offset": "\u2460"}, "offset must be"),
            ({"state": "pending"}, "unknown query parameter 'state'"),
        ):
            resp = await c.get("/api/v1/approvals", params=params, headers=h)
            assert resp.status_code == 400, params
            assert message in resp.json()["error"], (params, resp.json())

    serve(env, scenario, requests=(r1, r2, r3))


def test_unknown_request_is_404(env: Env) -> None:
    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        h = env.headers("bob")
        resp = await c.get("/api/v1/approvals/ap-000000000000", headers=h)
        assert resp.status_code == 404 and resp.json() == {"error": "no approval request ap-000000000000"}
        for verdict in ("approve", "reject"):
            resp = await c.post(f"/api/v1/approvals/ap-000000000000/{verdict}", headers=h, json={"comment": "x"})
            assert resp.status_code == 404 and resp.json() == {"error": "no approval request ap-000000000000"}
        resp = await c.get("/api/v1/approvals/" + "x" * 300, headers=h)
        assert resp.status_code == 404
        resp = await c.get("/api/v1/nothing-here", headers=h)  # authenticated: an unknown route is a JSON 404
        assert resp.status_code == 404 and resp.json() == {"error": "no such route"}
        resp = await c.delete("/api/v1/approvals", headers=h)
        assert resp.status_code == 405 and resp.json() == {"error": "method not allowed"}

    serve(env, scenario)


# -- decisions -----------------------------------------------------------------------------------


def test_a_bot_approves_with_its_api_token(env: Env) -> None:
    r1 = pending(1)

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        resp = await c.post(f"/api/v1/approvals/{r1.id}/approve", headers=env.headers("bot"))
        assert resp.status_code == 200
        body = resp.json()
        assert body["status"] == "approved" and body["decided"] is not None
        (decision,) = body["decisions"]
        assert decision["verdict"] == "approve" and decision["comment"] == ""
        assert decision["approver"] == {"subject": "change-bot", "groups": ["approvers"], "kind": "bot", "actor": [],
                                        "issuer": "", "verified_by": "api-token"}
        stored = await store.get(r1.id)
        assert stored.status == "approved" and stored.decisions[0].approver.kind == "bot"
        (event,) = decided_events(env.sink)
        assert event["approval_id"] == r1.id and event["verdict"] == "approve" and event["status"] == "approved"

    serve(env, scenario, requests=(r1,))


def test_a_person_rejects_with_a_comment(env: Env) -> None:
    r1 = pending(1)

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        resp = await c.post(
            f"/api/v1/approvals/{r1.id}/reject", headers=env.headers("bob"), json={"comment": "not during the freeze"},
        )
        assert resp.status_code == 200
        assert resp.json()["status"] == "rejected"
        stored = await store.get(r1.id)
        assert stored.status == "rejected"
        (decision,) = stored.decisions
        assert decision.verdict == "reject" and decision.comment == "not during the freeze"
        assert decision.approver.subject == "bob@example.com" and decision.approver.verified_by == "oidc"
        assert decision.approver.issuer == env.idp.issuer
        (event,) = decided_events(env.sink)
        assert event["comment"] == "not during the freeze" and event["status"] == "rejected"

    serve(env, scenario, requests=(r1,))


def test_nobody_approves_their_own_request(env: Env) -> None:
    r1 = pending(1)

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        # alice is in group approvers (so [admin.access] lets her decide), but she asked
        resp = await c.post(f"/api/v1/approvals/{r1.id}/approve", headers=env.headers("alice"))
        assert resp.status_code == 403
        assert resp.json() == {"error": "nobody approves their own request"}
        assert (await store.get(r1.id)).status == "pending"
        assert decided_events(env.sink) == []

    serve(env, scenario, requests=(r1,))


def test_a_decided_request_is_409(env: Env) -> None:
    r1 = pending(1)
    r2 = pending(2, requirements=(ApprovalRule(approvers=("bot:change-bot", "group:approvers"), approvals=2),))

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        assert (await c.post(f"/api/v1/approvals/{r1.id}/approve", headers=env.headers("bot"))).status_code == 200
        for who, verdict in (("bob", "approve"), ("bob", "reject"), ("bot", "approve")):
            resp = await c.post(f"/api/v1/approvals/{r1.id}/{verdict}", headers=env.headers(who))
            assert resp.status_code == 409, (who, verdict)
            assert resp.json() == {"error": f"approval request {r1.id} is approved, not pending"}
        stored = await store.get(r1.id)
        assert stored.status == "approved" and len(stored.decisions) == 1
        # two approvals needed: the same approver twice does not count twice
        assert (await c.post(f"/api/v1/approvals/{r2.id}/approve", headers=env.headers("bob"))).json()["status"] == "pending"
        resp = await c.post(f"/api/v1/approvals/{r2.id}/approve", headers=env.headers("bob"))
        assert resp.status_code == 409
        assert resp.json() == {"error": f"bob@example.com has already decided approval request {r2.id}"}

    serve(env, scenario, requests=(r1, r2))


def test_a_malformed_body_is_400_and_changes_nothing(env: Env) -> None:
    r1 = pending(1)

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        h = env.headers("bob")
        url = f"/api/v1/approvals/{r1.id}/approve"
        for content, message in (
            (b'{"comment": "ok", "force": true}', "Object contains unknown field `force`"),
            (b'{"comment": 42}', "Expected `str`, got `int` - at `$.comment`"),
            (b"approve please", "invalid body: JSON is malformed"),
            (b'["ok"]', "Expected `object`, got `array`"),
            (b'{"comment": "' + b"x" * 2001 + b'"}', "Expected `str` of length <= 2000"),
        ):
            resp = await c.post(url, headers={**h, "Content-Type": "application/json"}, content=content)
            assert resp.status_code == 400, content[:40]
            assert message in resp.json()["error"], resp.json()
        resp = await c.post(url, headers=h, content=b'{"comment": "' + b"x" * MAX_BODY + b'"}')
        assert resp.status_code == 413 and "larger than 65536 bytes" in resp.json()["error"]

        async def chunks():  # no Content-Length: the limit holds on what arrives
            for _ in range(20):
                yield b" " * 8192

        resp = await c.post(url, headers=h, content=chunks())
        assert resp.status_code == 413
        stored = await store.get(r1.id)
        assert stored.status == "pending" and stored.decisions == ()
        # an empty body is no comment
        resp = await c.post(url, headers=h, content=b"")
        assert resp.status_code == 200 and resp.json()["decisions"][0]["comment"] == ""

    serve(env, scenario, requests=(r1,))


def test_a_failing_store_is_503(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    r1 = pending(1)

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        import sqlite3

        db = sqlite3.connect(env.store_path)
        db.execute("DROP TABLE approvals")  # the store's connection is open: its next query fails
        db.close()
        h = env.headers("bob")
        for resp in (
            await c.get("/api/v1/approvals", headers=h),
            await c.get(f"/api/v1/approvals/{r1.id}", headers=h),
            await c.post(f"/api/v1/approvals/{r1.id}/approve", headers=h),
        ):
            assert resp.status_code == 503
            assert resp.json() == {"error": "the approval store is unavailable; nothing was changed"}

    with caplog.at_level(logging.ERROR, logger="sqlward.admin"):
        serve(env, scenario, requests=(r1,))
    assert any("the approval store failed" in r.getMessage() and "no such table" in r.getMessage() for r in caplog.records)


def test_an_unexpected_error_is_a_generic_500_and_logged(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(token: str) -> Approver:
        raise RuntimeError("secret internals: /etc/sqlward/bot.token")

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        resp = await c.get("/api/v1/approvals", headers={"Authorization": "Bearer whatever"})
        assert resp.status_code == 500
        assert resp.json() == {"error": "internal error (logged by the gateway)"}
        assert "secret internals" not in resp.text and "Traceback" not in resp.text

    with caplog.at_level(logging.ERROR, logger="sqlward.admin"):
        serve(env, scenario, authenticate=broken)
    (record,) = [r for r in caplog.records if r.name == "sqlward.admin" and r.levelno >= logging.ERROR]
    assert record.exc_info is not None and "secret internals" in str(record.exc_info[1])


# -- the OpenAPI document ---------------------------------------------------------------------------


def test_the_openapi_document_is_valid_and_generated_from_the_structs(env: Env) -> None:
    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        resp = await c.get("/api/v1/openapi.json", headers=env.headers("dave"))  # any authenticated caller
        assert resp.status_code == 200
        doc = resp.json()
        validate_openapi(doc)  # raises on a structurally invalid OpenAPI 3.1 document
        assert doc["openapi"] == "3.1.0" and doc["info"]["version"] == "9.9.9-test"
        assert doc["components"]["securitySchemes"]["bearer"] == {
            "type": "http", "scheme": "bearer",
            "description": "An OIDC access token of a configured issuer, or a bot identity's API token.",
        }
        assert set(doc["paths"]) == {
            "/api/v1/approvals", "/api/v1/approvals/{id}", "/api/v1/approvals/{id}/approve",
            "/api/v1/approvals/{id}/reject", "/api/v1/whoami", "/api/v1/openapi.json",
        }
        for item in doc["paths"].values():
            for op in item.values():
                assert op["security"] == [{"bearer": []}] and "401" in op["responses"]
        # every field of the Structs, as msgspec sees them
        schemas = doc["components"]["schemas"]
        assert set(schemas["Approval"]["properties"]) == set(Approval.__struct_fields__)
        assert set(schemas["Approver"]["properties"]) == set(Approver.__struct_fields__)
        assert schemas["DecisionBody"]["additionalProperties"] is False
        approve = doc["paths"]["/api/v1/approvals/{id}/approve"]["post"]
        assert approve["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/DecisionBody"}
        assert approve["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Approval"}
        assert {"403", "404", "409", "400"} <= set(approve["responses"])
        listing = doc["paths"]["/api/v1/approvals"]["get"]
        assert [p["name"] for p in listing["parameters"]] == ["status", "limit", "offset", "requester"]
        assert listing["parameters"][1]["schema"]["maximum"] == 500

    serve(env, scenario)


# -- the listener ---------------------------------------------------------------------------------


def test_tls_listener_with_a_private_ca(env: Env) -> None:
    r1 = pending(1)

    async def scenario(c: httpx.AsyncClient, store: SqliteStore) -> None:
        assert str(c.base_url).startswith("https://")
        resp = await c.get(f"/api/v1/approvals/{r1.id}", headers=env.headers("bot"))
        assert resp.status_code == 200 and resp.json()["id"] == r1.id
        assert resp.http_version in ("HTTP/1.1", "HTTP/2")
        assert "server" not in resp.headers
        # a client that does not trust the private CA does not get through
        async with httpx.AsyncClient(base_url=str(c.base_url), timeout=10) as untrusting:
            with pytest.raises(httpx.ConnectError) as refused:
                await untrusting.get("/api/v1/whoami", headers=env.headers("bot"))
            assert any(isinstance(e, ssl.SSLCertVerificationError) for e in causes(refused.value))
        # and plain HTTP to the TLS port is no way around it
        plain = str(c.base_url).replace("https://", "http://")
        async with httpx.AsyncClient(base_url=plain, timeout=10) as cleartext:
            with pytest.raises(httpx.HTTPError):  # the TLS listener never answers in clear text
                await cleartext.get("/api/v1/approvals", headers=env.headers("bot"))

    serve(env, scenario, tls=True, requests=(r1,))


def test_port_zero_reports_the_bound_port_and_cancellation_stops_the_listener(env: Env) -> None:
    async def main() -> None:
        store = SqliteStore(str(env.store_path))
        service = ApprovalService(store, scope=Recorder("gw-test", env.sink).gateway_scope)
        app = build_app(approvals=service, authenticate=env.gatekeeper.approver_for_bearer, access=ACCESS, version="t")
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_admin, AdminConfig(listen="127.0.0.1:0", access=ACCESS), app)
            assert port > 0
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                resp = await c.get("/api/v1/whoami", headers=env.headers("bot"))
                assert resp.status_code == 200
            started = trio.current_time()
            nursery.cancel_scope.cancel()
        assert trio.current_time() - started < 5  # graceful, and prompt when idle
        with pytest.raises(OSError):  # nothing listens there any more
            await trio.open_tcp_stream("127.0.0.1", port)
        await store.aclose()

    trio.run(main)
