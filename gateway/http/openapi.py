"""The admin API's OpenAPI 3.1 document, generated.

How it works: the component schemas are `msgspec.json.schema_components` of the boundary Structs
(`gateway.http.schema`), JSON Schema 2020-12, which OpenAPI 3.1 takes as it is. The paths come
from `OPERATIONS`, one small record per route (method, path, who may call it, its parameters, its
body and answer types, the error statuses it gives); `document()` turns them into path items
that refer to the components by `$ref`. Nothing is written per field by hand: a field added to
a Struct appears in the document. Every operation needs the bearer token (`security`), and
every error answer is an `ErrorBody`.

`app.build_app` builds the document once and serves it at `GET /api/v1/openapi.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import msgspec

from sqlward.gateway.approvals.model import Status
from sqlward.gateway.http.schema import MAX_LIMIT, Approval, ApprovalList, DecisionBody, ErrorBody, WhoAmI

__all__ = ["OPERATIONS", "Operation", "document"]

_REF = "#/components/schemas/{name}"
_ERRORS = {
    400: "The request is malformed (a parameter or the body); the message says what was expected.",
    401: "No bearer token, or one that is not accepted.",
    403: "The caller's groups do not open this route, or the request's approval rule refuses this approver.",
    404: "No such approval request.",
    409: "The request is not pending (decided, expired, ...) or this approver has decided it already.",
    413: "The body is larger than the API reads.",
    500: "An unexpected error (logged by the gateway).",
    503: "The approval store or the audit trail is unavailable; nothing was changed.",
}
_STATUSES: tuple[str, ...] = get_args(Status)


@dataclass(frozen=True)
class Operation:
    method: Literal["get", "post"]
    path: str
    operation_id: str
    summary: str
    access: Literal["approvals_read", "approvals_decide", "authenticated"]
    answer: type[msgspec.Struct]
    errors: tuple[int, ...]
    body: type[msgspec.Struct] | None = None
    parameters: tuple[dict[str, Any], ...] = field(default=())


_ID = {
    "name": "id", "in": "path", "required": True, "description": "The approval request's id (ap-...).",
    "schema": {"type": "string", "maxLength": 64},
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get", "/api/v1/approvals", "listApprovals", "List approval requests, newest first.",
        "approvals_read", ApprovalList, (400, 401, 403, 500, 503),
        parameters=(
            {
                "name": "status", "in": "query", "required": False,
                "description": "Only requests in these statuses: a comma-separated list (default: every status).",
                "schema": {"type": "string", "pattern": "^(" + "|".join(_STATUSES) + ")(,(" + "|".join(_STATUSES) + "))*$"},
                "example": "pending",
            },
            {
                "name": "limit", "in": "query", "required": False,
                "description": f"At most this many requests (1 to {MAX_LIMIT}; 100 when not given).",
                "schema": msgspec.json.schema(Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]),
            },
            {
                "name": "offset", "in": "query", "required": False,
                "description": "Skip this many of the newest matching requests (paging; 0 when not given).",
                "schema": msgspec.json.schema(Annotated[int, msgspec.Meta(ge=0)]),
            },
            {
                "name": "requester", "in": "query", "required": False,
                "description": "Only the requests of this subject (compared as names are everywhere: canonical form).",
                "schema": {"type": "string", "maxLength": 512},
            },
        ),
    ),
    Operation(
        "get", "/api/v1/approvals/{id}", "getApproval", "Show one approval request.",
        "approvals_read", Approval, (401, 403, 404, 500, 503), parameters=(_ID,),
    ),
    Operation(
        "post", "/api/v1/approvals/{id}/approve", "approveApproval",
        "Approve a pending request (the request's approval rule must admit the caller; nobody approves their own).",
        "approvals_decide", Approval, (400, 401, 403, 404, 409, 413, 500, 503), body=DecisionBody, parameters=(_ID,),
    ),
    Operation(
        "post", "/api/v1/approvals/{id}/reject", "rejectApproval",
        "Reject a pending request (one rejection by an admitted approver rejects it).",
        "approvals_decide", Approval, (400, 401, 403, 404, 409, 413, 500, 503), body=DecisionBody, parameters=(_ID,),
    ),
    Operation(
        "get", "/api/v1/whoami", "whoAmI", "Who the caller is, as the API authenticated it, and what it may do.",
        "authenticated", WhoAmI, (401, 500),
    ),
    Operation(
        "get", "/api/v1/openapi.json", "openApi", "This document.",
        "authenticated", ErrorBody, (401, 500),  # answer replaced below: the document is free-form
    ),
)

_ACCESS_TEXT = {
    "approvals_read": "Needs a group of [admin.access] approvals_read.",
    "approvals_decide": "Needs a group of [admin.access] approvals_decide.",
    "authenticated": "Any authenticated caller.",
}


def document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin API (a dict of JSON values)."""
    types = (ApprovalList, Approval, DecisionBody, WhoAmI, ErrorBody)
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    ref = dict(zip(types, refs))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        ok: dict[str, Any] = {"description": "OK", "content": {"application/json": {"schema": ref[op.answer]}}}
        if op.operation_id == "openApi":
            ok = {"description": "This OpenAPI document.", "content": {"application/json": {"schema": {"type": "object"}}}}
        responses: dict[str, Any] = {"200": ok}
        for status in op.errors:
            responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
        item: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "description": _ACCESS_TEXT[op.access],
            "tags": ["approvals"] if "approvals" in op.path else ["admin"],
            "security": [{"bearer": []}],
            "responses": responses,
        }
        if op.parameters:
            item["parameters"] = list(op.parameters)
        if op.body is not None:
            item["requestBody"] = {
                "required": False,
                "description": f"Optional (an empty body is no comment); at most {64 * 1024} bytes; unknown fields are refused.",
                "content": {"application/json": {"schema": ref[op.body]}},
            }
        paths.setdefault(op.path, {})[op.method] = item
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "sqlward admin API",
            "version": version,
            "description": "Approval requests of reviewed statements: list, show, approve, reject. "
            "Every route needs `Authorization: Bearer <token>`: an access token of a configured [[oidc]] issuer "
            "(verified as client tokens are) or a bot identity's API token.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {
                f"E{status}": {"description": text, "content": {"application/json": {"schema": ref[ErrorBody]}}}
                for status, text in _ERRORS.items()
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http", "scheme": "bearer",
                    "description": "An OIDC access token of a configured issuer, or a bot identity's API token.",
                },
            },
        },
        "security": [{"bearer": []}],
        "tags": [
            {"name": "approvals", "description": "Approval requests of reviewed statements."},
            {"name": "admin", "description": "The API itself."},
        ],
    }
    # Through JSON and back: tuples (Struct defaults) become lists, as a reader of the JSON sees them.
    return msgspec.json.decode(msgspec.json.encode(doc))
