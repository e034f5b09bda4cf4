"""Issue 6 on PostgreSQL: masked values never reach the client, whatever the query or client.

A gateway with masking rules sits in front of a private database; every client connection goes
through `tests.support.tap.Tap`, which records each byte the client receives. For each query of
the evasion corpus and each client (psycopg text, psycopg binary, asyncpg prepared statements),
the test asserts that none of the original PII values appears in those bytes, whether the
statement was answered (masked) or refused. Exempt identities see clear values; the audit trail
counts masked values and never holds them; a hypothesis test inserts random PII rows and checks
they never leak.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import struct
import uuid
from typing import Any, Iterator

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gateway import GatewayProcess, target
from tests.support.tap import Tap

from .conftest import VIA, _admin_dsn

DB = "sqlward_mask_it"
EMAILS = ["zq7.alice.private@example.com", "zq7.bob.hidden@corp-mail.io"]
SSNS = ["219-09-9999", "078-05-1120"]
CARDS = ["4111111111111111", "5500005555555559"]
BORN = [dt.date(1980, 5, 17), dt.date(1975, 11, 2)]
NOTE_CARD = "4012888888881881"  # inside free text: only the content classifier can see it
SECRETS = {"ana": "ana-secret", "dora": "dora-secret"}

SCHEMA = [
    "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, card text, born date)",
    "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, total numeric(10,2), note text)",
    "CREATE VIEW v_customers AS SELECT id, email AS contact FROM customers",
    "CREATE TABLE pii_random (id serial PRIMARY KEY, email text, ssn text)",
]

MASKS = [
    {"id": "pii-email", "columns": ["customers.email"], "function": "email", "exempt_groups": ["dpo"]},
    {"id": "ssn", "columns": ["*.ssn"], "function": "partial", "keep_last": 2, "exempt_groups": ["dpo"]},
    {"id": "card", "columns": ["customers.card"], "function": "hash", "exempt_groups": ["dpo"]},
    {"id": "born", "columns": ["customers.born"], "function": "truncate_date", "truncate": "year", "exempt_groups": ["dpo"]},
    {"id": "random-email", "columns": ["pii_random.email"], "function": "redact", "exempt_groups": ["dpo"]},
    # No columns: the content classifiers scan every text column of every result (the last net).
    {"id": "content", "classifiers": ["card", "email", "ssn"], "function": "redact", "exempt_groups": ["dpo"]},
]


def forbidden() -> list[bytes]:
    out = [v.encode() for v in (*EMAILS, *SSNS, *CARDS, NOTE_CARD)]
    out += [d.isoformat().encode() for d in BORN]
    # the binary wire form of the dates (int32 days since 2000-01-01)
    out += [struct.pack("!i", (d - dt.date(2000, 1, 1)).days) for d in BORN]
    return out


@pytest.fixture(scope="module")
def mask_db() -> Iterator[str]:
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(_admin_dsn(DB), autocommit=True) as c:
        for sql in SCHEMA:
            c.execute(sql)
        for i, (email, ssn, card, born) in enumerate(zip(EMAILS, SSNS, CARDS, BORN), start=1):
            c.execute("INSERT INTO customers VALUES (%s, %s, %s, %s, %s, %s)", (i, f"name{i}", email, ssn, card, born))
        c.execute("INSERT INTO orders VALUES (1, 1, 10.50, %s), (2, 2, 20.00, 'no pii here')", (f"paid with {NOTE_CARD} yesterday",))
    yield DB
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


@pytest.fixture(scope="module")
def masking_gateway(mask_db: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    gw = GatewayProcess(
        targets=[target("shop", f"postgresql://postgres@127.0.0.1:5432/{mask_db}?sslmode=disable", "staging")],
        identities=[
            {"name": "ana", "secret": SECRETS["ana"], "groups": ["analysts"]},
            {"name": "dora", "secret": SECRETS["dora"], "groups": ["dpo"]},
        ],
        extra={"masks": MASKS, "masking": {"hash_key": "test-hash-key"}},
        name="it-masking",
    )
    with gw:
        yield gw


@pytest.fixture(scope="module")
def tap(masking_gateway: GatewayProcess) -> Iterator[Tap]:
    t = Tap(masking_gateway.host, masking_gateway.port)
    yield t
    t.close()


def _dsn(port: int, user: str = "ana") -> str:
    return f"postgresql://{user}:{SECRETS[user]}@127.0.0.1:{port}/shop?sslmode=disable"


# Each query reads a masked value some way; the answer is masked or the statement refused.
CORPUS = [
    "SELECT * FROM customers",
    "SELECT email FROM customers",
    "SELECT email AS e FROM customers",
    "SELECT c.email FROM customers c",
    "SELECT public.customers.email FROM public.customers",
    'SELECT "email" FROM "customers"',
    "SELECT upper(email) FROM customers",
    "SELECT email || '' FROM customers",
    "SELECT concat(email, 'x') FROM customers",
    "SELECT substring(email, 1, 60) FROM customers",
    "SELECT left(email, 100), right(ssn, 100) FROM customers",
    "SELECT email::text FROM customers",
    "SELECT CAST(email AS varchar(200)) FROM customers",
    "SELECT convert_to(email, 'UTF8') FROM customers",
    "SELECT format('%s', email) FROM customers",
    "SELECT regexp_replace(email, 'a', 'a') FROM customers",
    "SELECT translate(ssn, '-', '-') FROM customers",
    "SELECT coalesce(email, '') FROM customers",
    "SELECT CASE WHEN id > 0 THEN email END FROM customers",
    "WITH x AS (SELECT email FROM customers) SELECT * FROM x",
    "WITH a AS (SELECT email AS m FROM customers), b AS (SELECT m FROM a) SELECT m FROM b",
    "SELECT * FROM (SELECT email, ssn FROM customers) t",
    "SELECT t.z FROM (SELECT email FROM customers) AS t(z)",
    "SELECT 'x' UNION SELECT email FROM customers",
    "SELECT name FROM customers UNION ALL SELECT email FROM customers",
    "SELECT (SELECT email FROM customers WHERE id = 1)",
    "SELECT * FROM v_customers",
    "SELECT c.* FROM customers c",
    "SELECT x.e FROM customers c, LATERAL (SELECT c.email AS e) x",
    "SELECT json_build_object('e', email, 's', ssn) FROM customers",
    "SELECT to_jsonb(email) FROM customers",
    "SELECT row_to_json(c) FROM customers c",
    "SELECT c FROM customers c",
    "SELECT c::text FROM customers c",
    "SELECT json_agg(c) FROM customers c",
    "SELECT string_agg(email, ',') FROM customers",
    "SELECT array_agg(email) FROM customers",
    "SELECT max(email), min(ssn) FROM customers",
    "SELECT id FROM customers WHERE email LIKE 'zq7%'",
    "SELECT id FROM customers ORDER BY email",
    "SELECT email, count(*) FROM customers GROUP BY email",
    "SELECT 1 WHERE EXISTS (SELECT 1 FROM customers WHERE email = 'zq7.alice.private@example.com')",
    "SELECT id FROM customers c JOIN orders o ON o.note = c.email",
    "SELECT email::int FROM customers",
    "SELECT 1 / (length(email) - length(email)) FROM customers",
    "SELECT card, born, ssn FROM customers",
    "SELECT date_trunc('day', born), born + 0 FROM customers",
    "SELECT md5(email) FROM customers",
    "SELECT note FROM orders",
    "SELECT o.note, c.name FROM orders o JOIN customers c ON c.id = o.customer_id",
    "SELECT email FROM customers WHERE id IN (SELECT customer_id FROM orders)",
    "SELECT e FROM customers, unnest(ARRAY[email]) AS e",
    "SELECT lag(email) OVER (ORDER BY id) FROM customers",
    "SELECT query_to_xml('select email from customers', true, true, '')",
]


def _leaks(data: bytes) -> list[bytes]:
    return [v for v in forbidden() if v in data]


def _run_psycopg(port: int, sql: str, binary: bool) -> str:
    with psycopg.connect(_dsn(port), autocommit=True) as c:
        try:
            cur = c.cursor(binary=binary)
            cur.execute(sql)
            cur.fetchall()
            return "rows"
        except psycopg.Error as e:
            return f"error: {e.sqlstate}"


def _run_asyncpg(port: int, sql: str) -> str:
    async def main() -> str:
        conn = await asyncpg.connect(_dsn(port), ssl=False)
        try:
            st = await conn.prepare(sql)
            await st.fetch()
            return "rows"
        except asyncpg.PostgresError as e:
            return f"error: {e.sqlstate}"
        finally:
            await conn.close()

    return asyncio.run(main())


@pytest.mark.parametrize("client", ["psycopg-text", "psycopg-binary", "asyncpg"])
@pytest.mark.parametrize("sql", CORPUS)
def test_no_masked_value_reaches_the_client(tap: Tap, sql: str, client: str) -> None:
    tap.reset()
    if client == "asyncpg":
        outcome = _run_asyncpg(tap.port, sql)
    else:
        outcome = _run_psycopg(tap.port, sql, binary=client == "psycopg-binary")
    received = tap.received
    assert received, "the tap saw no traffic"
    assert not _leaks(received), (sql, client, outcome, _leaks(received))


def test_exempt_identity_sees_clear_values(tap: Tap) -> None:
    tap.reset()
    with psycopg.connect(_dsn(tap.port, "dora"), autocommit=True) as c:
        rows = c.execute("SELECT email, ssn, card, born FROM customers ORDER BY id").fetchall()
        assert rows[0] == (EMAILS[0], SSNS[0], CARDS[0], BORN[0])
        assert c.execute("SELECT note FROM orders WHERE id = 1").fetchone() == (f"paid with {NOTE_CARD} yesterday",)
    assert EMAILS[0].encode() in tap.received


def test_masked_values_are_valid_for_their_types_and_stable(tap: Tap) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        rows = c.execute("SELECT id, email, ssn, card, born FROM customers ORDER BY id").fetchall()
        again = c.execute("SELECT card FROM customers ORDER BY id").fetchall()
        brows = c.cursor(binary=True).execute("SELECT id, email, born FROM customers ORDER BY id").fetchall()
    assert rows[0][1] == "z****@example.com"  # email: first letter and the domain
    assert rows[0][2].endswith("99") and "219" not in rows[0][2]  # partial, last 2 kept
    assert [r[3] for r in rows] == [r[0] for r in again]  # keyed hash: a stable pseudonym
    assert rows[0][3] != CARDS[0]
    assert rows[0][4] == dt.date(1980, 1, 1) and isinstance(rows[0][4], dt.date)  # truncated to the year
    assert brows[0] == (1, "z****@example.com", dt.date(1980, 1, 1))  # binary format: same values


def test_content_classifiers_redact_only_values_that_hold_pii(tap: Tap) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        notes = c.execute("SELECT id, note FROM orders ORDER BY id").fetchall()
    assert notes == [(1, "****"), (2, "no pii here")]


def test_refusals_name_the_rule_and_the_session_goes_on(tap: Tap) -> None:
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
            c.execute("SELECT id FROM customers WHERE email LIKE 'zq7%'")
        assert 'masking rule "pii-email"' in str(ei.value)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
            c.execute("SELECT row_to_json(c) FROM customers c")
        assert "masking" in str(ei.value)
        with pytest.raises(psycopg.Error):
            with c.cursor().copy("COPY customers TO STDOUT") as cp:
                for _ in cp:
                    pass
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (2,)


def test_audit_counts_masked_values_and_never_holds_them(masking_gateway: GatewayProcess, tap: Tap) -> None:
    since = masking_gateway.audit_offset()
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        c.execute("SELECT email, ssn FROM customers").fetchall()
    events = masking_gateway.wait_audit(
        lambda es: any(e.get("event") == "statement.completed" and e.get("masked") for e in es), since=since
    )
    done = [e for e in events if e.get("event") == "statement.completed" and e.get("masked")]
    assert done[-1]["masked"] == {"email (pii-email: email)": 2, "ssn (ssn: partial)": 2}
    # The statement texts clients sent are audited as sent (a client may type a value in a
    # WHERE clause); apart from them, no value from the database is in the audit trail.
    for event in masking_gateway.audit_events():
        event.pop("sql", None)
        event.pop("fingerprint", None)
        text = json.dumps(event).encode()
        assert not _leaks(text), (event, _leaks(text))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    emails=st.lists(st.emails().filter(lambda e: 8 <= len(e) <= 80), min_size=1, max_size=4),
    ssn_numbers=st.lists(st.integers(100_00_0000, 665_99_9999), min_size=1, max_size=4),
    shape=st.sampled_from(
        [
            "SELECT * FROM pii_random",
            "SELECT email, ssn FROM pii_random",
            "SELECT upper(email) AS u, ssn || '' FROM pii_random",
            "WITH w AS (SELECT * FROM pii_random) SELECT * FROM w",
            "SELECT string_agg(email, ';') FROM pii_random",
        ]
    ),
    binary=st.booleans(),
)
def test_random_pii_never_leaks(tap: Tap, mask_db: str, emails: list[str], ssn_numbers: list[int], shape: str, binary: bool) -> None:
    ssns = [f"{n // 1000000:03d}-{n // 10000 % 100:02d}-{n % 10000:04d}" for n in ssn_numbers]
    with psycopg.connect(_admin_dsn(mask_db), autocommit=True) as d:
        d.execute("TRUNCATE pii_random")
        for email, ssn in zip(emails, ssns + ssns[:1] * len(emails)):
            d.execute("INSERT INTO pii_random (email, ssn) VALUES (%s, %s)", (email, ssn))
    tap.reset()
    _run_psycopg(tap.port, shape, binary)
    received = tap.received
    for value in emails:
        assert value.encode() not in received, (shape, value)
    for value in ssns:
        assert value.encode() not in received, (shape, value)


def test_catalogue_is_read_again_after_ddl(tap: Tap, mask_db: str) -> None:
    """`SELECT *` is expanded from the schema catalogue: after a column is added through the
    gateway, the next statement sees it (a stale catalogue would be doubt: every column masked)."""
    with psycopg.connect(_dsn(tap.port, "dora"), autocommit=True) as d:  # exempt, but DDL refreshes for all
        d.execute("CREATE TABLE ddl_probe (id int PRIMARY KEY, label text)")
        d.execute("INSERT INTO ddl_probe VALUES (1, 'plain')")
    try:
        with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
            assert c.execute("SELECT * FROM ddl_probe").fetchall() == [(1, "plain")]
            c.execute("ALTER TABLE ddl_probe ADD COLUMN ssn text DEFAULT '219-09-9999'")
            rows = c.execute("SELECT * FROM ddl_probe").fetchall()
        assert rows[0][:2] == (1, "plain")  # not redacted: the plan knows the new column list
        assert rows[0][2] != "219-09-9999" and rows[0][2].endswith("99")  # *.ssn masks the new column
    finally:
        with psycopg.connect(_admin_dsn(mask_db), autocommit=True) as d:
            d.execute("DROP TABLE IF EXISTS ddl_probe")


def test_cursors_pipelines_and_sql_level_prepare(tap: Tap) -> None:
    """Rows fetched through a portal in batches (asyncpg cursor), several Executes in one
    psycopg pipeline, and SQL-level PREPARE / EXECUTE and COPY of a query: masked or refused."""
    tap.reset()

    async def cursor_batches() -> list[str]:
        conn = await asyncpg.connect(_dsn(tap.port), ssl=False)
        try:
            async with conn.transaction():
                cur = await conn.cursor("SELECT email FROM customers ORDER BY id")
                return [r["email"] for r in await cur.fetch(1)] + [r["email"] for r in await cur.fetch(5)]
        finally:
            await conn.close()

    assert asyncio.run(cursor_batches()) == ["z****@example.com", "z****@corp-mail.io"]
    with psycopg.connect(_dsn(tap.port), autocommit=True) as c:
        with c.pipeline():
            a = c.execute("SELECT email FROM customers WHERE id = %s", (1,))
            b = c.execute("SELECT name, ssn FROM customers WHERE id = %s", (2,))
            d = c.execute("SELECT card FROM customers WHERE id = %s", (1,))
        assert a.fetchall() == [("z****@example.com",)]
        assert b.fetchone()[1] != SSNS[1]
        assert d.fetchone()[0] != CARDS[0]
        c.execute("PREPARE p AS SELECT email FROM customers ORDER BY id")
        try:
            rows = c.execute("EXECUTE p").fetchall()
        except psycopg.Error:
            rows = []  # refused: its lineage cannot be traced
        assert all(r[0] not in EMAILS for r in rows)
        with pytest.raises(psycopg.Error):
            with c.cursor().copy("COPY (SELECT email FROM customers) TO STDOUT") as cp:
                for _ in cp:
                    pass
        assert c.execute("SELECT 1").fetchone() == (1,)
    assert not _leaks(tap.received), _leaks(tap.received)


def test_masks_in_a_policy_file_follow_a_reload_without_dropping_sessions(mask_db: str) -> None:
    import time as _time

    gw = GatewayProcess(
        targets=[target("shop", f"postgresql://postgres@127.0.0.1:5432/{mask_db}?sslmode=disable", "staging")],
        identities=[{"name": "ana", "secret": SECRETS["ana"], "groups": ["analysts"]}],
        extra={"gateway": {"name": "it-mask-reload", "policy_files": ["policies/*.toml"]}},
    )
    policy = gw.dir / "policies" / "masks.toml"
    policy.parent.mkdir()
    policy.write_text('[[rules]]\nid = "ok"\naction = "allow"\n')
    with gw, psycopg.connect(_dsn(gw.port), autocommit=True, prepare_threshold=None) as c:
        assert c.execute("SELECT email FROM customers WHERE id = 1").fetchone() == (EMAILS[0],)
        _time.sleep(1.1)
        policy.write_text(
            '[[rules]]\nid = "ok"\naction = "allow"\n\n'
            '[[masks]]\nid = "pii-email"\ncolumns = ["customers.email"]\nfunction = "email"\n'
        )
        deadline = _time.monotonic() + 10
        value = EMAILS[0]
        while _time.monotonic() < deadline and value == EMAILS[0]:
            _time.sleep(0.2)
            value = c.execute("SELECT email FROM customers WHERE id = 1").fetchone()[0]
        assert value == "z****@example.com", gw.stderr_text()
