"""Webhook notifications of approval transitions: signed JSON, retried, off the statement's path.

The approval service calls `WebhookNotifier.notify(kind, request)` on every transition
(approval.requested, .decided, .expired, .withdrawn, .executed, .failed). `notify` never blocks
and never raises: it puts the notification on a bounded queue of each `[[webhooks]]` receiver
whose `events` want it (empty `events` = all). When a queue is full, the oldest notification
is dropped and a warning logged. `run()` (started in the gateway's nursery, runs until
cancelled) has one task per receiver that delivers its queue in order with `httpx.AsyncClient`
(httpx runs on trio through anyio), so a slow or unreachable receiver delays nobody but its own
later notifications, and never a statement.

The request: `POST <url>` with the JSON body

    {"text": "...", "event": "approval.requested", "approval": {...the ApprovalRequest...},
     "link": "https://sqlward.example.com/api/v1/approvals/ap-...", "gateway": "gw-1",
     "sent_at": 1796634045.353}

`text` is one Slack-compatible paragraph (who asks to run what, on which target and
environment, why, the rules, the status, and a link to the approval). It never carries an
approve action: a chat message only links to the approval, where the approver authenticates (a
button that approves without authenticating the approver would be a bypass).

Headers:

- `Content-Type: application/json`, `User-Agent: sqlward`;
- `X-Sqlward-Event`: the event kind;
- `X-Sqlward-Delivery`: a unique id of this notification, the same on every retry (receivers
  de-duplicate on it);
- `X-Sqlward-Timestamp`: Unix seconds when this attempt was signed;
- `X-Sqlward-Signature`: `sha256=` + hex HMAC-SHA256 with the hook's secret over
  `timestamp + "." + body` (the exact bytes of the body).

How a receiver verifies (Python):

    expected = "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, request.headers["X-Sqlward-Signature"])

and then rejects a timestamp more than about five minutes away from its own clock (a replay
window; each retry is signed afresh with a new timestamp, so retries stay inside it) and a
delivery id it has already processed.

Retries: connection errors, timeouts, 5xx and 429 are retried with exponential backoff
(`backoff_seconds * 2**attempt`, capped at `MAX_BACKOFF`, plus up to 10 % jitter) until
`max_attempts` attempts in all; a 429's or 503's `Retry-After` (seconds) is honoured when it is
at most `MAX_RETRY_AFTER`. Any other 4xx is not retried. Every give-up is logged on the
`sqlward.webhooks` logger. TLS receivers are verified against the system store, or against
`ca_file` when it is set.

Notifications live in memory only: those still queued when the gateway stops are not sent (the
audit trail, not the webhooks, is the record of what happened).
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
import logging
import random
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import msgspec
import trio

from sqlward.audit.sinks import shown_url
from sqlward.gateway.approvals.model import ApprovalRequest
from sqlward.gateway.config import WebhookConfig

__all__ = ["MAX_BACKOFF", "MAX_RETRY_AFTER", "WebhookNotifier", "message_text", "sign"]

log = logging.getLogger("sqlward.webhooks")


def _scrub(text: str, url: str) -> str:
    """An error's text without the receiver's URL (httpx names the URL it failed on)."""
    return text.replace(url, shown_url(url, path=False)) if url else text

MAX_BACKOFF = 300.0  # seconds between two attempts at most
MAX_RETRY_AFTER = 120.0  # a larger Retry-After is ignored (the backoff applies)
QUEUE_SIZE = 1000  # notifications waiting per receiver

_encode = msgspec.json.Encoder().encode


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Sqlward-Signature value of `body` sent at `timestamp` (module doc)."""
    return "sha256=" + hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def _slack(text: str) -> str:
    """Escape what Slack's mrkdwn treats as markup (&, <, >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _short(text: str, limit: int) -> str:
    """One line of at most `limit` characters; control and format characters (bidi overrides,
    zero-width characters: text that would read differently than it runs) shown as \\uXXXX."""
    text = "".join(
        c if (unicodedata.category(c) not in ("Cc", "Cf", "Zs") or c in " \t\n\r") else f"\\u{ord(c):04x}" for c in text
    )
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_STATUS_WORDS = {
    "pending": "waiting for approval",
    "approved": "approved",
    "rejected": "rejected",
    "expired": "expired",
    "withdrawn": "withdrawn",
    "executed": "approved and run",
    "failed": "approved, but its run failed",
}


def message_text(kind: str, request: ApprovalRequest, link: str, gateway: str) -> str:
    """The one-paragraph, Slack-compatible sentence of a notification (no approve action)."""
    r = request
    who = _short(r.requester.subject, 200)
    if r.requester.actor:
        who = _short(f"{' via '.join(r.requester.actor)} (acting for {r.requester.subject})", 300)
    sql = _short(r.sql, 300).replace("`", "'")
    where = _short(f"{r.target} ({r.environment})", 200)
    parts = [f"[sqlward {gateway}]" if gateway else "[sqlward]", f"{_slack(who)} asks to run `{_slack(sql)}` on {_slack(where)}"]
    scope = []
    if r.operations:
        scope.append(", ".join(r.operations))
    if r.tables:
        scope.append("on " + ", ".join(r.tables))
    if r.estimated_rows is not None:
        scope.append(f"about {r.estimated_rows} rows")
    if scope:
        parts.append(f"({_slack(' '.join(scope))})")
    sentence = " ".join(parts)
    sentence += f", because: {_slack(_short(r.reason, 200))}" if r.reason else ", with no stated reason"
    if r.rules:
        sentence += f"; rules: {_slack(', '.join(r.rules))}"
    status = _STATUS_WORDS.get(r.status, r.status)
    last = r.decisions[-1] if r.decisions else None
    if kind == "approval.decided" and last is not None:
        verb = "approved" if last.verdict == "approve" else "rejected"
        status = f"{verb} by {_short(last.approver.subject, 200)}" + (
            f' ("{_short(last.comment, 200)}")' if last.comment else ""
        )
        status += f", now {_STATUS_WORDS.get(r.status, r.status)}"
    elif kind == "approval.failed" and r.error:
        status += f": {_short(r.error, 200)}"
    elif r.status == "pending":
        status += f" until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(r.expires))}"
    sentence += f". Status: {_slack(status)}."
    if link.startswith(("http://", "https://")):
        sentence += f" Review it at <{link}|{r.id}>."
    else:
        sentence += f" Request {_slack(link or r.id)}."
    return sentence


@dataclass
class _Delivery:
    kind: str
    request: ApprovalRequest
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


class _Receiver:
    def __init__(self, hook: WebhookConfig, secret: bytes, queue_size: int) -> None:
        self.hook = hook
        self.secret = secret
        self.events = frozenset(hook.events)
        self.queue: deque[_Delivery] = deque()
        self.queue_size = queue_size
        self.ready = trio.Event()
        self.dropped = 0
        self.busy = 0  # 1 while a notification is being delivered (it is off the queue)

    def wants(self, kind: str) -> bool:
        return not self.events or kind in self.events


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: the backoff applies
    if 0 <= seconds <= MAX_RETRY_AFTER:
        return seconds
    return None


def _describe(exc: BaseException) -> str:
    """`ConnectError: <the first non-empty message down the cause chain>`."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if str(seen):
            return f"{type(exc).__name__}: {seen}"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


class WebhookNotifier:
    """Delivers approval notifications to the `[[webhooks]]` receivers (module doc)."""

    def __init__(
        self, receivers: Sequence[tuple[WebhookConfig, bytes]], *, link: Callable[[str], str], gateway: str,
        queue_size: int = QUEUE_SIZE, clock: Callable[[], float] = time.time,
    ) -> None:
        self._receivers = [_Receiver(hook, secret, queue_size) for hook, secret in receivers]
        self._link = link
        self._gateway = gateway
        self._clock = clock

    @classmethod
    def from_config(
        cls, hooks: Sequence[WebhookConfig], *, link: Callable[[str], str], gateway: str, queue_size: int = QUEUE_SIZE,
    ) -> WebhookNotifier:
        """One receiver per `[[webhooks]]` table; the secret read from `secret_file` (or `secret`)."""
        receivers = []
        for hook in hooks:
            if hook.secret_file:
                with open(hook.secret_file, encoding="utf-8") as f:
                    secret = f.read().strip()
            else:
                secret = hook.secret or ""
            receivers.append((hook, secret.encode("utf-8")))
        return cls(receivers, link=link, gateway=gateway, queue_size=queue_size)

    # -- the service's side: never blocks, never raises ------------------------------------------

    def notify(self, kind: str, request: ApprovalRequest) -> None:
        for receiver in self._receivers:
            try:
                if not receiver.wants(kind):
                    continue
                if len(receiver.queue) >= receiver.queue_size:
                    lost = receiver.queue.popleft()
                    receiver.dropped += 1
                    log.warning(
                        "webhook %s: queue full (%d), dropped the oldest notification (%s of %s)",
                        shown_url(receiver.hook.url, path=False), receiver.queue_size, lost.kind, lost.request.id,
                    )
                receiver.queue.append(_Delivery(kind, request))
                receiver.ready.set()
            except Exception:
                log.error("webhook %s: could not queue %s", shown_url(receiver.hook.url, path=False), kind)

    def pending(self) -> int:
        """Notifications queued and not yet delivered or given up (all receivers)."""
        return sum(len(r.queue) + r.busy for r in self._receivers)

    # -- delivery ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled: one task per receiver, each in order."""
        async with trio.open_nursery() as nursery:
            for receiver in self._receivers:
                nursery.start_soon(self._serve, receiver)

    def _client(self, hook: WebhookConfig) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = True
        if hook.ca_file:
            verify = ssl.create_default_context(cafile=hook.ca_file)
        return httpx.AsyncClient(
            verify=verify, timeout=httpx.Timeout(hook.timeout_seconds), follow_redirects=False, trust_env=False,
        )

    async def _serve(self, receiver: _Receiver) -> None:
        async with self._client(receiver.hook) as client:
            while True:
                if not receiver.queue:
                    receiver.ready = trio.Event()
                    await receiver.ready.wait()
                    continue
                delivery = receiver.queue.popleft()
                receiver.busy = 1
                try:
                    await self._deliver(client, receiver, delivery)
                except Exception:  # a bug here must not stop later notifications
                    log.error("webhook %s: delivery %s failed (a bug; no detail logged, it may name the receiver's URL)",
                              shown_url(receiver.hook.url, path=False), delivery.id)
                finally:
                    receiver.busy = 0

    def body(self, delivery_kind: str, request: ApprovalRequest, sent_at: float) -> bytes:
        link = self._link(request.id)
        return _encode({
            "text": message_text(delivery_kind, request, link, self._gateway),
            "event": delivery_kind,
            "approval": msgspec.to_builtins(request),
            "link": link,
            "gateway": self._gateway,
            "sent_at": sent_at,
        })

    async def _deliver(self, client: httpx.AsyncClient, receiver: _Receiver, delivery: _Delivery) -> bool:
        hook = receiver.hook
        what = f"{delivery.kind} of {delivery.request.id} (delivery {delivery.id})"
        for attempt in range(hook.max_attempts):
            now = self._clock()
            body = self.body(delivery.kind, delivery.request, now)
            timestamp = str(int(now))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "sqlward",
                "X-Sqlward-Event": delivery.kind,
                "X-Sqlward-Delivery": delivery.id,
                "X-Sqlward-Timestamp": timestamp,
                "X-Sqlward-Signature": sign(receiver.secret, timestamp, body),
            }
            wait: float | None = None
            try:
                response = await client.post(hook.url, content=body, headers=headers)
            except (httpx.TransportError, OSError) as exc:  # connection refused, reset, timeout, TLS
                problem = _scrub(_describe(exc), hook.url)
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return True
                if status < 500 and status != 429:
                    log.error("webhook %s: gave up on %s: HTTP %d (not retried)", shown_url(hook.url, path=False), what, status)
                    return False
                problem = f"HTTP {status}"
                if status in (429, 503):
                    wait = _retry_after(response)
            if attempt + 1 >= hook.max_attempts:
                log.error("webhook %s: gave up on %s after %d attempt(s): %s", shown_url(hook.url, path=False), what, attempt + 1, problem)
                return False
            if wait is None:
                wait = min(hook.backoff_seconds * 2**attempt, MAX_BACKOFF)
                wait += random.uniform(0, wait * 0.1)
            log.warning("webhook %s: %s, attempt %d of %d; retrying %s in %.1f s",
                        shown_url(hook.url, path=False), problem, attempt + 1, hook.max_attempts, what, wait)
            await trio.sleep(wait)
        return False
