"""Privacy in the audit trail on PostgreSQL (psycopg and asyncpg): [[targets]] audit_text and
audit_parameters, and masked values.

One gateway, two targets on the same database: `app` records statements as sent (the default),
`private` has audit_text = "redacted" and audit_parameters = "redacted". A mask rule redacts
one column. The audit file's raw bytes are searched for the literal values, bound values and
masked values: on `private` none of them may appear anywhere in the trail, and a masked value
never appears on either target.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.conftest import IT_DB, _admin_dsn, upstream_dsn
from tests.support.gateway import SECRETS, GatewayProcess, target

EMAIL = "zq8.private.person@example.org"
NUMBER = 7349113
BOUND_EMAIL = "zq8.bound.value@example.net"
BOUND_NUMBER = 8812407
MASKED = "zq8-masked-secret-4111111111111111"


@pytest.fixture(scope="module")
def names(it_database: str) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    t = {"people": f"auditpriv_people_{tag}", "vault": f"auditpriv_vault_{tag}"}
    with psycopg.connect(_admin_dsn(IT_DB), autocommit=True) as c:
        c.execute(f"CREATE TABLE {t['people']} (id int PRIMARY KEY, email text, n bigint)")
        c.execute(f"CREATE TABLE {t['vault']} (id int PRIMARY KEY, secret text)")
        c.execute(f"INSERT INTO {t['vault']} VALUES (1, %s)", (MASKED,))
    yield t
    with psycopg.connect(_admin_dsn(IT_DB), autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {t['people']}, {t['vault']}")


@pytest.fixture(scope="module")
def gw(names: dict[str, str]) -> Iterator[GatewayProcess]:
    with GatewayProcess(
        targets=[
            target("app", upstream_dsn(), "development"),
            target("private", upstream_dsn(), "development", audit_text="redacted", audit_parameters="redacted"),
        ],
        extra={"masks": [{"id": "vault-secret", "columns": [f"{names['vault']}.secret"], "function": "redact"}]},
        name="it-audit-privacy",
    ) as g:
        yield g


def _raw(gw: GatewayProcess) -> bytes:
    return gw.audit_file.read_bytes()


def _events(gw: GatewayProcess, since: int, event: str) -> list[dict[str, Any]]:
    return [e for e in gw.audit_events(since) if e.get("event") == event]


def _absent(gw: GatewayProcess, *values: str | int) -> None:
    raw = _raw(gw)
    for v in values:
        assert str(v).encode() not in raw, f"{v!r} is in the audit file"


def test_redacted_text_keeps_no_literal_of_a_statement(gw: GatewayProcess, names: dict[str, str]) -> None:
    people = names["people"]
    since = gw.audit_offset()
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "private"), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {people} VALUES (1, '{EMAIL}', {NUMBER})")
        assert conn.execute(f"SELECT n FROM {people} WHERE email = '{EMAIL}' AND n > {NUMBER - 1}").fetchall() == [(NUMBER,)]
        conn.execute(f"UPDATE {people} SET email = lower('{EMAIL}') WHERE n = {NUMBER}")
    decided = [e for e in _events(gw, since, "statement.decided") if people in e["sql"]]
    assert len(decided) == 3, decided
    for e in decided:
        assert e["redacted"] is True and "?" in e["sql"], e
    assert decided[0]["sql"].startswith("INSERT INTO") and decided[0]["action"] == "allow"
    _absent(gw, EMAIL, NUMBER, NUMBER - 1, "example.org")


def test_redacted_text_covers_asyncpg_simple_queries(gw: GatewayProcess, names: dict[str, str]) -> None:
    people = names["people"]
    since = gw.audit_offset()

    async def run() -> None:
        conn = await asyncpg.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                     database="private", ssl=False)
        try:
            await conn.execute(f"INSERT INTO {people} VALUES (2, 'zq8.asyncpg.simple@example.org', 5550123)")
        finally:
            await conn.close()

    asyncio.run(run())
    decided = [e for e in _events(gw, since, "statement.decided") if people in e["sql"]]
    assert decided and all(e["redacted"] is True for e in decided)
    _absent(gw, "zq8.asyncpg.simple", 5550123)


@pytest.mark.parametrize("client", ["psycopg-prepared", "asyncpg"])
def test_redacted_parameters_are_recorded_as_question_marks(gw: GatewayProcess, names: dict[str, str], client: str) -> None:
    people = names["people"]
    email, number = f"{client}.{BOUND_EMAIL}", BOUND_NUMBER + (1 if client == "asyncpg" else 0)
    since = gw.audit_offset()
    if client == "psycopg-prepared":
        with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "private"), autocommit=True) as conn:
            for _ in range(2):
                rows = conn.execute(f"SELECT id FROM {people} WHERE email = %s OR n = %s", (email, number),
                                    prepare=True).fetchall()
                assert rows == []
    else:
        async def run() -> None:
            conn = await asyncpg.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                         database="private", ssl=False)
            try:
                for _ in range(2):
                    assert await conn.fetch(f"SELECT id FROM {people} WHERE email = $1 OR n = $2", email, number) == []
            finally:
                await conn.close()

        asyncio.run(run())
    executed = [e for e in _events(gw, since, "statement.executed") if e.get("parameters")]
    assert len(executed) >= 2, _events(gw, since, "statement.executed")
    for e in executed:
        assert e["parameters"] == ["?", "?"], e
    _absent(gw, email, number, BOUND_EMAIL)


def test_as_sent_records_the_text_and_the_values_as_sent(gw: GatewayProcess, names: dict[str, str]) -> None:
    people = names["people"]
    email, number = "zq8.as.sent@example.com", 6120345
    since = gw.audit_offset()
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), autocommit=True) as conn:
        conn.execute(f"SELECT id FROM {people} WHERE email = '{email}' AND n = {number}")
        conn.execute(f"SELECT id FROM {people} WHERE email = %s AND n = %s", (email, number), prepare=True)

    async def run() -> None:
        conn = await asyncpg.connect(host=gw.host, port=gw.port, user="alice", password=SECRETS["alice"],
                                     database="app", ssl=False)
        try:
            await conn.fetch(f"SELECT id FROM {people} WHERE email = $1 AND n = $2", email, number)
        finally:
            await conn.close()

    asyncio.run(run())
    decided = [e for e in _events(gw, since, "statement.decided") if people in e["sql"]]
    assert any(e["sql"] == f"SELECT id FROM {people} WHERE email = '{email}' AND n = {number}" for e in decided), decided
    assert not any(e.get("redacted") for e in decided)
    executed = [e["parameters"] for e in _events(gw, since, "statement.executed") if e.get("parameters")]
    # Text values as they are; binary ones (asyncpg's, psycopg's numbers) as \x hex.
    emails = (email, "\\x" + email.encode().hex())
    numbers = (str(number), "\\x" + number.to_bytes(4, "big").hex(), "\\x" + number.to_bytes(8, "big").hex())
    assert len(executed) >= 2, executed
    for params in executed:
        assert params[0] in emails and params[1] in numbers, executed


@pytest.mark.parametrize("db", ["app", "private"])
def test_masked_values_never_reach_the_trail(gw: GatewayProcess, names: dict[str, str], db: str) -> None:
    vault = names["vault"]
    since = gw.audit_offset()
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"], db), autocommit=True) as conn:
        (value,) = conn.execute(f"SELECT secret FROM {vault} WHERE id = 1").fetchone()
        assert value != MASKED
        (value,) = conn.execute(f"SELECT secret FROM {vault} WHERE id = %s", (1,), prepare=True).fetchone()
        assert value != MASKED
    done = [e for e in _events(gw, since, "statement.completed") if e.get("masked")]
    assert len(done) >= 2 and all(sum(e["masked"].values()) == 1 for e in done), done
    _absent(gw, MASKED, "4111111111111111")


def test_a_failing_statement_on_a_redacted_target_keeps_its_values_out_of_the_trail(
    gw: GatewayProcess, names: dict[str, str],
) -> None:
    """PostgreSQL's own error text can quote the values (a duplicate key's DETAIL): the trail's
    record of the failure must not carry them on a redacted target."""
    people = names["people"]
    email, number = "zq8.duplicate.key@example.org", 9070001
    since = gw.audit_offset()
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "private"), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {people} VALUES ({number}, '{email}', 1)")
        with pytest.raises(psycopg.errors.UniqueViolation) as caught:
            conn.execute(f"INSERT INTO {people} VALUES ({number}, '{email}', 2)")
        assert str(number) in str(caught.value.diag.message_detail)  # the client sees it
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute(f"SELECT 'x' || CAST('{email}' AS int)")
    failed = [e for e in _events(gw, since, "statement.completed") if e.get("error")]
    assert len(failed) == 2, failed
    _absent(gw, email, number)


def test_no_channel_of_a_redacted_target_carries_a_literal(gw: GatewayProcess, names: dict[str, str]) -> None:
    """The outside review's spellings: text the lexer cannot read (its cache key is the raw
    text: never the recorded fingerprint), a message that is the literal itself (RAISE), a
    value holding a quote inside an error message, a bound parameter quoted by an error."""
    people = names["people"]
    since = gw.audit_offset()
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "private"), autocommit=True) as conn:
        for sql in (
            f"INSERT INTO {people} VALUES (7, 'SSN-078-05-1120', 1); SELECT $x$ unterminated",
            "SELECT 'RAWLEAK' || 'unterminated",
            "DO $$ BEGIN RAISE EXCEPTION 'PGRAISELEAK'; END $$",
            """SELECT CAST('SEC"PGQUOTELEAK' AS int)""",
        ):
            with pytest.raises(psycopg.Error):
                conn.execute(sql)
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT CAST(%s AS int)", ('p"BOUNDLEAK',), prepare=True)
    decided = _events(gw, since, "statement.decided")
    assert decided and all(e["redacted"] for e in decided)
    assert any(e["sql"].startswith("<text not shown") and e["fingerprint"] == "" for e in decided)
    _absent(gw, "SSN-078-05-1120", "RAWLEAK", "PGRAISELEAK", "PGQUOTELEAK", "BOUNDLEAK")
