"""The admin API's boundary types: what its routes return and accept.

Every body the API sends or reads is one of these frozen msgspec Structs, encoded and decoded
with msgspec (JSON). The OpenAPI document's component schemas are generated from them
(`gateway.http.openapi`), and the CLI decodes the server's answers with them, so the server, the
document and the client cannot drift apart.

- `Approval`: an `approvals.model.ApprovalRequest` exactly as the store keeps it, plus `link`
  (where this request is shown: `[admin] public_url` + its path);
- `ApprovalList`: the answer of a list, newest first;
- `DecisionBody`: the optional body of approve / reject: `{"comment": "..."}`, nothing else
  (unknown fields are refused);
- `WhoAmI`: who the caller is, as the API authenticated it, and what it may do;
- `ErrorBody`: every error: `{"error": "a sentence"}`.

This module imports no web framework: the CLI uses it without starlette or hypercorn loaded.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from sqlward.gateway.approvals.model import ApprovalRequest
from sqlward.policy.approval import Approver

__all__ = ["Approval", "ApprovalList", "DecisionBody", "ErrorBody", "MAX_COMMENT", "MAX_LIMIT", "WhoAmI", "approval"]

MAX_COMMENT = 2000  # characters (the service keeps no more)
MAX_LIMIT = 500  # requests per list


class Approval(ApprovalRequest, frozen=True, kw_only=True):
    """An approval request (see the gateway's approvals model) and where it is shown."""

    link: str = ""


class ApprovalList(msgspec.Struct, frozen=True, kw_only=True):
    """Approval requests, newest first."""

    approvals: tuple[Approval, ...]


class DecisionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The optional body of an approve or reject call."""

    comment: Annotated[str, msgspec.Meta(max_length=MAX_COMMENT, description="why (shown to the requester and in the audit)")] = ""


class WhoAmI(msgspec.Struct, frozen=True, kw_only=True):
    """The caller as the API authenticated it, and which routes its groups open."""

    approver: Approver
    may_read: bool  # list and show approval requests ([admin.access] approvals_read)
    may_decide: bool  # approve and reject ([admin.access] approvals_decide)
    version: str  # the gateway's version


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every error answer."""

    error: str


def approval(request: ApprovalRequest, link: str) -> Approval:
    """The API's view of a stored request."""
    return Approval(**msgspec.structs.asdict(request), link=link)
