"""policy.approval (pure): who may approve, when a request has enough approvals, the reason
pattern, the checks of an approval table; and the config errors of approval tables loaded through
gateway.config.load_config.

How it works: example-based tests for each rule of the module doc, and hypothesis properties of
`outcome` over generated approver sets (monotonic, order-independent, the requester never
counts, at least `approvals` admitted approvers behind every "approved").
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlward.gateway.config import ConfigError, load_config
from sqlward.policy.approval import ApprovalRule, Approver, approval_problems, approver_problem, outcome, reason_problem

ALICE = "alice@example.com"


def person(subject: str, *groups: str, actor: tuple[str, ...] = ()) -> Approver:
    return Approver(subject=subject, groups=groups, actor=actor, verified_by="oidc")


def bot(name: str, *groups: str) -> Approver:
    return Approver(subject=name, groups=groups, kind="bot", verified_by="api-token")


BOB = person("bob@example.com", "dba")
CAROL = person("carol@example.com", "dba")
DAVE = person("dave@example.com", "sec")
DBA = ApprovalRule(approvers=("group:dba",))


# -- approver_problem ------------------------------------------------------------------------------


def test_group_entry_admits_members_people_and_bots() -> None:
    assert approver_problem([DBA], ALICE, (), BOB) is None
    assert approver_problem([DBA], ALICE, (), bot("ops-bot", "dba")) is None
    problem = approver_problem([DBA], ALICE, (), person("erin@example.com", "dev"))
    assert problem is not None and "not an approver" in problem and "group:dba" in problem


def test_bot_entry_admits_that_bot_only_and_no_person() -> None:
    rule = ApprovalRule(approvers=("bot:Change-Bot",))
    assert approver_problem([rule], ALICE, (), bot("change-bot")) is None  # names are compared canonically
    assert approver_problem([rule], ALICE, (), bot("other-bot")) is not None
    assert approver_problem([rule], ALICE, (), person("change-bot")) is not None


def test_subject_entries_are_case_insensitive_globs_for_people_only() -> None:
    rule = ApprovalRule(approvers=("*@DBA.example.com", "bob@example.com"))
    assert approver_problem([rule], ALICE, (), person("Zed@dba.example.com")) is None
    assert approver_problem([rule], ALICE, (), person("BOB@example.com")) is None
    assert approver_problem([rule], ALICE, (), person("carol@example.com")) is not None
    assert approver_problem([rule], ALICE, (), bot("x@dba.example.com")) is not None


def test_all_groups_members_are_admitted() -> None:
    rule = ApprovalRule(approvers=("group:dba",), all_groups=("sec",))
    assert approver_problem([rule], ALICE, (), DAVE) is None


def test_nobody_approves_their_own_request() -> None:
    rule = ApprovalRule(approvers=("*",), principal=True)
    assert "own request" in (approver_problem([rule], ALICE, (), person("ALICE@example.com")) or "")
    # Any actor of the chain, person or bot.
    assert "own request" in (approver_problem([rule], ALICE, ("agent-x", "runner"), person("Runner")) or "")
    bots = ApprovalRule(approvers=("bot:agent-x",))
    assert "own request" in (approver_problem([bots], ALICE, ("agent-x",), bot("agent-x")) or "")
    # A bot that sent the statement itself (a bot identity may log in with a password).
    assert "own request" in (approver_problem([bots], "agent-x", (), bot("agent-x")) or "")


def test_principal_only_where_every_rule_says_so() -> None:
    principal = person(ALICE, "dba")
    assert approver_problem([ApprovalRule(principal=True)], ALICE, ("agent-x",), principal) is None
    problem = approver_problem([DBA], ALICE, ("agent-x",), principal)
    assert problem is not None and "principal = true" in problem  # a dba, but not as the principal
    both = [ApprovalRule(principal=True), ApprovalRule(approvers=("group:dba",))]
    assert approver_problem(both, ALICE, ("agent-x",), principal) is not None
    # The principal of a session without an agent is simply the requester.
    assert "own request" in (approver_problem([ApprovalRule(principal=True)], ALICE, (), principal) or "")


def test_a_delegated_approver_never_approves() -> None:
    problem = approver_problem([DBA], ALICE, (), person("bob@example.com", "dba", actor=("assistant",)))
    assert problem is not None and "delegated" in problem


def test_every_rule_must_admit_the_approver() -> None:
    rules = [DBA, ApprovalRule(approvers=("group:sec",))]
    assert approver_problem(rules, ALICE, (), BOB) is not None
    assert approver_problem(rules, ALICE, (), person("x@example.com", "dba", "sec")) is None


# -- outcome ---------------------------------------------------------------------------------------


def test_outcome_counts_distinct_admitted_approvers() -> None:
    two = ApprovalRule(approvers=("group:dba",), approvals=2)
    assert outcome([two], ALICE, (), [BOB]) == "pending"
    assert outcome([two], ALICE, (), [BOB, person("BOB@example.com", "dba")]) == "pending"  # the same person twice
    assert outcome([two], ALICE, (), [BOB, person("erin@example.com", "dev")]) == "pending"  # not admitted
    assert outcome([two], ALICE, (), [BOB, person(ALICE, "dba")]) == "pending"  # the requester
    assert outcome([two], ALICE, (), [BOB, CAROL]) == "approved"
    # A bot and a person of the same name are two approvers.
    assert outcome([ApprovalRule(approvers=("group:dba",), approvals=2)], ALICE, (), [bot("bob", "dba"), person("bob", "dba")]) == "approved"


def test_outcome_all_groups() -> None:
    rule = ApprovalRule(approvers=("group:dba",), all_groups=("dba", "sec"))
    assert outcome([rule], ALICE, (), [BOB, CAROL]) == "pending"
    assert outcome([rule], ALICE, (), [BOB, DAVE]) == "approved"
    assert outcome([rule], ALICE, (), [person("x@example.com", "dba", "sec")]) == "approved"


def test_outcome_principal_counts_only_with_principal() -> None:
    principal = person(ALICE)
    assert outcome([ApprovalRule(principal=True)], ALICE, ("agent-x",), [principal]) == "approved"
    assert outcome([ApprovalRule(approvers=("group:dba",))], ALICE, ("agent-x",), [person(ALICE, "dba")]) == "pending"
    # principal and a dba, two approvals: both count.
    rule = ApprovalRule(approvers=("group:dba",), approvals=2, principal=True)
    assert outcome([rule], ALICE, ("agent-x",), [principal]) == "pending"
    assert outcome([rule], ALICE, ("agent-x",), [principal, BOB]) == "approved"


def test_outcome_every_rule_must_hold() -> None:
    rules = [DBA, ApprovalRule(approvers=("group:sec",))]
    assert outcome(rules, ALICE, (), [person("x", "dba", "sec")]) == "approved"
    # Each approver must be admitted by every rule: a dba alone and a sec alone are refused.
    assert outcome(rules, ALICE, (), [BOB, DAVE]) == "pending"


SUBJECTS = ["alice@example.com", "bob@example.com", "carol@example.com", "agent-x", "ops-bot"]
GROUPS = ["dba", "sec", "dev"]
approvers_st = st.builds(
    Approver,
    subject=st.sampled_from(SUBJECTS),
    groups=st.lists(st.sampled_from(GROUPS), max_size=2, unique=True).map(tuple),
    kind=st.sampled_from(["person", "bot"]),
    actor=st.sampled_from([(), (), (), ("assistant",)]),
)
rules_st = st.builds(
    ApprovalRule,
    approvers=st.lists(st.sampled_from(["group:dba", "group:sec", "group:dev", "bot:ops-bot", "*@example.com", "bob@example.com"]),
                       min_size=1, max_size=3, unique=True).map(tuple),
    approvals=st.integers(1, 3),
    all_groups=st.lists(st.sampled_from(GROUPS), max_size=2, unique=True).map(tuple),
    principal=st.booleans(),
)
requester_st = st.tuples(st.sampled_from(SUBJECTS[:4]), st.sampled_from([(), ("agent-x",)]))


@settings(max_examples=1000, deadline=None)
@given(st.lists(rules_st, min_size=1, max_size=2), requester_st, st.lists(approvers_st, max_size=6), approvers_st)
def test_outcome_is_monotonic(rules: list[ApprovalRule], requester: tuple[str, tuple[str, ...]], approvals: list[Approver],
                              extra: Approver) -> None:
    """Adding an approval never turns "approved" into "pending"."""
    subject, actor = requester
    if outcome(rules, subject, actor, approvals) == "approved":
        assert outcome(rules, subject, actor, [*approvals, extra]) == "approved"
        assert outcome(rules, subject, actor, [extra, *approvals]) == "approved"


@settings(max_examples=1000, deadline=None)
@given(st.lists(rules_st, min_size=1, max_size=2), requester_st, st.lists(approvers_st, max_size=6), st.randoms())
def test_outcome_does_not_depend_on_order(rules: list[ApprovalRule], requester: tuple[str, tuple[str, ...]],
                                          approvals: list[Approver], rnd) -> None:  # type: ignore[no-untyped-def]
    subject, actor = requester
    shuffled = list(approvals)
    rnd.shuffle(shuffled)
    assert outcome(rules, subject, actor, approvals) == outcome(rules, subject, actor, shuffled)


@settings(max_examples=1000, deadline=None)
@given(st.lists(rules_st, min_size=1, max_size=2), requester_st, st.lists(approvers_st, max_size=6))
def test_only_admitted_approvers_count(rules: list[ApprovalRule], requester: tuple[str, tuple[str, ...]],
                                       approvals: list[Approver]) -> None:
    """Dropping every approval that approver_problem refuses (the requester, its agents, the
    delegated, non-approvers) never changes the outcome; and "approved" has at least `approvals`
    distinct admitted approvers for every rule."""
    subject, actor = requester
    admitted = [a for a in approvals if approver_problem(rules, subject, actor, a) is None]
    assert outcome(rules, subject, actor, approvals) == outcome(rules, subject, actor, admitted)
    if outcome(rules, subject, actor, admitted) == "approved":
        distinct = {(a.kind, a.subject.casefold()) for a in admitted}
        assert all(len(distinct) >= r.approvals for r in rules)
    # The requester's own approvals (without an agent in between) never change anything.
    others = [a for a in approvals if actor or a.kind != "person" or a.subject.casefold() != subject.casefold()]
    assert outcome(rules, subject, actor, approvals) == outcome(rules, subject, actor, others)
    assert outcome(rules, subject, actor, []) == "pending"


# -- reason_problem --------------------------------------------------------------------------------


def test_reason_pattern() -> None:
    rule = ApprovalRule(approvers=("group:dba",), reason_pattern="(CHG|INC)-[0-9]+")
    assert reason_problem([DBA], "") is None
    assert reason_problem([rule], "fixing chg-42 as agreed") is None  # case-insensitive, anywhere in the reason
    missing = reason_problem([rule], "")
    assert missing is not None and "needs a stated reason" in missing and "sqlward:reason=" in missing
    wrong = reason_problem([rule], "because I said so")
    assert wrong is not None and "does not match" in wrong and "because I said so" in wrong
    long = reason_problem([rule], "x" * 500)
    assert long is not None and "x" * 81 not in long  # the reason is quoted shortened
    assert reason_problem([DBA, rule], "INC-7") is None


# -- approval_problems -----------------------------------------------------------------------------


def test_approval_problems() -> None:
    assert approval_problems(DBA) == []
    assert approval_problems(ApprovalRule(principal=True)) == []
    assert approval_problems(ApprovalRule(all_groups=("dba",))) == []
    fields = dict(approval_problems(ApprovalRule(
        approvers=("team:x", "bot:", " ", "group:dba"), all_groups=("",), hold_timeout=600, expires=60, reason_pattern="(",
    )))
    assert set(fields) == {"approvers[0]", "approvers[1]", "approvers[2]", "all_groups", "hold_timeout", "reason_pattern"}
    assert "unknown approver kind 'team'" in fields["approvers[0]"]
    assert "names no bot" in fields["approvers[1]"]
    assert "longer than the request lives" in fields["hold_timeout"]
    assert "not a valid regular expression" in fields["reason_pattern"]
    assert "nobody could approve" in dict(approval_problems(ApprovalRule()))["approvers"]


# -- config errors of approval tables ---------------------------------------------------------------

BASE = """
[gateway]
name = "dev"

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:6432"

[[targets]]
name = "app"
protocol = "postgres"
environment = "production"
dsn = "postgresql://svc@127.0.0.1:5432/app"
"""

REVIEW_RULE = """
[[rules]]
id = "review-deletes"
operations = ["delete"]
action = "{action}"
"""


def config_error(tmp_path: Path, extra: str) -> list[str]:
    path = tmp_path / "sqlward.toml"
    path.write_text(textwrap.dedent(BASE) + textwrap.dedent(extra))
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env={})
    prefix = f"{path}: "
    lines = str(info.value).splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    return [line[len(prefix):] for line in lines]


def rule_with(tmp_path: Path, table: str, action: str = "review") -> list[str]:
    return config_error(tmp_path, REVIEW_RULE.format(action=action) + "[rules.approval]\n" + textwrap.dedent(table))


def test_config_rule_approval_unknown_key(tmp_path: Path) -> None:
    (line,) = rule_with(tmp_path, 'approverz = ["group:dba"]\n')
    assert line.startswith("$.rules[0].approval.approverz: unknown field (expected one of: approvers, approvals,")


def test_config_rule_approval_nobody(tmp_path: Path) -> None:
    (line,) = rule_with(tmp_path, "approvers = []\n")
    assert line.startswith("$.rules[0].approval.approvers: nobody could approve")


def test_config_rule_approval_bad_entries_timeout_and_pattern(tmp_path: Path) -> None:
    lines = rule_with(tmp_path, """
        approvers = ["group:dba", "team:x", "bot:"]
        expires = 600
        hold_timeout = 1000
        reason_pattern = "(CHG"
        """)
    assert lines == [
        "$.rules[0].approval.approvers[1]: unknown approver kind 'team' in 'team:x' (expected group:<name>, bot:<name> or a subject)",
        "$.rules[0].approval.approvers[2]: 'bot:' names no bot",
        "$.rules[0].approval.hold_timeout: a session cannot wait (1000 s) longer than the request lives (expires = 600 s)",
        "$.rules[0].approval.reason_pattern: not a valid regular expression: missing ), unterminated subpattern at position 0",
    ]


def test_config_rule_approval_out_of_range_and_bad_mode(tmp_path: Path) -> None:
    (line,) = rule_with(tmp_path, 'approvers = ["group:dba"]\napprovals = 0\n')
    assert line.startswith("$.rules[0].approval.approvals: Expected `int` >= 1")
    (line,) = rule_with(tmp_path, 'approvers = ["group:dba"]\nmode = "later"\n')
    assert line.startswith("$.rules[0].approval.mode: Invalid enum value 'later'")


def test_config_approval_on_a_deny_rule(tmp_path: Path) -> None:
    (line,) = rule_with(tmp_path, 'approvers = ["group:dba"]\n', action="deny")
    assert line == "$.rules[0].approval: only a review rule has an approval table"


def test_config_approvers_shorthand_and_table_merge(tmp_path: Path) -> None:
    path = tmp_path / "sqlward.toml"
    path.write_text(textwrap.dedent(BASE) + REVIEW_RULE.format(action="review")
                    + 'approvers = ["bot:change-bot"]\n[rules.approval]\napprovers = ["group:dba"]\napprovals = 2\n')
    config = load_config(str(path), env={})
    from sqlward.policy.rules import effective_approval

    rule = config.rules[0]
    merged = effective_approval(rule.approval, rule.approvers)
    assert merged.approvers == ("group:dba", "bot:change-bot") and merged.approvals == 2


def test_config_guardrail_approval_errors(tmp_path: Path) -> None:
    (line,) = config_error(tmp_path, """
        [guardrails.mass-write]
        action = "review"
        [guardrails.mass-write.approval]
        approvers = ["group:dba"]
        approverz = ["x"]
        """)
    assert line.startswith("$.guardrails.mass-write.approval.approverz: unknown field")
    (line,) = config_error(tmp_path, """
        [guardrails.mass-write]
        action = "review"
        [guardrails.mass-write.approval]
        mode = "later"
        """)
    assert line.startswith("$.guardrails.mass-write.approval.mode: Invalid enum value 'later'")
    (line,) = config_error(tmp_path, """
        [guardrails.mass-write]
        [guardrails.mass-write.approval]
        approvers = ["group:dba"]
        """)
    assert line == '$.guardrails.mass-write.approval: only a review guardrail has an approval table (set action = "review")'


def test_config_guardrail_approval_checks_name_the_guardrail_and_field(tmp_path: Path) -> None:
    lines = config_error(tmp_path, """
        [guardrails.mass-write]
        action = "review"
        [guardrails.mass-write.approval]
        approvers = []
        expires = 600
        hold_timeout = 1000
        reason_pattern = "["
        """)
    assert len(lines) == 3, lines
    for field, message in (("approvers", "nobody could approve"), ("hold_timeout", "longer than the request lives"),
                           ("reason_pattern", "not a valid regular expression")):
        assert any(line.startswith(f"$.guardrails.mass-write.approval.{field}: ") and message in line
                   for line in lines), (field, lines)
