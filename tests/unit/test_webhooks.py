"""gateway.approvals.webhooks: payloads, signatures, retries, filters and the never-blocking queue,
against a real HTTP receiver.

How it works: `Receiver` is a tiny HTTP/1.1 server written in the test (trio sockets + h11,
keep-alive) on a free port of 127.0.0.1 (optionally behind TLS with a throw-away CA). It records
every request (headers, body, arrival time) and answers from a script: a list of
`(status, headers, delay)` for the next requests, then 200. Each test runs the notifier's `run()`
in a nursery under `trio.run`, so httpx is exercised on trio exactly as in the gateway.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
import trio

from sqlward.gateway.approvals.model import ApprovalRequest, Decision, Requester
from sqlward.gateway.approvals.webhooks import WebhookNotifier, sign
from sqlward.gateway.config import WebhookConfig
from sqlward.policy.approval import ApprovalRule, Approver
from tests.support.certs import make_pki

SECRET = "a-webhook-secret-of-32-characters"
LINK_BASE = "https://sqlward.example.com/api/v1/approvals/"


def link(approval_id: str) -> str:
    return LINK_BASE + approval_id


def request(n: int = 1, **changes: object) -> ApprovalRequest:
    fields: dict[str, object] = dict(
        id=f"ap-{n:012d}", binding="b" * 64, requester=Requester(subject="alice@example.com", groups=("dev",)),
        reason="CHG-1234 clean up old rows", gateway="gw-1", target="prod", environment="production",
        protocol="postgres", sql="DELETE FROM accounts WHERE created < '2020-01-01'", operations=("delete",),
        tables=("public.accounts",), rules=("mass-write",), estimated_rows=120000,
        requirements=(ApprovalRule(approvers=("group:dba",)),), created=time.time(), expires=time.time() + 900,
    )
    fields.update(changes)
    return ApprovalRequest(**fields)  # type: ignore[arg-type]


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    script: list[tuple[int, dict[str, str], float]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    ssl_context: object | None = None
    port: int = 0

    async def serve(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(trio.serve_tcp, self._handle, 0)
        self.port = listeners[0].socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}/hook"

    async def _handle(self, stream: trio.abc.Stream) -> None:
        if self.ssl_context is not None:
            stream = trio.SSLStream(stream, self.ssl_context, server_side=True)  # type: ignore[arg-type]
        conn = h11.Connection(h11.SERVER)

        async def next_event() -> object:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                return event

        try:
            while True:
                event = await next_event()
                if not isinstance(event, h11.Request):
                    return
                body = b""
                while True:
                    part = await next_event()
                    if isinstance(part, h11.Data):
                        body += part.data
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
                self.seen.append(Seen(
                    event.method.decode(), event.target.decode(),
                    {k.decode().lower(): v.decode() for k, v in event.headers}, body, time.monotonic(),
                ))
                status, headers, delay = self.script.pop(0) if self.script else (200, {}, 0.0)
                if delay:
                    await trio.sleep(delay)
                out = b"ok"
                await stream.send_all(conn.send(h11.Response(
                    status_code=status, headers=[("content-length", str(len(out))), *headers.items()],
                )))
                await stream.send_all(conn.send(h11.Data(data=out)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return


def hook(url: str, **changes: object) -> WebhookConfig:
    fields: dict[str, object] = dict(url=url, secret=SECRET, timeout_seconds=2.0, max_attempts=4, backoff_seconds=0.01)
    fields.update(changes)
    return WebhookConfig(**fields)  # type: ignore[arg-type]


def notifier(*hooks: WebhookConfig, queue_size: int = 1000) -> WebhookNotifier:
    return WebhookNotifier.from_config(hooks, link=link, gateway="gw-1", queue_size=queue_size)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.005)


def run(test: Callable[[trio.Nursery], object]) -> None:
    """Run `test(nursery)` under trio.run; the nursery is cancelled when it returns."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await test(nursery)  # type: ignore[misc]
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- payload, headers, signature -------------------------------------------------------------


def test_payload_headers_and_text() -> None:
    receiver = Receiver()

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url))
        nursery.start_soon(n.run)
        r = request()
        before = time.time()
        n.notify("approval.requested", r)
        await until(lambda: len(receiver.seen) == 1)
        seen = receiver.seen[0]
        assert (seen.method, seen.target) == ("POST", "/hook")
        assert seen.headers["content-type"] == "application/json"
        assert seen.headers["user-agent"] == "sqlward"
        assert seen.headers["x-sqlward-event"] == "approval.requested"
        assert len(seen.headers["x-sqlward-delivery"]) >= 16
        assert before - 1 <= int(seen.headers["x-sqlward-timestamp"]) <= time.time()
        payload = seen.json
        assert set(payload) == {"text", "event", "approval", "link", "gateway", "sent_at"}
        assert payload["event"] == "approval.requested"
        assert payload["link"] == link(r.id)
        assert payload["gateway"] == "gw-1"
        assert before - 1 <= payload["sent_at"] <= time.time()
        approval = payload["approval"]
        assert approval["id"] == r.id and approval["status"] == "pending"
        assert approval["sql"] == r.sql and approval["requester"]["subject"] == "alice@example.com"
        assert approval["requirements"][0]["approvers"] == ["group:dba"]
        text = payload["text"]
        assert "\n" not in text
        for fragment in ("alice@example.com", "DELETE FROM accounts", "prod (production)", "CHG-1234",
                         "mass-write", "waiting for approval", link(r.id), "120000 rows"):
            assert fragment in text, (fragment, text)
        # A chat message links to the approval only: no action that approves by itself.
        assert "approve" not in text.lower().replace("approval", "")
        assert "token" not in text.lower()
        assert "/approve" not in json.dumps(payload)

    run(go)


def test_decided_text_names_the_approver_and_escapes_markup() -> None:
    receiver = Receiver()

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url))
        nursery.start_soon(n.run)
        bob = Approver(subject="bob@example.com", groups=("dba",), verified_by="oidc")
        r = request(sql="SELECT 1 WHERE 2 < 3 AND '<@channel>' = '&'", status="approved",
                    decisions=(Decision(approver=bob, verdict="approve", comment="fine", time=time.time()),))
        n.notify("approval.decided", r)
        await until(lambda: len(receiver.seen) == 1)
        text = receiver.seen[0].json["text"]
        assert "approved by bob@example.com" in text and '"fine"' in text
        assert "<@channel>" not in text and "&lt;@channel&gt;" in text and "2 &lt; 3" in text
        assert f"<{link(r.id)}|{r.id}>" in text  # Slack's link syntax

    run(go)


def test_signature_verifies_with_the_secret_and_not_with_another() -> None:
    receiver = Receiver()

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url))
        nursery.start_soon(n.run)
        n.notify("approval.requested", request())
        await until(lambda: len(receiver.seen) == 1)

    run(go)
    seen = receiver.seen[0]
    ts, signature = seen.headers["x-sqlward-timestamp"], seen.headers["x-sqlward-signature"]
    assert signature.startswith("sha256=")
    # What a receiver computes (the module doc's recipe).
    expected = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + seen.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, signature)
    assert sign(SECRET.encode(), ts, seen.body) == signature
    assert not hmac.compare_digest(sign(b"another-secret-of-32-characters!!", ts, seen.body), signature)
    # Another body or another timestamp does not verify either.
    assert sign(SECRET.encode(), ts, seen.body + b" ") != signature
    assert sign(SECRET.encode(), str(int(ts) + 1), seen.body) != signature


def test_secret_file_is_read(tmp_path: Path) -> None:
    receiver = Receiver()
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text("secret-from-a-file-0123456789\n")

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url, secret=None, secret_file=str(secret_file)))
        nursery.start_soon(n.run)
        n.notify("approval.requested", request())
        await until(lambda: len(receiver.seen) == 1)

    run(go)
    seen = receiver.seen[0]
    assert seen.headers["x-sqlward-signature"] == sign(b"secret-from-a-file-0123456789", seen.headers["x-sqlward-timestamp"], seen.body)


# -- retries and giving up --------------------------------------------------------------------


def test_5xx_is_retried_with_the_same_delivery_id() -> None:
    receiver = Receiver(script=[(500, {}, 0.0), (502, {}, 0.0)])

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url, backoff_seconds=0.05))
        nursery.start_soon(n.run)
        n.notify("approval.requested", request())
        await until(lambda: len(receiver.seen) == 3 and n.pending() == 0)
        await trio.sleep(0.2)

    run(go)
    assert len(receiver.seen) == 3
    assert len({s.headers["x-sqlward-delivery"] for s in receiver.seen}) == 1
    for s in receiver.seen:  # each attempt is signed afresh and verifies
        assert s.headers["x-sqlward-signature"] == sign(SECRET.encode(), s.headers["x-sqlward-timestamp"], s.body)
    # Exponential backoff: about 0.05 s, then about 0.1 s.
    gaps = [b.at - a.at for a, b in zip(receiver.seen, receiver.seen[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1, gaps


def test_gives_up_after_max_attempts_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver(script=[(500, {}, 0.0)] * 3)

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url, max_attempts=3))
        nursery.start_soon(n.run)
        n.notify("approval.requested", request(1))
        n.notify("approval.requested", request(2))
        await until(lambda: len(receiver.seen) == 4 and n.pending() == 0)
        await trio.sleep(0.1)

    with caplog.at_level(logging.WARNING, logger="sqlward.webhooks"):
        run(go)
    assert [s.json["approval"]["id"] for s in receiver.seen] == [request(1).id] * 3 + [request(2).id]
    gave_up = [r for r in caplog.records if r.name == "sqlward.webhooks" and "gave up" in r.getMessage()]
    assert len(gave_up) == 1 and "after 3 attempt(s)" in gave_up[0].getMessage() and "HTTP 500" in gave_up[0].getMessage()


def test_4xx_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver(script=[(400, {}, 0.0)])

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url))
        nursery.start_soon(n.run)
        n.notify("approval.requested", request(1))
        n.notify("approval.decided", request(2))
        await until(lambda: len(receiver.seen) == 2 and n.pending() == 0)
        await trio.sleep(0.1)

    with caplog.at_level(logging.WARNING, logger="sqlward.webhooks"):
        run(go)
    assert [s.headers["x-sqlward-event"] for s in receiver.seen] == ["approval.requested", "approval.decided"]
    assert any("HTTP 400 (not retried)" in r.getMessage() for r in caplog.records if r.name == "sqlward.webhooks")


def test_429_retry_after_is_honoured() -> None:
    # The backoff would wait 30 s; Retry-After: 0 says now.
    receiver = Receiver(script=[(429, {"retry-after": "0"}, 0.0)])

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url, backoff_seconds=30.0))
        nursery.start_soon(n.run)
        n.notify("approval.requested", request())
        await until(lambda: len(receiver.seen) == 2, timeout=5.0)

    run(go)
    assert receiver.seen[0].headers["x-sqlward-delivery"] == receiver.seen[1].headers["x-sqlward-delivery"]


def test_timeout_is_retried() -> None:
    receiver = Receiver(script=[(200, {}, 1.0)])  # the first answer comes after the client's timeout

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url, timeout_seconds=0.2))
        nursery.start_soon(n.run)
        n.notify("approval.requested", request())
        await until(lambda: len(receiver.seen) == 2 and n.pending() == 0)

    run(go)
    assert len({s.headers["x-sqlward-delivery"] for s in receiver.seen}) == 1


def test_unreachable_receiver_is_retried_then_given_up(caplog: pytest.LogCaptureFixture) -> None:
    async def go(nursery: trio.Nursery) -> None:
        closed = trio.socket.socket()
        await closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()  # nobody listens there
        n = notifier(hook(f"http://127.0.0.1:{port}/hook", max_attempts=2))
        nursery.start_soon(n.run)
        n.notify("approval.requested", request())
        await until(lambda: n.pending() == 0)

    with caplog.at_level(logging.WARNING, logger="sqlward.webhooks"):
        run(go)
    messages = [r.getMessage() for r in caplog.records if r.name == "sqlward.webhooks"]
    assert any("gave up" in m and "after 2 attempt(s)" in m and "ConnectError" in m for m in messages), messages


# -- filters, order, queue ---------------------------------------------------------------------


def test_event_filter_per_receiver() -> None:
    only_decided, everything = Receiver(), Receiver()

    async def go(nursery: trio.Nursery) -> None:
        await only_decided.serve(nursery)
        await everything.serve(nursery)
        n = notifier(hook(only_decided.url, events=("approval.decided",)), hook(everything.url))
        nursery.start_soon(n.run)
        for kind in ("approval.requested", "approval.decided", "approval.executed"):
            n.notify(kind, request())
        await until(lambda: len(everything.seen) == 3 and n.pending() == 0)
        await trio.sleep(0.1)

    run(go)
    assert [s.headers["x-sqlward-event"] for s in only_decided.seen] == ["approval.decided"]
    assert [s.headers["x-sqlward-event"] for s in everything.seen] == [
        "approval.requested", "approval.decided", "approval.executed"]


def test_delivery_is_in_order_per_receiver_even_across_retries() -> None:
    receiver = Receiver(script=[(200, {}, 0.0), (503, {}, 0.0), (500, {}, 0.0)])

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url))
        nursery.start_soon(n.run)
        for i in range(1, 6):
            n.notify("approval.requested", request(i))
        await until(lambda: n.pending() == 0 and len(receiver.seen) == 7)

    run(go)
    ids = [s.json["approval"]["id"] for s in receiver.seen]
    assert ids == [request(i).id for i in (1, 2, 2, 2, 3, 4, 5)]


def test_notify_never_blocks_on_a_slow_or_unreachable_receiver() -> None:
    slow = Receiver(script=[(200, {}, 5.0)] * 10)

    async def go(nursery: trio.Nursery) -> None:
        await slow.serve(nursery)
        n = notifier(hook(slow.url, timeout_seconds=10.0), hook("http://10.255.255.1:9/hook", timeout_seconds=10.0))
        nursery.start_soon(n.run)
        n.notify("approval.requested", request(0))
        await until(lambda: len(slow.seen) == 1)  # the slow receiver is now holding a delivery
        start = time.perf_counter()
        for i in range(1, 201):
            n.notify("approval.decided", request(i))
        elapsed = time.perf_counter() - start
        assert elapsed < 0.1, elapsed
        # And the notifier's task did not starve the caller: trio still runs other tasks promptly.
        t0 = time.perf_counter()
        await trio.sleep(0.01)
        assert time.perf_counter() - t0 < 0.5
        assert n.pending() >= 200

    run(go)


def test_queue_is_bounded_and_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver()

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url), queue_size=3)
        with caplog.at_level(logging.WARNING, logger="sqlward.webhooks"):
            for i in range(1, 6):  # before run(): nothing is delivered yet
                n.notify("approval.requested", request(i))
        assert n.pending() == 3
        nursery.start_soon(n.run)
        await until(lambda: n.pending() == 0 and len(receiver.seen) == 3)

    run(go)
    assert [s.json["approval"]["id"] for s in receiver.seen] == [request(i).id for i in (3, 4, 5)]
    dropped = [r for r in caplog.records if r.name == "sqlward.webhooks" and "dropped the oldest" in r.getMessage()]
    assert len(dropped) == 2 and dropped[0].levelno == logging.WARNING


def test_notify_never_raises() -> None:
    n = notifier(hook("http://127.0.0.1:9/hook"))
    n.notify("approval.requested", "not a request")  # type: ignore[arg-type]
    n.notify("approval.requested", request())
    assert n.pending() == 2


# -- TLS ---------------------------------------------------------------------------------------


def _server_context(tmp_path: Path) -> tuple[object, Path]:
    import ssl

    pki = make_pki(tmp_path / "pki")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.cert_file, pki.key_file)
    return ctx, pki.ca_file


def test_tls_receiver_verified_with_ca_file(tmp_path: Path) -> None:
    ctx, ca_file = _server_context(tmp_path)
    receiver = Receiver(ssl_context=ctx)

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url, ca_file=str(ca_file)))
        nursery.start_soon(n.run)
        n.notify("approval.requested", request())
        await until(lambda: len(receiver.seen) == 1)

    run(go)
    assert receiver.url.startswith("https://")


def test_tls_receiver_with_another_ca_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ctx, _ = _server_context(tmp_path)
    other = make_pki(tmp_path / "other")
    receiver = Receiver(ssl_context=ctx)

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url, ca_file=str(other.ca_file), max_attempts=1))
        nursery.start_soon(n.run)
        n.notify("approval.requested", request())
        await until(lambda: n.pending() == 0)

    with caplog.at_level(logging.WARNING, logger="sqlward.webhooks"):
        run(go)
    assert receiver.seen == []
    assert any("gave up" in r.getMessage() and "CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)


# -- with the approval service ---------------------------------------------------------------------


def test_service_transitions_reach_the_receiver(tmp_path: Path) -> None:
    from sqlward.audit.recorder import Recorder
    from sqlward.gateway.approvals.service import ApprovalService
    from sqlward.gateway.approvals.store import SqliteStore
    from tests.support.auditsink import ListSink

    receiver = Receiver()

    async def go(nursery: trio.Nursery) -> None:
        await receiver.serve(nursery)
        n = notifier(hook(receiver.url))
        nursery.start_soon(n.run)
        recorder = Recorder("gw-1", ListSink())
        store = SqliteStore(str(tmp_path / "approvals.sqlite3"))
        service = ApprovalService(store, scope=recorder.gateway_scope, notifier=n, link=link)
        r = await service.create(request(), recorder.scope("conn-1"))
        await service.decide(r.id, Approver(subject="bob@example.com", groups=("dba",)), "approve")
        await service.claim(r.id, recorder.scope("conn-1"), 1)
        await until(lambda: len(receiver.seen) == 3)
        await store.aclose()

    run(go)
    assert [(s.json["event"], s.json["approval"]["status"]) for s in receiver.seen] == [
        ("approval.requested", "pending"), ("approval.decided", "approved"), ("approval.executed", "executed")]
    assert all(s.json["link"] == link(request().id) for s in receiver.seen)


def test_message_text_shows_invisible_and_bidi_characters_escaped() -> None:
    """A requester's reason or an approver's comment cannot make the chat text read otherwise
    than it is (bidi overrides, zero-width characters), nor add Slack markup (links)."""
    from sqlward.gateway.approvals.model import ApprovalRequest, Decision, Requester
    from sqlward.gateway.approvals.webhooks import message_text
    from sqlward.policy.approval import Approver

    r = ApprovalRequest(
        id="ap-x", binding="0" * 64, requester=Requester(subject="mal\u202elory"), reason="INC-1\u200b <https://evil|approve>",
        target="prod", environment="production", protocol="postgres", sql="DELETE FROM t \u2066WHERE 1=1\u2069",
        created=0.0, expires=1.0, status="rejected",
        decisions=(Decision(approver=Approver(subject="bob"), verdict="reject", comment="<https://evil|click>", time=0.5),),
    )
    text = message_text("approval.decided", r, "https://gw/api/v1/approvals/ap-x", "gw")
    assert "\u202e" not in text and "\u200b" not in text and "\u2066" not in text
    assert "\\u202e" in text and "\\u200b" in text
    assert "<https://evil" not in text and "&lt;https://evil|click&gt;" in text


def test_spaces_that_are_name_characters_are_shown_escaped() -> None:
    """A no-break space reads as a space but is part of a name to the servers: "x<NBSP>WHERE"
    is one alias; the chat text and the CLI show it escaped, so the approver sees it."""
    from sqlward.gateway.approvals.model import ApprovalRequest, Requester
    from sqlward.gateway.approvals.webhooks import message_text
    from sqlward.gateway.http.client import _safe

    sql = "DELETE FROM t AS x\u00a0WHERE\u00a0id\u00a0IS\u00a0NULL"
    r = ApprovalRequest(
        id="ap-x", binding="0" * 64, requester=Requester(subject="alice"), target="prod", environment="production",
        protocol="postgres", sql=sql, created=0.0, expires=1.0,
    )
    text = message_text("approval.requested", r, "https://gw/api/v1/approvals/ap-x", "gw")
    assert "\u00a0" not in text and "x\\u00a0WHERE\\u00a0id" in text
    assert _safe(sql) == "DELETE FROM t AS x\\xa0WHERE\\xa0id\\xa0IS\\xa0NULL"
    assert _safe("ideographic\u3000space") == "ideographic\\u3000space" and _safe("plain space") == "plain space"
