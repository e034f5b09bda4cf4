"""The PostgreSQL audit sink (`audit/sinks/postgres.py`) behind its spool, on the real local server.

Each test gets a database `sqlward_t_auditsink_<hex>` with the audit table made by an
administrator, and an insert-only login role `sqlward_t_auditsink_w_<hex>` (INSERT and SELECT on
the table, USAGE on the schema; the recipe of docs/audit-sinks-remote.md); both are dropped
afterwards. The destination is taken away for real: the database stops accepting connections
(`ALLOW_CONNECTIONS false`) and the sink's backend is terminated.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519

from sqlward.audit.chain import Chain, verify
from sqlward.audit.sinks import SinkError
from sqlward.audit.sinks.postgres import ConflictError, PostgresDestination
from sqlward.audit.spool import Spool, remote_sink
from sqlward.gateway.config import AuditSinkConfig

from .conftest import PGHOST, PGPORT

TABLE = "sqlward_audit"
RECIPE = """
CREATE TABLE sqlward_audit (
    gateway text NOT NULL, seq bigint NOT NULL, time timestamptz NOT NULL,
    event text NOT NULL, line text NOT NULL,
    PRIMARY KEY (gateway, seq));
CREATE INDEX sqlward_audit_time_idx ON sqlward_audit (time);
REVOKE ALL ON sqlward_audit FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, INSERT ON sqlward_audit TO {role};
"""


def admin_dsn(db: str = "postgres") -> str:
    return f"postgresql://postgres@{PGHOST}:{PGPORT}/{db}?sslmode=disable"


@dataclass(frozen=True)
class AuditDb:
    name: str
    writer: str  # the insert-only role

    def dsn(self, user: str) -> str:
        return f"postgresql://{user}@{PGHOST}:{PGPORT}/{self.name}?sslmode=disable"

    def admin(self) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(admin_dsn(self.name), autocommit=True)

    def rows(self, gateway: str) -> list[tuple[int, str, str]]:
        with self.admin() as c:
            got = c.execute(f"SELECT seq, event, line FROM {TABLE} WHERE gateway = %s ORDER BY seq", (gateway,)).fetchall()
        return [(int(str(s)), str(e), str(line)) for s, e, line in got]

    def take_away(self) -> None:
        """The database stops accepting connections and the sink's sessions are ended."""
        with psycopg.connect(admin_dsn(), autocommit=True) as c:
            c.execute(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS false")
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                      (self.name,))

    def bring_back(self) -> None:
        with psycopg.connect(admin_dsn(), autocommit=True) as c:
            c.execute(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true")


@pytest.fixture
def audit_db() -> Iterator[AuditDb]:
    tag = uuid.uuid4().hex[:10]
    db = AuditDb(name=f"sqlward_t_auditsink_{tag}", writer=f"sqlward_t_auditsink_w_{tag}")
    with psycopg.connect(admin_dsn(), autocommit=True) as c:
        c.execute(f"CREATE ROLE {db.writer} LOGIN")
        c.execute(f"CREATE DATABASE {db.name}")
    try:
        with db.admin() as c:
            c.execute(RECIPE.format(role=db.writer))
        yield db
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")
            c.execute(f"DROP ROLE IF EXISTS {db.writer}")


class Gateway:
    """Linked lines of one gateway's chain, with a checkpoint now and then."""

    def __init__(self, name: str, key: ed25519.Ed25519PrivateKey) -> None:
        self.name = name
        self.chain = Chain(name, key=key)
        self.made: list[bytes] = []

    def make(self, n: int, *, checkpoint: bool = False) -> bytes:
        out = []
        for _ in range(n):
            i = len(self.made)
            line = b'{"time":%d.25,"event":"statement.completed","gateway":"%s","text":"select \'\xc3\xa9\xe2\x80\xa8\xf0\x9f\x94\x91\\\\ \\"q\\" \\u0000\'","n":%d}\n' % (
                1_700_000_000 + i, self.name.encode(), i)
            out.append(self.chain.link(line))
        if checkpoint:
            out.append(self.chain.checkpoint())
        self.made.extend(out)
        return b"".join(out)


def destination(db: AuditDb, gateway: str, user: str | None = None) -> PostgresDestination:
    return PostgresDestination(db.dsn(user or db.writer), "", TABLE, gateway, 5.0)


def test_two_gateways_one_table_through_an_outage(audit_db: AuditDb, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    g1, g2 = Gateway("g1", key), Gateway("g2", key)

    async def main() -> None:
        s1 = Spool("audit-db", "postgres", True, destination(audit_db, "g1"), str(tmp_path / "g1"), 1 << 20, "g1")
        s2 = Spool("audit-db", "postgres", True, destination(audit_db, "g2"), str(tmp_path / "g2"), 1 << 20, "g2")
        assert await s1.last_link("g1") is None
        async with trio.open_nursery() as n:
            n.start_soon(s1.run)
            n.start_soon(s2.run)
            for _ in range(5):
                s1.accept(g1.make(3))
                s2.accept(g2.make(2, checkpoint=True))
                await s1.durable(10)
                await s2.durable(10)
            assert len(audit_db.rows("g1")) == 15 and len(audit_db.rows("g2")) == 15

            audit_db.take_away()
            s1.accept(g1.make(4))
            s2.accept(g2.make(4))
            with pytest.raises(SinkError, match="postgres sink 'audit-db': .*(terminat|not currently accepting|closed)"):
                await s1.durable(10)
            with pytest.raises(SinkError, match="postgres sink 'audit-db'"):
                await s2.durable(10)
            with pytest.raises(SinkError, match="not currently accepting connections"):
                await s1.durable(10)  # the retry reconnects, and is refused
            for _ in range(10):  # records spool meanwhile
                s1.accept(g1.make(1))
                s2.accept(g2.make(1, checkpoint=True))
            st = s1.status()
            assert not st.ok and st.backlog == 14 and st.backlog_bytes > 0
            assert s1.ready() is None

            audit_db.bring_back()
            s1.accept(g1.make(1, checkpoint=True))
            await s1.durable(10)
            await s2.durable(10)
            assert s1.status().ok and s1.status().backlog == 0
            n.cancel_scope.cancel()
        assert await s1.last_link("g1") == (len(g1.made), hashlib.sha256(g1.made[-1]).hexdigest())
        await s1.aclose(5)
        await s2.aclose(5)

    trio.run(main)
    for gw in (g1, g2):
        rows = audit_db.rows(gw.name)
        assert [seq for seq, _, _ in rows] == list(range(1, len(gw.made) + 1))  # in order, no gap, no duplicate
        assert [line.encode() + b"\n" for _, _, line in rows] == gw.made  # byte for byte
        report = verify([line.encode() + b"\n" for _, _, line in rows], key.public_key())
        assert report.ok and report.checkpoints >= 1 and report.unsigned_tail == 0, report
    # search columns
    with audit_db.admin() as c:
        got = c.execute(f"SELECT event, extract(epoch FROM time) FROM {TABLE} WHERE gateway = 'g1' AND seq = 1").fetchone()
    assert got is not None and got[0] == "statement.completed" and float(str(got[1])) == 1_700_000_000.25


def test_resent_batch_is_taken_once_and_a_different_line_is_refused(audit_db: AuditDb) -> None:
    g1 = Gateway("g1", ed25519.Ed25519PrivateKey.generate())

    async def main() -> None:
        dest = destination(audit_db, "g1")
        batch = g1.make(3).splitlines(keepends=True)
        await dest.deliver(batch)
        await dest.deliver(batch[1:] + g1.make(2).splitlines(keepends=True))  # re-sent after a crash, then new
        assert len(audit_db.rows("g1")) == 5
        forged = Chain("g1", seq=5, prev=g1.chain.prev)
        other = Chain("g1", seq=4, prev="1" * 64).link(b'{"time":1.5,"event":"x","gateway":"g1"}\n')
        with pytest.raises(ConflictError, match="already holds gateway 'g1' seq 5 with another record"):
            await dest.deliver([forged.link(b'{"time":2.5,"event":"y","gateway":"g1"}\n'), other])
        assert len(audit_db.rows("g1")) == 5  # nothing of that batch
        assert await dest.last_link("g1") == (5, hashlib.sha256(g1.made[-1]).hexdigest())
        assert await dest.last_link("nobody") is None
        await dest.aclose()

    trio.run(main)
    assert [line.encode() + b"\n" for _, _, line in audit_db.rows("g1")] == g1.made


def test_insert_only_role(audit_db: AuditDb) -> None:
    """The writer role delivers, and can neither change nor remove a row."""
    g1 = Gateway("g1", ed25519.Ed25519PrivateKey.generate())

    async def main() -> None:
        dest = destination(audit_db, "g1")
        await dest.deliver(g1.make(2).splitlines(keepends=True))
        await dest.aclose()

    trio.run(main)
    with psycopg.connect(audit_db.dsn(audit_db.writer), autocommit=True) as c:
        for stmt in (f"UPDATE {TABLE} SET line = 'x'", f"DELETE FROM {TABLE}", f"TRUNCATE {TABLE}",
                     f"ALTER TABLE {TABLE} DISABLE TRIGGER ALL", f"DROP TABLE {TABLE}"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(stmt)
    assert len(audit_db.rows("g1")) == 2


def test_table_made_when_missing_and_remote_sink(audit_db: AuditDb, tmp_path: Path) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("not-checked-by-trust\n")
    cfg = AuditSinkConfig(kind="postgres", name="central", dsn=audit_db.dsn("postgres"),
                          password_file=str(password_file), table="audit2.trail")
    with audit_db.admin() as c:
        c.execute("CREATE SCHEMA audit2")
    g1 = Gateway("g1", ed25519.Ed25519PrivateKey.generate())

    async def main() -> None:
        sink = remote_sink(cfg, gateway="g1", spool_dir=str(tmp_path / "spool" / "central"))
        assert sink.name == "central" and sink.kind == "postgres" and sink.directory == str(tmp_path / "spool" / "central")
        assert (tmp_path / "spool" / "central").is_dir()
        assert await sink.last_link("g1") is None  # made the table
        sink.accept(g1.make(2, checkpoint=True))
        await sink.aclose(10)  # delivers what is left

    trio.run(main)
    with audit_db.admin() as c:
        cols = c.execute("SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                         "WHERE table_schema = 'audit2' AND table_name = 'trail' ORDER BY ordinal_position").fetchall()
        idx = c.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'audit2' AND tablename = 'trail' ORDER BY 1").fetchall()
        lines = c.execute("SELECT line FROM audit2.trail ORDER BY seq").fetchall()
    assert cols == [("gateway", "text", "NO"), ("seq", "bigint", "NO"), ("time", "timestamp with time zone", "NO"),
                    ("event", "text", "NO"), ("line", "text", "NO")]
    assert [name for (name,) in idx] == ["trail_pkey", "trail_time_idx"]
    assert [str(line).encode() + b"\n" for (line,) in lines] == g1.made


def test_unreachable_server_is_reported(tmp_path: Path) -> None:
    from tests.support.pgcluster import free_port

    async def main() -> None:
        dest = PostgresDestination(f"postgresql://postgres@127.0.0.1:{free_port()}/x", "", TABLE, "g1", 2.0)
        s = Spool("audit-db", "postgres", True, dest, str(tmp_path), 1 << 20, "g1")
        with pytest.raises(SinkError, match="cannot read where its chain ends: .*refused"):
            await s.last_link("g1")
        async with trio.open_nursery() as n:
            n.start_soon(s.run)
            s.accept(Gateway("g1", ed25519.Ed25519PrivateKey.generate()).make(1))
            with pytest.raises(SinkError, match="postgres sink 'audit-db': .*Connection refused"):
                await s.durable(5)
            n.cancel_scope.cancel()
        await s.aclose(0.1)

    trio.run(main)
