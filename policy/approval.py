"""Who may approve a reviewed statement, and when a request has enough approvals (pure).

A rule or guardrail with `action = "review"` carries an `ApprovalRule` (its `[rules.approval]` /
`[guardrails.<id>.approval]` table; the older `approvers = [...]` key is shorthand for
`approval.approvers`). The engine puts the requirement of every review that matched a request on
its `Decision.approvals`; the approval service (`sqlward.gateway.approvals`) asks this module:

- `reason_problem(rule, reason)`: the requester's stated reason does not satisfy
  `reason_pattern` (the statement is refused at once, no request is made);
- `approver_problem(rules, requester, approver)`: why `approver` may not approve (None: it may).
  Nobody approves their own request: neither the requester's subject nor any actor of its chain.
  The exception is `principal = true`: the person an agent acts for (the subject at the root of
  the delegation chain, `Identity.subject` of a delegated session) may approve that agent's
  statement. An approver that is itself delegated (a token with an `act` claim) never approves:
  an agent acting for a manager is not the manager;
- `outcome(rules, approvals)`: "approved" once every requirement holds (`approvals` distinct
  approvers among those it admits, and one approver from each group of `all_groups`), else
  "pending". One rejection by an admitted approver rejects the request.

Approver entries: `group:<name>` (any member of the group), `bot:<name>` (the static bot
identity of that name, by its API token), or an identity subject (a glob, matched on the
canonical spelling of names as everywhere else).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

import msgspec

from sqlward.policy.names import canonical_name

__all__ = ["ApprovalRule", "Approver", "approval_problems", "approver_problem", "outcome", "reason_problem"]

ApprovalMode = Literal["hold", "retry"]
ApproverKind = Literal["person", "bot"]


class ApprovalRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a reviewed statement is approved (the `approval` table of a review rule/guardrail)."""

    # Who may approve: "group:dba", "bot:change-bot", "alice@example.com" (subject globs).
    approvers: tuple[str, ...] = ()
    # Distinct approvers needed.
    approvals: Annotated[int, msgspec.Meta(ge=1, le=20)] = 1
    # Groups that must each supply an approver (in addition to `approvals` in all).
    all_groups: tuple[str, ...] = ()
    # The person a delegated agent acts for may approve the agent's statement.
    principal: bool = False
    # "hold": the statement waits in the session; "retry": refused at once with the request id,
    # the same statement runs once after approval.
    mode: ApprovalMode = "hold"
    # Seconds a request stays pending (and an approval stays usable in retry mode).
    expires: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] = 900.0
    # hold: seconds the session waits before giving up (at most `expires`).
    hold_timeout: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 300.0
    # A regular expression the requester's stated reason must contain (case-insensitive), e.g. a
    # ticket pattern "(CHG|INC)-[0-9]+"; "" = no reason needed.
    reason_pattern: str = ""


class Approver(msgspec.Struct, frozen=True, kw_only=True):
    """Who is deciding: a person by OIDC token or a bot by its API token."""

    subject: str
    groups: tuple[str, ...] = ()
    kind: ApproverKind = "person"
    actor: tuple[str, ...] = ()  # a delegated token's chain (never admitted)
    issuer: str = ""
    verified_by: str = ""  # "oidc", "api-token"


def _canon(name: str) -> str:
    return canonical_name(name)


def _admits(rule: ApprovalRule, approver: Approver) -> bool:
    for entry in rule.approvers:
        kind, _, name = entry.partition(":")
        if name and kind == "group":
            if approver.kind == "person" and name in approver.groups:
                return True
            if approver.kind == "bot" and name in approver.groups:
                return True
        elif name and kind == "bot":
            if approver.kind == "bot" and _canon(name) == _canon(approver.subject):
                return True
        elif approver.kind == "person" and fnmatch.fnmatchcase(_canon(approver.subject), _canon(entry)):
            return True
    return any(g in approver.groups for g in rule.all_groups)


def reason_problem(rules: Sequence[ApprovalRule], reason: str) -> str | None:
    """Why the stated `reason` does not satisfy a rule's `reason_pattern` (None: it does)."""
    for rule in rules:
        if rule.reason_pattern and not re.search(rule.reason_pattern, reason or "", re.IGNORECASE):
            if not reason:
                return f"approval needs a stated reason matching {rule.reason_pattern!r}: start the statement with /* sqlward:reason=... */ or set it at connection"
            return f"the stated reason {reason[:80]!r} does not match {rule.reason_pattern!r}, which approval needs"
    return None


def approver_problem(
    rules: Sequence[ApprovalRule], requester_subject: str, requester_actor: Sequence[str], approver: Approver,
) -> str | None:
    """Why `approver` may not decide a request of `requester_subject` (acting through
    `requester_actor`) under `rules`; None when it may."""
    if approver.actor:
        return "a delegated token (with an act claim) cannot approve: approve as yourself"
    me = _canon(approver.subject)
    if approver.kind == "person" and me in (_canon(a) for a in requester_actor):
        return "nobody approves their own request"
    if approver.kind == "bot" and (me == _canon(requester_subject) or any(_canon(a) == me for a in requester_actor)):
        # A bot identity may also log in to a database (a password besides its API token): its
        # own statements are its own request.
        return "nobody approves their own request"
    is_principal = approver.kind == "person" and me == _canon(requester_subject)
    if is_principal:
        if not requester_actor:
            return "nobody approves their own request"
        if all(r.principal for r in rules):
            return None
        return "the person an agent acts for may approve its statements only where the rule says principal = true"
    if not all(_admits(r, approver) for r in rules):
        wanted = "; ".join(", ".join((*r.approvers, *(f"group:{g}" for g in r.all_groups))) or "nobody" for r in rules)
        return f"{approver.subject} is not an approver of this request (approvers: {wanted})"
    return None


def outcome(
    rules: Sequence[ApprovalRule], requester_subject: str, requester_actor: Sequence[str],
    approvals: Iterable[Approver],
) -> Literal["approved", "pending"]:
    """"approved" when the admitted, distinct `approvals` satisfy every rule."""
    admitted: dict[str, Approver] = {}
    for a in approvals:
        if approver_problem(rules, requester_subject, requester_actor, a) is None:
            key = f"{a.kind}:{_canon(a.subject)}"
            seen = admitted.get(key)
            # One approver counts once, with every group it was seen in: keeping only the first
            # made the result depend on the order (and adding an approval could undo "approved").
            admitted[key] = a if seen is None else msgspec.structs.replace(
                seen, groups=tuple(dict.fromkeys((*seen.groups, *a.groups))),
            )
    for rule in rules:
        mine = [a for a in admitted.values() if _admits(rule, a) or (
            rule.principal and a.kind == "person" and requester_actor and _canon(a.subject) == _canon(requester_subject)
        )]
        if len(mine) < rule.approvals:
            return "pending"
        for group in rule.all_groups:
            if not any(group in a.groups for a in mine):
                return "pending"
    return "approved"


def approval_problems(rule: ApprovalRule) -> list[tuple[str, str]]:
    """(field, message) for each problem with an approval table (beyond decoding)."""
    problems: list[tuple[str, str]] = []
    for i, entry in enumerate(rule.approvers):
        kind, sep, name = entry.partition(":")
        if not entry.strip():
            problems.append((f"approvers[{i}]", "expected a non-empty approver"))
        elif sep and kind not in ("group", "bot"):
            problems.append((f"approvers[{i}]", f"unknown approver kind {kind!r} in {entry!r} (expected group:<name>, bot:<name> or a subject)"))
        elif sep and not name:
            problems.append((f"approvers[{i}]", f"{entry!r} names no {kind}"))
    if any(not g for g in rule.all_groups):
        problems.append(("all_groups", "expected non-empty group names"))
    if not rule.approvers and not rule.all_groups and not rule.principal:
        problems.append(("approvers", "nobody could approve: name approvers (group:<name>, bot:<name>, subjects), all_groups or principal = true"))
    if rule.hold_timeout > rule.expires:
        problems.append(("hold_timeout", f"a session cannot wait ({rule.hold_timeout:g} s) longer than the request lives (expires = {rule.expires:g} s)"))
    if rule.reason_pattern:
        try:
            re.compile(rule.reason_pattern)
        except re.error as err:
            problems.append(("reason_pattern", f"not a valid regular expression: {err}"))
    return problems
