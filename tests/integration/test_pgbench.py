"""pgbench through the gateway in the three query modes.

The pgbench tables are created directly on PostgreSQL (`pgbench -i` is not what is under test);
then `pgbench -n -S -T 3 -c 2 -M simple|extended|prepared` runs through the gateway: it must
exit 0 with no failed transaction and a positive TPS, and the audit trail must hold at least one
statement.completed line per transaction.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Iterator

import psycopg
import pytest

from tests.support.gateway import connection_events


@pytest.fixture(scope="module")
def pgbench_tables(direct_dsn: str) -> Iterator[None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    res = subprocess.run(["pgbench", "-i", "-s", "1", "-q", direct_dsn], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    yield
    with psycopg.connect(direct_dsn, autocommit=True) as c:
        c.execute("drop table if exists pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history")


def run_pgbench(conninfo: str, password: str, mode: str, seconds: int = 3, clients: int = 2) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    res = subprocess.run(
        ["pgbench", "-n", "-S", "-T", str(seconds), "-c", str(clients), "-j", str(clients), "-M", mode, conninfo],
        capture_output=True, text=True, timeout=seconds + 60, env=env,
    )
    assert res.returncode == 0, f"pgbench exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    out = res.stdout
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert processed and tps, out
    return {
        "processed": int(processed.group(1)),
        "tps": float(tps.group(1)),
        "failed": int(failed.group(1)) if failed else 0,
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only(via, pgbench_tables, mode):
    gw = via.gw
    offset = gw.audit_offset() if gw else 0
    stats = run_pgbench(via.kv_dsn("alice", "app", sslmode="disable"), via.password("alice"), mode)
    assert stats["failed"] == 0
    assert stats["processed"] > 0 and stats["tps"] > 0, stats
    if gw is None:
        return
    def pgbench_conns(evs):
        return [e["connection_id"] for e in evs
                if e.get("event") == "connection.authenticated" and e.get("application_name") == "pgbench"]

    def all_closed(evs):
        closed = {e["connection_id"] for e in evs if e.get("event") == "connection.closed"}
        return set(pgbench_conns(evs)) <= closed

    events = gw.wait_audit(all_closed, since=offset, timeout=5)
    conns = pgbench_conns(events)
    # pgbench opens one more session first (it reads the scale from pgbench_branches).
    assert len(conns) >= 2, f"expected the 2 pgbench client sessions in the audit trail, found {len(conns)}"
    assert all_closed(events), "connection.closed missing for a pgbench session"
    completed = decided = 0
    for cid in conns:
        evs = connection_events(events, cid)
        decided_here = [e for e in evs if e["event"] == "statement.decided"]
        completed_here = [e for e in evs if e["event"] == "statement.completed"
                          and any(t.startswith("SELECT") for t in e.get("tags", ()))]
        assert decided_here, f"no statement.decided for pgbench session {cid}"
        assert all(e["action"] == "allow" for e in decided_here)
        decided += len(decided_here)
        completed += len(completed_here)
    assert completed >= stats["processed"], (
        f"{completed} statement.completed SELECT lines for {stats['processed']} transactions ({mode})"
    )
