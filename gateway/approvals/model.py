"""The approval request and its decisions: the one shape the store keeps, the API returns and
the audit events refer to (by id).

A request's `status` moves only forward, each move a compare-and-set in the store
(`store.ApprovalStore.update`):

    pending ──approve (enough)──▶ approved ──claim──▶ executed ──run failed──▶ failed
       │ ╲──reject──▶ rejected        │
       │  ╲─expiry─▶ expired ◀────────┘ (retry mode: approved and never run)
       └──cancel / session gone / hold timeout──▶ withdrawn
"""

from __future__ import annotations

from typing import Literal

import msgspec

from sqlward.policy.approval import ApprovalRule, Approver

__all__ = ["ApprovalRequest", "Decision", "Requester", "Status", "OPEN", "FINAL"]

Status = Literal["pending", "approved", "rejected", "expired", "withdrawn", "executed", "failed"]
Verdict = Literal["approve", "reject"]
OPEN: frozenset[str] = frozenset({"pending", "approved"})
FINAL: frozenset[str] = frozenset({"rejected", "expired", "withdrawn", "executed", "failed"})


class Requester(msgspec.Struct, frozen=True, kw_only=True):
    """Who asked: the session's identity with its delegation chain."""

    subject: str
    groups: tuple[str, ...] = ()
    actor: tuple[str, ...] = ()  # agents acting for `subject`, outermost first
    issuer: str = ""
    verified_by: str = ""
    is_agent: bool = False


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """One approver's verdict."""

    approver: Approver
    verdict: Verdict
    comment: str = ""
    time: float


class ApprovalRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One reviewed statement waiting for (or done with) approval."""

    id: str
    binding: str  # binding.binding_hash(...), hex
    status: Status = "pending"
    mode: Literal["hold", "retry"] = "hold"
    requester: Requester
    reason: str = ""  # the session's stated reason
    gateway: str = ""  # the gateway (replica) the statement arrived at
    connection_id: str = ""
    request_id: int = 0  # the statement's request id in that connection's audit records
    target: str
    environment: str
    protocol: str
    upstream_role: str = ""
    # PostgreSQL: the search_path the names resolved through; MySQL: the current database.
    names: str = ""
    sql: str  # the exact statement text
    parameters: tuple[str | None, ...] = ()  # bound parameter values, as shown (binary as \x hex)
    fingerprint: str = ""
    operations: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()  # rule / guardrail ids that asked for review
    facts: tuple[str, ...] = ()
    estimated_rows: int | None = None
    message: str = ""  # the policy's sentence
    requirements: tuple[ApprovalRule, ...] = ()
    created: float
    expires: float
    decided: float | None = None
    executed: float | None = None
    decisions: tuple[Decision, ...] = ()
    error: str | None = None  # why the run failed (status failed)
    version: int = 0  # bumped by every update (the compare-and-set's guard)

    def open_for(self, now: float) -> bool:
        return self.status in OPEN and now < self.expires
