"""gateway.approvals.service: every transition of a request, its audit event and its notification,
run against both stores (SQLite and PostgreSQL).

How it works: the `env` fixture (parametrized `sqlite` / `postgres`, the PostgreSQL one a table
of its own in a scratch database `sqlward_store_svc_<pid>`) builds an `ApprovalService` over a
real store, a real `audit.recorder.Recorder` whose sink keeps every line (`ListSink`, which can
be told to fail), a notifier that keeps what it was told, and a clock that runs with real time
but can be moved forward (expiry). `env.other()` is a second service over another store object
on the same file / table: another gateway replica. Tests are coroutines run under `trio.run`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import trio

from sqlward.audit.recorder import AuditUnavailable, Recorder
from sqlward.gateway.approvals.model import ApprovalRequest, Requester
from sqlward.gateway.approvals.service import ApprovalError, ApprovalService, new_id
from sqlward.gateway.approvals.store import ApprovalStore, PostgresStore, SqliteStore
from sqlward.policy.approval import ApprovalRule, Approver
from tests.integration.conftest import _admin_dsn, scratch_database
from tests.support.auditsink import ListSink

DB = f"sqlward_store_svc_{os.getpid()}"
admin_dsn = _admin_dsn


@pytest.fixture(scope="module")
def scratch_db() -> Iterator[str]:
    with scratch_database(DB) as name:
        yield name


class Clock:
    """Real time plus an offset that tests move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Notes:
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, id, status)

    def notify(self, kind: str, request: ApprovalRequest) -> None:
        self.seen.append((kind, request.id, request.status))


@dataclass
class Env:
    new_store: Callable[[], ApprovalStore]
    sink: ListSink = field(default_factory=ListSink)
    clock: Clock = field(default_factory=Clock)
    notes: Notes = field(default_factory=Notes)
    stores: list[ApprovalStore] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.recorder = Recorder("gw-1", self.sink, clock=self.clock)
        self.session = self.recorder.scope("conn-1")
        self.service = self.make_service()

    def make_service(self, poll: float = 0.05) -> ApprovalService:
        store = self.new_store()
        self.stores.append(store)
        return ApprovalService(store, scope=self.recorder.gateway_scope, notifier=self.notes, clock=self.clock,
                               poll=poll, sweep=0.05)

    def other(self, poll: float = 0.05) -> ApprovalService:
        return self.make_service(poll)

    def events(self, name: str) -> list[dict]:
        return [e for e in self.sink.events if e["event"] == name]

    def run(self, test: Callable[[], object]) -> None:
        async def main() -> None:
            try:
                await test()  # type: ignore[misc]
            finally:
                for s in self.stores:
                    await s.aclose()

        trio.run(main)


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    if request.param == "sqlite":
        path = str(tmp_path / "approvals.sqlite3")
        return Env(lambda: SqliteStore(path))
    dsn = admin_dsn(request.getfixturevalue("scratch_db"))
    table = f"approvals_{uuid.uuid4().hex[:12]}"
    return Env(lambda: PostgresStore(dsn, table=table))


ALICE = Requester(subject="alice@example.com", groups=("dev",), verified_by="oidc")
AGENT = Requester(subject="alice@example.com", actor=("agent-x",), groups=("dev",), verified_by="oidc", is_agent=True)
BOB = Approver(subject="bob@example.com", groups=("dba",), verified_by="oidc")
CAROL = Approver(subject="carol@example.com", groups=("dba",), verified_by="oidc")
DAVE = Approver(subject="dave@example.com", groups=("sec",), verified_by="oidc")
ERIN = Approver(subject="erin@example.com", groups=("dev",), verified_by="oidc")
DBA = ApprovalRule(approvers=("group:dba",))


def req(env: Env, *rules: ApprovalRule, requester: Requester = ALICE, mode: str = "hold", binding: str = "b" * 64,
        expires_in: float = 900.0) -> ApprovalRequest:
    now = env.clock()
    return ApprovalRequest(
        id=new_id(), binding=binding, mode=mode, requester=requester, target="prod", environment="production",  # type: ignore[arg-type]
        protocol="postgres", sql="DELETE FROM t WHERE v < 10", rules=("mass-write",), requirements=rules or (DBA,),
        created=now, expires=now + expires_in, request_id=7, connection_id="conn-1",
    )


async def created(env: Env, *rules: ApprovalRule, **kw: object) -> ApprovalRequest:
    return await env.service.create(req(env, *rules, **kw), env.session)  # type: ignore[arg-type]


async def refused(env: Env, approval_id: str, approver: Approver, verdict: str = "approve") -> ApprovalError:
    with pytest.raises(ApprovalError) as info:
        await env.service.decide(approval_id, approver, verdict)
    return info.value


# -- create and wait -----------------------------------------------------------------------------


def test_create_records_and_notifies(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        assert (await env.service.get(r.id)) == r
        (e,) = env.events("approval.requested")
        assert e["connection_id"] == "conn-1" and e["approval_id"] == r.id and e["request_id"] == 7
        assert e["approvers"] == ["group:dba"] and e["mode"] == "hold" and e["binding"] == r.binding
        assert env.notes.seen == [("approval.requested", r.id, "pending")]
        assert (await env.service.pending_for(r.binding)) == r

    env.run(go)


def test_create_whose_audit_fails_is_withdrawn(env: Env) -> None:
    async def go() -> None:
        env.sink.fail = OSError("disk full")
        r = req(env)
        with pytest.raises(AuditUnavailable):
            await env.service.create(r, env.session)
        stored = await env.service.get(r.id)
        assert stored is not None and stored.status == "withdrawn"
        assert env.notes.seen == []

    env.run(go)


def test_wait_is_woken_at_once_by_a_decision_in_this_process(env: Env) -> None:
    async def go() -> None:
        env.service = env.make_service(poll=30.0)  # polling would take 30 s
        r = await created(env)
        got: list[ApprovalRequest | None] = []

        async def waiter() -> None:
            got.append(await env.service.wait(r.id, env.clock() + 60))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(0.05)
            start = time.monotonic()
            await env.service.decide(r.id, BOB, "approve")
            with trio.fail_after(1.0):
                while not got:
                    await trio.sleep(0.001)
            assert time.monotonic() - start < 0.5
        assert got[0] is not None and got[0].status == "approved"

    env.run(go)


def test_wait_sees_a_decision_taken_through_another_replica(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        replica = env.other()
        got: list[ApprovalRequest | None] = []

        async def waiter() -> None:
            got.append(await env.service.wait(r.id, env.clock() + 60))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(0.1)
            assert not got
            await replica.decide(r.id, BOB, "reject")
            with trio.fail_after(2.0):
                while not got:
                    await trio.sleep(0.005)
        assert got[0] is not None and got[0].status == "rejected"
        assert env.service._events == {}  # nothing left behind for a request decided elsewhere

    env.run(go)


def test_wait_gives_up_at_its_deadline(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        start = time.monotonic()
        got = await env.service.wait(r.id, env.clock() + 0.2)
        assert got is not None and got.status == "pending"
        assert 0.15 <= time.monotonic() - start < 1.5
        assert env.service._events == {}

    env.run(go)


# -- decide: who may -------------------------------------------------------------------------------


def test_self_approval_is_refused(env: Env) -> None:
    async def go() -> None:
        r = await created(env, ApprovalRule(approvers=("group:dev", "*@example.com")))
        me = Approver(subject="ALICE@example.com", groups=("dev",), verified_by="oidc")
        err = await refused(env, r.id, me)
        assert err.status == 403 and "own request" in err.message
        assert (await env.service.get(r.id)).status == "pending"  # type: ignore[union-attr]
        assert env.events("approval.decided") == []

    env.run(go)


def test_an_actor_of_the_chain_is_refused(env: Env) -> None:
    async def go() -> None:
        r = await created(env, ApprovalRule(approvers=("*",), principal=True), requester=AGENT)
        err = await refused(env, r.id, Approver(subject="agent-x", verified_by="oidc"))
        assert err.status == 403 and "own request" in err.message

    env.run(go)


def test_a_bot_never_approves_its_own_statement(env: Env) -> None:
    async def go() -> None:
        r = await created(env, ApprovalRule(approvers=("bot:change-bot",)), requester=Requester(subject="change-bot"))
        err = await refused(env, r.id, Approver(subject="change-bot", kind="bot", verified_by="api-token"))
        assert err.status == 403 and "own request" in err.message

    env.run(go)


def test_principal_approves_only_where_the_rule_says_so(env: Env) -> None:
    principal = Approver(subject="alice@example.com", groups=("dba",), verified_by="oidc")

    async def go() -> None:
        r = await created(env, DBA, requester=AGENT)
        err = await refused(env, r.id, principal)  # a dba, but the rule does not allow the principal
        assert err.status == 403 and "principal = true" in err.message
        r = await created(env, ApprovalRule(approvers=("group:dba",), principal=True), requester=AGENT)
        done = await env.service.decide(r.id, principal, "approve", "my agent, my call")
        assert done.status == "approved" and done.decisions[0].comment == "my agent, my call"
        # Without an agent, the same person is just the requester.
        r = await created(env, ApprovalRule(approvers=("group:dba",), principal=True))
        assert (await refused(env, r.id, principal)).status == 403

    env.run(go)


def test_a_delegated_approver_is_refused(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        err = await refused(env, r.id, Approver(subject="bob@example.com", groups=("dba",), actor=("some-agent",)))
        assert err.status == 403 and "delegated" in err.message

    env.run(go)


def test_a_non_approver_is_refused_for_approve_and_reject(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        for verdict in ("approve", "reject"):
            err = await refused(env, r.id, ERIN, verdict)
            assert err.status == 403 and "not an approver" in err.message and "group:dba" in err.message
        assert (await env.service.get(r.id)).status == "pending"  # type: ignore[union-attr]

    env.run(go)


def test_a_bot_is_admitted_by_its_bot_entry_only(env: Env) -> None:
    async def go() -> None:
        r = await created(env, ApprovalRule(approvers=("bot:change-bot",)))
        other_bot = Approver(subject="other-bot", kind="bot", verified_by="api-token")
        assert (await refused(env, r.id, other_bot)).status == 403
        # A person named like the bot is not the bot.
        assert (await refused(env, r.id, Approver(subject="change-bot", verified_by="oidc"))).status == 403
        done = await env.service.decide(r.id, Approver(subject="Change-Bot", kind="bot", verified_by="api-token"), "approve")
        assert done.status == "approved"
        (e,) = env.events("approval.decided")
        assert e["approver"] == {"subject": "Change-Bot", "kind": "bot", "verified_by": "api-token"}

    env.run(go)


def test_two_approvals_need_two_distinct_approvers(env: Env) -> None:
    async def go() -> None:
        r = await created(env, ApprovalRule(approvers=("group:dba",), approvals=2))
        first = await env.service.decide(r.id, BOB, "approve")
        assert first.status == "pending" and first.decided is None
        again = await refused(env, r.id, Approver(subject="BOB@example.com", groups=("dba",)))
        assert again.status == 409 and "already decided" in again.message
        done = await env.service.decide(r.id, CAROL, "approve")
        assert done.status == "approved" and done.decided is not None and len(done.decisions) == 2
        assert [e["status"] for e in env.events("approval.decided")] == ["pending", "approved"]
        assert [k for k, _, _ in env.notes.seen] == ["approval.requested", "approval.decided", "approval.decided"]

    env.run(go)


def test_all_groups_need_one_approver_from_each_group(env: Env) -> None:
    async def go() -> None:
        r = await created(env, ApprovalRule(approvers=("group:dba",), all_groups=("dba", "sec")))
        assert (await env.service.decide(r.id, BOB, "approve")).status == "pending"
        assert (await env.service.decide(r.id, CAROL, "approve")).status == "pending"  # still no one from sec
        assert (await env.service.decide(r.id, DAVE, "approve")).status == "approved"

    env.run(go)


def test_every_rule_of_the_request_must_admit_the_approver(env: Env) -> None:
    async def go() -> None:
        r = await created(env, DBA, ApprovalRule(approvers=("group:sec", "bob@example.com")))
        assert (await refused(env, r.id, CAROL)).status == 403  # a dba, but the second rule does not admit her
        assert (await env.service.decide(r.id, BOB, "approve")).status == "approved"

    env.run(go)


def test_one_rejection_rejects(env: Env) -> None:
    async def go() -> None:
        r = await created(env, ApprovalRule(approvers=("group:dba",), approvals=2))
        await env.service.decide(r.id, BOB, "approve")
        done = await env.service.decide(r.id, CAROL, "reject", "not during business hours")
        assert done.status == "rejected" and done.decided is not None
        (_, e) = env.events("approval.decided")
        assert e["verdict"] == "reject" and e["status"] == "rejected" and e["comment"] == "not during business hours"

    env.run(go)


def test_deciding_a_decided_request_is_a_conflict(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        await env.service.decide(r.id, BOB, "reject")
        err = await refused(env, r.id, CAROL)
        assert err.status == 409 and "rejected" in err.message
        assert len(env.events("approval.decided")) == 1

    env.run(go)


def test_deciding_an_expired_request_is_a_conflict(env: Env) -> None:
    async def go() -> None:
        r = await created(env, expires_in=60)
        env.clock.offset = 61
        err = await refused(env, r.id, BOB)
        assert err.status == 409 and "expired" in err.message
        stored = await env.service.get(r.id)
        assert stored is not None and stored.status == "expired" and stored.decisions == ()
        assert [e["was"] for e in env.events("approval.expired")] == ["pending"]

    env.run(go)


def test_unknown_verdict_and_unknown_request(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        assert (await refused(env, r.id, BOB, "maybe")).status == 400
        assert (await refused(env, "ap-000000000000", BOB)).status == 404

    env.run(go)


def test_racing_approvers_through_two_replicas_both_count(env: Env) -> None:
    """Two approvals at the same time through two replicas: the compare-and-set makes the loser
    read again, so both decisions are kept and the request ends approved."""

    async def go() -> None:
        r = await created(env, ApprovalRule(approvers=("group:dba",), approvals=2))
        replica = env.other()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(env.service.decide, r.id, BOB, "approve")
            nursery.start_soon(replica.decide, r.id, CAROL, "approve")
        done = await env.service.get(r.id)
        assert done is not None and done.status == "approved"
        assert sorted(d.approver.subject for d in done.decisions) == [BOB.subject, CAROL.subject]

    env.run(go)


def test_a_decision_that_cannot_be_audited_is_undone(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        waiting: list[ApprovalRequest | None] = []
        env.sink.fail = OSError("disk full")
        err = await refused(env, r.id, BOB)
        assert err.status == 503 and "not taken" in err.message
        stored = await env.service.get(r.id)
        assert stored is not None and stored.status == "pending" and stored.decisions == ()
        assert await env.service.claim(r.id, env.session, 7) is None
        assert [k for k, _, _ in env.notes.seen] == ["approval.requested"]
        # Once the trail is writable again, the same approver decides normally.
        env.sink.fail = None
        waiting.append(await env.service.decide(r.id, BOB, "approve"))
        assert waiting[0] is not None and waiting[0].status == "approved"

    env.run(go)


def test_a_decision_neither_audited_nor_undoable_says_so(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """The audit write fails, and meanwhile a replica claimed the approved request: the undo's
    compare-and-set loses, and the approver is not told that the decision was not taken."""

    async def go() -> None:
        r = await created(env)
        replica = env.other()
        claimed: list[ApprovalRequest | None] = []
        real_write = env.sink.write

        async def write(data: bytes) -> None:
            if b'"approval.decided"' in data:
                claimed.append(await replica.claim(r.id, env.recorder.scope("conn-2"), 1))
                raise OSError("disk full")
            await real_write(data)

        env.sink.write = write  # type: ignore[method-assign]
        err = await refused(env, r.id, BOB)
        assert err.status == 503 and "could not be undone" in err.message
        assert claimed[0] is not None and (await env.service.get(r.id)).status == "executed"  # type: ignore[union-attr]
        assert any("could not be audited nor undone" in m.getMessage() for m in caplog.records)

    env.run(go)


# -- claim, retry mode, withdraw, finished, sweep ----------------------------------------------------


def test_claim_is_single_use(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        assert await env.service.claim(r.id, env.session, 7) is None  # pending: nothing to release
        await env.service.decide(r.id, BOB, "approve")
        replica = env.other()
        results: list[ApprovalRequest | None] = []

        async def claim(service: ApprovalService) -> None:
            results.append(await service.claim(r.id, env.session, 7))

        async with trio.open_nursery() as nursery:
            for service in (env.service, replica, env.service, replica):
                nursery.start_soon(claim, service)
        won = [x for x in results if x is not None]
        assert len(won) == 1 and won[0].status == "executed" and won[0].executed is not None
        assert await env.service.claim(r.id, env.session, 7) is None
        (e,) = env.events("approval.executed")
        assert e["approval_id"] == r.id and e.get("status", "executed") == "executed" and e["connection_id"] == "conn-1"
        assert env.notes.seen[-1] == ("approval.executed", r.id, "executed")

    env.run(go)


def test_claim_of_an_expired_approval_is_refused(env: Env) -> None:
    async def go() -> None:
        r = await created(env, expires_in=60)
        await env.service.decide(r.id, BOB, "approve")
        env.clock.offset = 61
        assert await env.service.claim(r.id, env.session, 7) is None

    env.run(go)


def test_claim_whose_audit_fails_does_not_run(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        await env.service.decide(r.id, BOB, "approve")
        env.sink.fail = OSError("disk full")
        with pytest.raises(AuditUnavailable):
            await env.service.claim(r.id, env.session, 7)
        stored = await env.service.get(r.id)
        assert stored is not None and stored.status == "failed" and "not run" in (stored.error or "")

    env.run(go)


def test_claim_binding_in_retry_mode(env: Env) -> None:
    async def go() -> None:
        binding = "c" * 64
        pending = await created(env, mode="retry", binding=binding)
        assert await env.service.claim_binding(binding, env.session, 8) is None  # not approved yet
        await env.service.decide(pending.id, BOB, "approve")
        assert await env.service.claim_binding("d" * 64, env.session, 8) is None  # another binding
        done = await env.service.claim_binding(binding, env.session, 8)
        assert done is not None and done.id == pending.id and done.status == "executed"
        assert await env.service.claim_binding(binding, env.session, 9) is None  # a second run needs a new approval
        # An approval past its expiry is not used; a live one is.
        stale = await created(env, mode="retry", binding=binding, expires_in=30)
        await env.service.decide(stale.id, BOB, "approve")
        env.clock.offset = 31
        live = await created(env, mode="retry", binding=binding, expires_in=900)
        await env.service.decide(live.id, CAROL, "approve")
        got = await env.service.claim_binding(binding, env.session, 10)
        assert got is not None and got.id == live.id
        assert (await env.service.get(stale.id)).status == "approved"  # type: ignore[union-attr]  # until the sweep

    env.run(go)


def test_claim_binding_races_between_replicas(env: Env) -> None:
    async def go() -> None:
        binding = "e" * 64
        r = await created(env, mode="retry", binding=binding)
        await env.service.decide(r.id, BOB, "approve")
        replica = env.other()
        results: list[ApprovalRequest | None] = []

        async def claim(service: ApprovalService) -> None:
            results.append(await service.claim_binding(binding, env.session, 1))

        async with trio.open_nursery() as nursery:
            for service in (env.service, replica, replica):
                nursery.start_soon(claim, service)
        assert len([x for x in results if x is not None]) == 1

    env.run(go)


def test_withdraw(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        moved = await env.service.withdraw(r.id, "cancelled by the client", env.session)
        assert moved is not None and moved.status == "withdrawn" and moved.decided is not None
        (e,) = env.events("approval.withdrawn")
        assert e["reason"] == "cancelled by the client" and e["connection_id"] == "conn-1"
        assert env.notes.seen[-1] == ("approval.withdrawn", r.id, "withdrawn")
        assert await env.service.withdraw(r.id, "again") is None  # already final
        assert (await refused(env, r.id, BOB)).status == 409
        # A decided request is not withdrawn; a pending one past its expiry is expired instead.
        d = await created(env)
        await env.service.decide(d.id, BOB, "approve")
        assert await env.service.withdraw(d.id, "session closed") is None
        assert (await env.service.get(d.id)).status == "approved"  # type: ignore[union-attr]
        x = await created(env, expires_in=10)
        env.clock.offset = 11
        moved = await env.service.withdraw(x.id, "hold timed out")
        assert moved is not None and moved.status == "expired"
        assert [e["approval_id"] for e in env.events("approval.expired")] == [x.id]

    env.run(go)


def test_sweep_expires_pending_and_unused_approvals(env: Env) -> None:
    async def go() -> None:
        pending = await created(env, expires_in=10)
        approved = await created(env, mode="retry", expires_in=10)
        await env.service.decide(approved.id, BOB, "approve")
        used = await created(env, expires_in=10)
        await env.service.decide(used.id, BOB, "approve")
        await env.service.claim(used.id, env.session, 7)
        live = await created(env, expires_in=900)
        assert await env.service.sweep() == 0
        env.clock.offset = 11
        assert await env.service.sweep() == 2
        statuses = {r.id: r.status for r in await env.service.list()}
        assert statuses == {pending.id: "expired", approved.id: "expired", used.id: "executed", live.id: "pending"}
        expired = {e["approval_id"]: e["was"] for e in env.events("approval.expired")}
        assert expired == {pending.id: "pending", approved.id: "approved"}
        assert all(e["connection_id"] == "" for e in env.events("approval.expired"))  # the gateway's scope
        assert {(k, i) for k, i, _ in env.notes.seen if k == "approval.expired"} == {
            ("approval.expired", pending.id), ("approval.expired", approved.id)}
        assert await env.service.sweep() == 0

    env.run(go)


def test_the_sweeper_runs_on_its_own(env: Env) -> None:
    async def go() -> None:
        r = await created(env, expires_in=0.2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(env.service.run)
            with trio.fail_after(5):
                while (await env.service.get(r.id)).status != "expired":  # type: ignore[union-attr]
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()

    env.run(go)


def test_sweep_wakes_a_waiter(env: Env) -> None:
    async def go() -> None:
        env.service = env.make_service(poll=30.0)
        r = await created(env, expires_in=60)
        got: list[ApprovalRequest | None] = []

        async def waiter() -> None:
            got.append(await env.service.wait(r.id, env.clock() + 600))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(0.05)
            env.clock.offset = 61
            await env.service.sweep()
            with trio.fail_after(1):
                while not got:
                    await trio.sleep(0.001)
        assert got[0] is not None and got[0].status == "expired"

    env.run(go)


def test_finished_with_an_error_fails_the_request(env: Env) -> None:
    async def go() -> None:
        ok = await created(env)
        await env.service.decide(ok.id, BOB, "approve")
        await env.service.claim(ok.id, env.session, 7)
        await env.service.finished(ok.id, 7, None, env.session)
        assert (await env.service.get(ok.id)).status == "executed"  # type: ignore[union-attr]
        bad = await created(env)
        await env.service.decide(bad.id, BOB, "approve")
        await env.service.claim(bad.id, env.session, 8)
        await env.service.finished(bad.id, 8, "ERROR: deadlock detected", env.session)
        await env.session.flush()  # finished() adds to the session's batch; the statement's completion flushes it
        stored = await env.service.get(bad.id)
        assert stored is not None and stored.status == "failed" and stored.error == "ERROR: deadlock detected"
        failed = [e for e in env.events("approval.executed") if e.get("status") == "failed"]
        assert [(e["approval_id"], e["request_id"], e["error"]) for e in failed] == [(bad.id, 8, "ERROR: deadlock detected")]
        assert env.notes.seen[-1] == ("approval.failed", bad.id, "failed")

    env.run(go)


def test_every_transition_is_an_audit_event_in_order(env: Env) -> None:
    async def go() -> None:
        r = await created(env)
        await env.service.decide(r.id, BOB, "approve")
        await env.service.claim(r.id, env.session, 7)
        names = [(e["event"], e["approval_id"]) for e in env.sink.events]
        assert names == [("approval.requested", r.id), ("approval.decided", r.id), ("approval.executed", r.id)]
        # Sequence numbers per scope without gaps: the session's (1, 2) and the gateway's (1).
        assert [(e["connection_id"], e["seq"]) for e in env.sink.events] == [("conn-1", 1), ("", 1), ("conn-1", 2)]

    env.run(go)


def test_new_ids_are_distinct_and_well_formed() -> None:
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 15 and i.startswith("ap-") and set(i[3:]) <= set("0123456789abcdefghjkmnpqrstvwxyz") for i in ids)


# -- limits: requests per requester, retention, paging (issue 13 attack run) -------------------


def test_pending_requests_are_counted_per_requester_in_canonical_form(env: Env) -> None:
    async def go() -> None:
        for _ in range(3):
            await created(env)
        await created(env, requester=Requester(subject="ＡＬＩＣＥ@example.com", verified_by="oidc"))
        other = await created(env, requester=Requester(subject="zed@example.com", verified_by="oidc"))
        assert await env.service.pending_count("alice@example.com") == 4
        assert await env.service.pending_count("Alice@Example.com") == 4
        assert await env.service.pending_count("zed@example.com") == 1
        await env.service.decide(other.id, BOB, "reject")
        assert await env.service.pending_count("zed@example.com") == 0

    env.run(go)


def test_list_filters_by_requester_and_pages(env: Env) -> None:
    async def go() -> None:
        mine = [await created(env) for _ in range(5)]
        theirs = await created(env, requester=Requester(subject="zed@example.com", verified_by="oidc"))
        assert [r.id for r in await env.service.list(requester="zed@example.com")] == [theirs.id]
        newest_first = [r.id for r in reversed(mine)]
        page1 = await env.service.list(requester="alice@example.com", limit=2)
        page2 = await env.service.list(requester="alice@example.com", limit=2, offset=2)
        assert [r.id for r in page1 + page2] == newest_first[:4]

    env.run(go)


def test_decided_requests_are_purged_after_the_retention(env: Env) -> None:
    async def go() -> None:
        service = ApprovalService(env.new_store(), scope=env.recorder.gateway_scope, clock=env.clock, retention=3600.0)
        env.stores.append(service.store)
        done = await service.create(req(env), env.session)
        await service.decide(done.id, BOB, "reject")
        waiting = await service.create(req(env, expires_in=10 * 86400), env.session)
        env.clock.offset += 7200  # two hours later: past the retention, the pending one still open
        await service.sweep()
        assert await service.get(done.id) is None
        still = await service.get(waiting.id)
        assert still is not None and still.status == "pending"

    env.run(go)


def test_a_retry_approval_given_under_a_laxer_policy_does_not_release_under_a_stricter_one(env: Env) -> None:
    async def go() -> None:
        r = await created(env, mode="retry")
        await env.service.decide(r.id, BOB, "approve")
        stricter = (ApprovalRule(approvers=("group:dba",), approvals=2),)
        assert await env.service.claim_binding(r.binding, env.session, 9, stricter) is None
        still = await env.service.get(r.id)
        assert still is not None and still.status == "approved"
        done = await env.service.claim_binding(r.binding, env.session, 9, (DBA,))
        assert done is not None and done.id == r.id and done.status == "executed"

    env.run(go)
