"""The admin API: a Starlette application over the approval service.

How it works, per request:

1. `_Authenticate` (a plain ASGI middleware, outermost but for Starlette's own error layer) reads
   `Authorization: Bearer <token>` and asks `authenticate` (the gatekeeper's
   `approver_for_bearer`: a bot's API token, or an access token of an `[[oidc]]` issuer verified
   as client tokens are) who the caller is. No token, or a refused one: 401 with
   `WWW-Authenticate: Bearer` and a fixed sentence (why it was refused is logged to
   `sqlward.admin`, never told: no help for guessing). Every path is behind it, unknown ones too.
   The `Approver` is kept in the ASGI scope for the route.
2. The route checks the caller's groups against `[admin.access]`: reads (list, show) need a group
   of `approvals_read`, decisions (approve, reject) one of `approvals_decide`; `"*"` admits any
   authenticated caller; 403 otherwise. `whoami` and `openapi.json` need authentication only.
   Beyond that, the request's own approval rule decides (self-approval, who is an approver): that
   is `ApprovalService.decide`'s, whose `ApprovalError(status, message)` becomes that status.
3. Bodies are read up to `MAX_BODY` bytes (413 beyond) and decoded strictly with msgspec into
   `schema.DecisionBody` (`forbid_unknown_fields`): a malformed body is 400 with msgspec's own
   sentence (which field, what was expected). An empty body is no comment.
4. Answers are msgspec-encoded Structs of `gateway.http.schema`; every error is
   `{"error": "..."}`.

Error handling: `ApprovalError` -> its status and message; `StoreError` (the store cannot be
read or written) -> 503, logged; any other exception -> 500 with a generic sentence, logged with
its traceback to `sqlward.admin`, never sent to the caller. Starlette's own 404 / 405 (after
authentication) are answered in the same JSON shape.

Health and metrics (when `build_app` is given `health` / `metrics`): GET /healthz (200
`{"status": "alive"}` while the listener serves), GET /readyz (200 or 503 with
`gateway.health.ReadinessReport`: each check, ok and why) and GET /metrics (Prometheus text)
are answered without a token: kubelet probes and Prometheus scrapers carry none. They show no
identity, SQL or upstream address: /metrics labels are target names, rule ids, decisions and
sink names (docs/observability.md).

`build_app` is what `gateway.server` calls; tests build it over a real store and service.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, get_args

import msgspec
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sqlward.adapters.base import AuthError
from sqlward.gateway.approvals.model import Status
from sqlward.gateway.approvals.service import ApprovalError, ApprovalService
from sqlward.gateway.approvals.store import StoreError
from sqlward.gateway.config import AdminAccess
from sqlward.gateway.health import Readiness
from sqlward.gateway.http import openapi
from sqlward.gateway.http.schema import MAX_LIMIT, ApprovalList, DecisionBody, ErrorBody, WhoAmI, approval
from sqlward.policy.approval import Approver

__all__ = ["MAX_BODY", "Authenticate", "build_app"]

log = logging.getLogger("sqlward.admin")

MAX_BODY = 64 * 1024  # bytes of a request body the API reads
Authenticate = Callable[[str], Awaitable[Approver]]
Metrics = Callable[[], bytes]  # the Prometheus text exposition (telemetry.Telemetry.prometheus_text)
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_APPROVER_KEY = "sqlward.approver"  # where the authenticated caller waits in the ASGI scope
_STATUSES: frozenset[str] = frozenset(get_args(Status))
_QUERY = frozenset({"status", "limit", "offset", "requester"})
_encode = msgspec.json.Encoder().encode
_decode_body = msgspec.json.Decoder(DecisionBody).decode


class _Refused(Exception):
    """Answer `status` with `{"error": message}` (raised inside a route)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(value: msgspec.Struct | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(value), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(ErrorBody(error=message), status, headers)


def _unauthorized(invalid: bool) -> Response:
    challenge = 'Bearer realm="sqlward", error="invalid_token"' if invalid else 'Bearer realm="sqlward"'
    return _error(401, "a valid bearer token is required", {"WWW-Authenticate": challenge})


class _Authenticate:
    """Every HTTP request names its caller by a bearer token, or is answered 401 (module doc)."""

    def __init__(self, app: ASGIApp, authenticate: Authenticate, public: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.authenticate = authenticate
        self.public = public  # paths answered without a token (health, metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            await _unauthorized(invalid=False)(scope, receive, send)
            return
        try:
            approver = await self.authenticate(token)
        except AuthError as exc:
            client = scope.get("client") or ("?", 0)
            log.info("admin API: %s %s from %s: %s", scope["method"], scope["path"], client[0], exc)
            await _unauthorized(invalid=True)(scope, receive, send)
            return
        except Exception:
            log.exception("admin API: authenticating a bearer token failed")
            await _error(500, "internal error (logged by the gateway)")(scope, receive, send)
            return
        scope[_APPROVER_KEY] = approver
        await self.app(scope, receive, send)


def _caller(request: Request) -> Approver:
    approver = request.scope.get(_APPROVER_KEY)
    if not isinstance(approver, Approver):  # the middleware lets no request through without one
        raise _Refused(401, "a valid bearer token is required")
    return approver


def _admits(groups: tuple[str, ...], approver: Approver) -> bool:
    return "*" in groups or any(g in groups for g in approver.groups)


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise _Refused(400, "Content-Length is not a number")
        if int(length) > MAX_BODY:
            raise _Refused(413, f"the body is larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _Refused(413, f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(
    *, approvals: ApprovalService, authenticate: Authenticate, access: AdminAccess, version: str,
    health: Readiness | None = None, metrics: Metrics | None = None,
) -> Starlette:
    """The admin API over `approvals`, its callers named by `authenticate` and admitted by
    `access`; with `health`, /healthz and /readyz; with `metrics`, /metrics (see the module
    doc)."""
    document = _encode(openapi.document(version))

    def guarded(
        need: Literal["read", "decide"] | None, handler: Callable[[Request, Approver], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """The route: the caller, its groups against `[admin.access]` for `need` (None: any
        authenticated caller), errors mapped (module doc)."""
        groups = {"read": access.approvals_read, "decide": access.approvals_decide, None: ("*",)}[need]

        async def endpoint(request: Request) -> Response:
            try:
                approver = _caller(request)
                if not _admits(groups, approver):
                    raise _Refused(403, f"{approver.subject} is in no group allowed to {need} approval requests ([admin.access])")
                return await handler(request, approver)
            except _Refused as exc:
                return _error(exc.status, exc.message)
            except ApprovalError as exc:
                return _error(exc.status, exc.message)
            except StoreError as exc:
                log.error("admin API: %s %s: the approval store failed: %s", request.method, request.url.path, exc)
                return _error(503, "the approval store is unavailable; nothing was changed")
            except Exception:
                log.exception("admin API: %s %s failed", request.method, request.url.path)
                return _error(500, "internal error (logged by the gateway)")

        return endpoint

    async def list_approvals(request: Request, approver: Approver) -> Response:
        unknown = sorted(set(request.query_params) - _QUERY)
        if unknown:
            raise _Refused(400, f"unknown query parameter {unknown[0]!r} (expected status, limit, offset, requester)")
        statuses: list[str] | None = None
        if "status" in request.query_params:
            statuses = [s.strip() for s in request.query_params["status"].split(",") if s.strip()]
            bad = [s for s in statuses if s not in _STATUSES]
            if bad or not statuses:
                raise _Refused(400, f"unknown status {(bad or [''])[0]!r} (expected a comma-separated list of {', '.join(sorted(_STATUSES))})")
        limit_text = request.query_params.get("limit", "100")
        if not (limit_text.isascii() and limit_text.isdigit()) or len(limit_text) > 9 or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise _Refused(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, got {limit_text[:20]!r}")
        offset_text = request.query_params.get("offset", "0")
        if not (offset_text.isascii() and offset_text.isdigit()) or len(offset_text) > 9:
            raise _Refused(400, f"offset must be a whole number >= 0, got {offset_text[:20]!r}")
        requester = request.query_params.get("requester")
        if requester is not None and not 0 < len(requester) <= 512:
            raise _Refused(400, "requester must be a subject of 1 to 512 characters")
        found = await approvals.list(statuses=statuses, limit=int(limit_text), requester=requester, offset=int(offset_text))
        return _json(ApprovalList(approvals=tuple(approval(r, approvals.link(r.id)) for r in found)))

    async def show(request: Request, approver: Approver) -> Response:
        approval_id = request.path_params["id"]
        found = await approvals.get(approval_id) if len(approval_id) <= 64 else None
        if found is None:
            raise _Refused(404, f"no approval request {approval_id[:64]}")
        return _json(approval(found, approvals.link(found.id)))

    def decide(verdict: str) -> Callable[[Request, Approver], Awaitable[Response]]:
        async def go(request: Request, approver: Approver) -> Response:
            approval_id = request.path_params["id"]
            raw = await _read_body(request)
            body = DecisionBody()
            if raw.strip():
                try:
                    body = _decode_body(raw)
                except msgspec.DecodeError as exc:  # ValidationError included
                    raise _Refused(400, f'invalid body: {exc} (expected {{"comment": "..."}} or no body)') from None
            if len(approval_id) > 64:
                raise _Refused(404, f"no approval request {approval_id[:64]}")
            done = await approvals.decide(approval_id, approver, verdict, body.comment)
            log.info("admin API: %s %s by %s %s (now %s)", verdict, approval_id, approver.kind, approver.subject, done.status)
            return _json(approval(done, approvals.link(done.id)))

        return go

    async def whoami(request: Request, approver: Approver) -> Response:
        return _json(WhoAmI(
            approver=approver, may_read=_admits(access.approvals_read, approver),
            may_decide=_admits(access.approvals_decide, approver), version=version,
        ))

    async def openapi_json(request: Request, approver: Approver) -> Response:
        return Response(document, media_type="application/json")

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            text = {404: "no such route", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
            return _error(exc.status_code, text, dict(exc.headers or {}))
        log.error("admin API: unexpected %s", type(exc).__name__)
        return _error(500, "internal error (logged by the gateway)")

    async def healthz(request: Request) -> Response:
        return _json({"status": "alive"})

    async def readyz(request: Request) -> Response:
        assert health is not None
        try:
            report = await health.check()
        except Exception:
            log.exception("admin API: the readiness check failed")
            return _json({"status": "not ready", "checks": [{"name": "readiness", "ok": False, "detail": "the check failed (logged)"}]}, 503)
        return _json(report, 200 if report.ready else 503, {"Cache-Control": "no-store"})

    async def prometheus(request: Request) -> Response:
        assert metrics is not None
        try:
            text = metrics()
        except Exception:
            log.exception("admin API: collecting the metrics failed")
            return _error(500, "internal error (logged by the gateway)")
        return Response(text, media_type=PROMETHEUS_TEXT, headers={"Cache-Control": "no-store"})

    public: set[str] = set()
    routes = []
    if health is not None:
        routes += [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
        public |= {"/healthz", "/readyz"}
    if metrics is not None:
        routes.append(Route("/metrics", prometheus, methods=["GET"]))
        public.add("/metrics")
    routes += [
        Route("/api/v1/approvals", guarded("read", list_approvals), methods=["GET"]),
        Route("/api/v1/approvals/{id}", guarded("read", show), methods=["GET"]),
        Route("/api/v1/approvals/{id}/approve", guarded("decide", decide("approve")), methods=["POST"]),
        Route("/api/v1/approvals/{id}/reject", guarded("decide", decide("reject")), methods=["POST"]),
        Route("/api/v1/whoami", guarded(None, whoami), methods=["GET"]),
        Route("/api/v1/openapi.json", guarded(None, openapi_json), methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_Authenticate, authenticate=authenticate, public=frozenset(public))],
        exception_handlers={HTTPException: http_error},
    )
