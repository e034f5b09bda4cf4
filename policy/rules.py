"""Rule and per-environment policy model (the shapes config files decode into).

A `Rule` matches a request when every criterion it sets matches (an empty criterion matches
everything); rules are tried in order and the first match decides. See `policy.engine`.

`rule_problems` checks what decoding cannot, so that no rule silently never matches because of a
spelling: each operation must be one the analysis emits (`policy.vocabulary.operations()`, at
`operations[i]`), each day one of `DAYS`, the time zone an IANA name, table and column globs
without an empty name part (`public..users`), plus non-empty strings, hours, the reason pattern
and approvers. Messages list the valid values, close matches first (`vocabulary.one_of`).
"""

from __future__ import annotations

import difflib
import re
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import msgspec

from sqlward.policy.approval import ApprovalRule, approval_problems
from sqlward.policy.model import Action
from sqlward.policy.vocabulary import one_of, operations


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    action: Action
    # Criteria: empty = any.
    # Statement operations, e.g. "drop", "delete", "select": one of those the analysis emits
    # (`policy.vocabulary.operations()`), any case; another name is a config error.
    operations: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()  # globs over tables read or written, e.g. "public.*", "users"
    environments: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    identities: tuple[str, ...] = ()  # identity subjects (globs)
    # Globs over the issuer of the identity's credential (`Identity.issuer`), case-sensitive: the
    # OIDC issuer URL (`iss`) of a token identity ("https://idp.example.com/*"); a certificate
    # identity's issuing CA common name; "" for static identities (so `[""]` means only them).
    issuers: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # any of these groups
    actors: tuple[str, ...] = ()  # globs over the identity's actor chain (an agent acting for it)
    agents: bool | None = None  # True: only agents / delegated sessions; False: only people
    has_where: bool | None = None  # match only UPDATE/DELETE with (True) or without (False) WHERE
    # UPDATE / DELETE whose WHERE holds for every row (`1=1`, `id > 0 OR TRUE`): True / False.
    where_always_true: bool | None = None
    columns: tuple[str, ...] = ()  # globs over columns referenced: "users.ssn", "*.password", "ssn"
    # Estimated rows an UPDATE / DELETE / INSERT .. SELECT / MERGE affects is over N (EXPLAIN on
    # the upstream, asked only when every other criterion of the rule matched).
    rows_over: int | None = None
    statements_over: int | None = None  # the request holds more than N statements
    # Time window: days of the week ("mon".."sun") and hours "HH:MM-HH:MM" (may wrap midnight),
    # in `timezone` (IANA name). Empty: any day / any time.
    days: tuple[str, ...] = ()
    hours: str = ""
    timezone: str = "UTC"
    reason: bool | None = None  # the session stated a reason (True) / did not (False)
    reason_pattern: str = ""  # regular expression the stated reason must contain (case-insensitive)
    # For review: who may approve ("group:dba", "alice@example.com", "bot:change-bot"): shorthand
    # for `approval.approvers` (policy.approval).
    approvers: tuple[str, ...] = ()
    # For review: how the statement is approved (approvers, count, groups, expiry, hold / retry).
    approval: ApprovalRule | None = None
    message: str = ""  # sentence shown to the client; a default is derived from the rule


PRODUCTION_ENVIRONMENTS: Final = frozenset({"production", "prod"})


class EnvironmentPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # What happens to a statement no rule matched. None: "deny" in production ("production",
    # "prod": what no rule allows is refused), "allow" elsewhere.
    default_action: Literal["allow", "deny"] | None = None
    # Statements sqlglot cannot parse: None = allowed in development-like environments
    # ("development", "dev", "local", "test"), refused elsewhere.
    allow_unparsed: bool | None = None


DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)$")


def parse_hours(text: str) -> tuple[int, int]:
    """"09:00-18:00" -> (540, 1080) minutes since midnight; ValueError when malformed."""
    m = _HOURS.match(text.strip())
    if m is None:
        raise ValueError("expected hours as HH:MM-HH:MM (24-hour clock), e.g. 09:00-18:00")
    start, end = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    if end > 24 * 60 or start == end:
        raise ValueError("expected a non-empty window ending at 24:00 at the latest")
    return start, end


def rule_problems(rule: Rule) -> list[tuple[str, str]]:
    """(field, message) for each problem with a rule (beyond what decoding checks)."""
    problems: list[tuple[str, str]] = []
    if not rule.id:
        problems.append(("id", "expected a non-empty rule id"))
    for key in ("operations", "tables", "columns", "environments", "targets", "identities", "groups", "actors", "days", "approvers"):
        if any(not v for v in getattr(rule, key)):
            problems.append((key, "expected non-empty strings (leave the key out to match anything)"))
    if rule.operations:
        valid = operations()
        for i, op in enumerate(rule.operations):
            if op and op.lower() not in valid:
                problems.append((f"operations[{i}]", f"unknown operation {op!r} ({one_of(op, sorted(valid))})"))
    for i, day in enumerate(rule.days):
        if day and day.lower() not in DAYS:
            # At `days` (as before this check named its entry), the entry in the message.
            problems.append(("days", f"unknown day {day!r} at days[{i}] ({one_of(day, DAYS)})"))
    for key, parts in (("tables", "schema.table"), ("columns", "table.column")):
        for i, pattern in enumerate(getattr(rule, key)):
            if pattern and "" in pattern.split("."):
                problems.append((f"{key}[{i}]", f"empty name part in {pattern!r}: it never matches (expected names such as {parts})"))
    if rule.hours:
        try:
            parse_hours(rule.hours)
        except ValueError as err:
            problems.append(("hours", str(err)))
    try:
        ZoneInfo(rule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(rule.timezone, sorted(available_timezones()), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        problems.append(("timezone", f"unknown time zone {rule.timezone!r} (expected an IANA name such as Europe/Paris{hint})"))
    if rule.reason_pattern:
        try:
            re.compile(rule.reason_pattern)
        except re.error as err:
            problems.append(("reason_pattern", f"not a valid regular expression: {err}"))
    if rule.approvers and rule.action != "review":
        problems.append(("approvers", "only a review rule has approvers"))
    if rule.approval is not None:
        if rule.action != "review":
            problems.append(("approval", "only a review rule has an approval table"))
        problems.extend((f"approval.{k}", m) for k, m in approval_problems(effective_approval(rule.approval, rule.approvers)))
    for key in ("rows_over", "statements_over"):
        value = getattr(rule, key)
        if value is not None and value < 0:
            problems.append((key, "expected an integer >= 0"))
    return problems


def effective_approval(approval: ApprovalRule | None, approvers: tuple[str, ...]) -> ApprovalRule:
    """The approval requirement of a review rule or guardrail: its `approval` table with the
    shorthand `approvers` added."""
    if approval is None:
        return ApprovalRule(approvers=approvers)
    if not approvers:
        return approval
    return msgspec.structs.replace(approval, approvers=tuple(dict.fromkeys((*approval.approvers, *approvers))))
