"""Issue 6 on MySQL / MariaDB: masked values never reach the client, whatever the query or client.

As for PostgreSQL (tests/integration/test_masking.py): every connection goes through a TCP tap
that records each byte the client receives; for each query of the evasion corpus and each
client (PyMySQL text protocol, mysql-connector prepared statements = binary protocol, the mariadb
CLI for a few), none of the original values may appear, answered or refused.
"""

from __future__ import annotations

import datetime as dt
import struct
import os
import subprocess
from typing import Iterator

import mysql.connector
import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import VIA
from tests.integration.mysql.conftest import mysql_listener, root_sql
from tests.support.gateway import GatewayProcess, target
from tests.support.tap import Tap

DB = "sqlward_mask_it"
EMAILS = ["zq7.alice.private@example.com", "zq7.bob.hidden@corp-mail.io"]
SSNS = ["219-09-9999", "078-05-1120"]
CARDS = ["4111111111111111", "5500005555555559"]
BORN = ["1980-05-17", "1975-11-02"]
NOTE_CARD = "4012888888881881"
SECRETS = {"ana": "ana-secret", "dora": "dora-secret"}

MASKS = [
    {"id": "pii-email", "columns": ["customers.email"], "function": "email", "exempt_groups": ["dpo"]},
    {"id": "ssn", "columns": ["*.ssn"], "function": "partial", "keep_last": 2, "exempt_groups": ["dpo"]},
    {"id": "card", "columns": ["customers.card"], "function": "hash", "exempt_groups": ["dpo"]},
    {"id": "born", "columns": ["customers.born"], "function": "truncate_date", "truncate": "year", "exempt_groups": ["dpo"]},
    {"id": "random-email", "columns": ["pii_random.email"], "function": "redact", "exempt_groups": ["dpo"]},
    {"id": "content", "classifiers": ["card", "email", "ssn"], "function": "redact", "exempt_groups": ["dpo"]},
]


def forbidden() -> list[bytes]:
    return [v.encode() for v in (*EMAILS, *SSNS, *CARDS, NOTE_CARD, *BORN)]


def _leaks(data: bytes) -> list[bytes]:
    return [v for v in forbidden() if v in data]


@pytest.fixture(scope="module")
def mask_db() -> Iterator[str]:
    root_sql(
        f"DROP DATABASE IF EXISTS {DB}",
        f"CREATE DATABASE {DB}",
        f"CREATE TABLE {DB}.customers (id INT PRIMARY KEY, name VARCHAR(50), email VARCHAR(100), ssn VARCHAR(20), "
        "card VARCHAR(30), born DATE)",
        f"CREATE TABLE {DB}.orders (id INT PRIMARY KEY, customer_id INT, total DECIMAL(10,2), note TEXT)",
        f"CREATE VIEW {DB}.v_customers AS SELECT id, email AS contact FROM {DB}.customers",
        f"CREATE TABLE {DB}.pii_random (id INT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(200), ssn VARCHAR(20))",
        *(
            f"INSERT INTO {DB}.customers VALUES ({i}, 'name{i}', '{e}', '{s}', '{c}', '{b}')"
            for i, (e, s, c, b) in enumerate(zip(EMAILS, SSNS, CARDS, BORN), start=1)
        ),
        f"INSERT INTO {DB}.orders VALUES (1, 1, 10.50, 'paid with {NOTE_CARD} yesterday'), (2, 2, 20.00, 'no pii here')",
    )
    yield DB
    root_sql(f"DROP DATABASE IF EXISTS {DB}")


@pytest.fixture(scope="module")
def masking_gateway(mask_db: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    t = target(DB, f"mysql://root@127.0.0.1:3306/{mask_db}?sslmode=disable", "staging", protocol="mysql")
    gw = GatewayProcess(
        targets=[t],
        identities=[
            {"name": "ana", "secret": SECRETS["ana"], "groups": ["analysts"]},
            {"name": "dora", "secret": SECRETS["dora"], "groups": ["dpo"]},
        ],
        listener=mysql_listener(),
        extra={"masks": MASKS, "masking": {"hash_key": "test-hash-key"}},
        name="it-masking-mysql",
    )
    with gw:
        yield gw


@pytest.fixture(scope="module")
def tap(masking_gateway: GatewayProcess) -> Iterator[Tap]:
    t = Tap(masking_gateway.host, masking_gateway.port)
    yield t
    t.close()


CORPUS = [
    "SELECT * FROM customers",
    "SELECT email FROM customers",
    "SELECT email AS e FROM customers",
    "SELECT c.email FROM customers c",
    f"SELECT {DB}.customers.email FROM {DB}.customers",
    "SELECT `email` FROM `customers`",
    "SELECT UPPER(email) FROM customers",
    "SELECT CONCAT(email, '') FROM customers",
    "SELECT CONCAT_WS(',', name, email) FROM customers",
    "SELECT SUBSTRING(email, 1, 60) FROM customers",
    "SELECT LEFT(email, 100), RIGHT(ssn, 100) FROM customers",
    "SELECT CAST(email AS CHAR(200)) FROM customers",
    "SELECT CONVERT(email USING utf8mb4) FROM customers",
    "SELECT HEX(email) FROM customers",
    "SELECT REPLACE(email, 'a', 'a') FROM customers",
    "SELECT COALESCE(email, '') FROM customers",
    "SELECT IFNULL(ssn, '') FROM customers",
    "SELECT CASE WHEN id > 0 THEN email END FROM customers",
    "WITH x AS (SELECT email FROM customers) SELECT * FROM x",
    "SELECT * FROM (SELECT email, ssn FROM customers) t",
    "SELECT 'x' UNION SELECT email FROM customers",
    "SELECT name FROM customers UNION ALL SELECT email FROM customers",
    "SELECT (SELECT email FROM customers WHERE id = 1)",
    "SELECT * FROM v_customers",
    "SELECT c.* FROM customers c",
    "SELECT JSON_OBJECT('e', email, 's', ssn) FROM customers",
    "SELECT JSON_ARRAYAGG(email) FROM customers",
    "SELECT GROUP_CONCAT(email) FROM customers",
    "SELECT GROUP_CONCAT(email SEPARATOR ';') FROM customers",
    "SELECT MAX(email), MIN(ssn) FROM customers",
    "SELECT id FROM customers WHERE email LIKE 'zq7%'",
    "SELECT id FROM customers ORDER BY email",
    "SELECT email, COUNT(*) FROM customers GROUP BY email",
    "SELECT 1 FROM DUAL WHERE EXISTS (SELECT 1 FROM customers WHERE email = 'zq7.alice.private@example.com')",
    "SELECT c.id FROM customers c JOIN orders o ON o.note = c.email",
    "SELECT @v := email FROM customers",
    "SELECT email INTO @v FROM customers LIMIT 1",
    "SELECT CAST(email AS SIGNED) FROM customers",
    "SELECT card, born, ssn FROM customers",
    "SELECT YEAR(born), DATE_FORMAT(born, '%Y-%m-%d') FROM customers",
    "SELECT MD5(email) FROM customers",
    "SELECT note FROM orders",
    "SELECT o.note, c.name FROM orders o JOIN customers c ON c.id = o.customer_id",
    "SELECT email FROM customers WHERE id IN (SELECT customer_id FROM orders)",
    "SELECT LAG(email) OVER (ORDER BY id) FROM customers",
    "SELECT 1 /*!, (SELECT email FROM customers LIMIT 1) */",
]


def _kw(port: int, user: str = "ana") -> dict:
    return {"host": "127.0.0.1", "port": port, "user": user, "password": SECRETS[user], "database": DB}


def _run_pymysql(port: int, sql: str) -> str:
    conn = pymysql.connect(ssl_disabled=True, **_kw(port))
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            cur.fetchall()
        return "rows"
    except pymysql.MySQLError as e:
        return f"error: {e.args[0]}"
    finally:
        conn.close()


def _run_connector_prepared(port: int, sql: str) -> str:
    conn = mysql.connector.connect(ssl_disabled=True, use_pure=True, **_kw(port))
    try:
        cur = conn.cursor(prepared=True)
        cur.execute(sql)
        cur.fetchall()
        return "rows"
    except mysql.connector.Error as e:
        return f"error: {e.errno}"
    finally:
        conn.close()


@pytest.mark.parametrize("client", ["pymysql", "connector-prepared"])
@pytest.mark.parametrize("sql", CORPUS)
def test_no_masked_value_reaches_the_client(tap: Tap, sql: str, client: str) -> None:
    tap.reset()
    outcome = _run_pymysql(tap.port, sql) if client == "pymysql" else _run_connector_prepared(tap.port, sql)
    received = tap.received
    assert received, "the tap saw no traffic"
    assert not _leaks(received), (sql, client, outcome, _leaks(received))


@pytest.mark.parametrize(
    "sql", ["SELECT * FROM customers", "SELECT GROUP_CONCAT(email) FROM customers", "SELECT note FROM orders"]
)
def test_the_mariadb_cli_gets_masked_values(tap: Tap, sql: str) -> None:
    tap.reset()
    out = subprocess.run(
        ["mariadb", "-h", "127.0.0.1", "-P", str(tap.port), "-u", "ana", "--skip-ssl", DB, "-e", sql],
        capture_output=True, text=True, env={**os.environ, "MYSQL_PWD": SECRETS["ana"]}, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert not _leaks(tap.received) and not _leaks(out.stdout.encode())


def test_exempt_identity_sees_clear_values(tap: Tap) -> None:
    conn = pymysql.connect(ssl_disabled=True, **_kw(tap.port, "dora"))
    with conn.cursor() as cur:
        cur.execute("SELECT email, ssn, card, born FROM customers ORDER BY id")
        assert cur.fetchone() == (EMAILS[0], SSNS[0], CARDS[0], dt.date(1980, 5, 17))
    conn.close()


def test_masked_values_are_valid_and_stable_in_both_protocols(tap: Tap) -> None:
    conn = pymysql.connect(ssl_disabled=True, **_kw(tap.port))
    with conn.cursor() as cur:
        cur.execute("SELECT id, email, ssn, card, born FROM customers ORDER BY id")
        text_rows = cur.fetchall()
        cur.execute("SELECT id, note FROM orders ORDER BY id")
        notes = cur.fetchall()
    conn.close()
    m = mysql.connector.connect(ssl_disabled=True, use_pure=True, **_kw(tap.port))
    cur = m.cursor(prepared=True)
    cur.execute("SELECT id, email, ssn, card, born FROM customers WHERE id >= ? ORDER BY id", (1,))
    binary_rows = cur.fetchall()
    m.close()
    assert text_rows[0][1] == "z****@example.com"
    assert text_rows[0][2].endswith("99") and "219" not in text_rows[0][2]
    assert text_rows[0][4] == dt.date(1980, 1, 1)
    assert [tuple(r) for r in binary_rows] == [tuple(r) for r in text_rows]  # same masks, both protocols
    assert notes == ((1, "****"), (2, "no pii here"))


def test_refusal_names_the_rule(tap: Tap) -> None:
    conn = pymysql.connect(ssl_disabled=True, **_kw(tap.port))
    with conn.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute("SELECT id FROM customers WHERE email LIKE 'zq7%'")
        assert 'masking rule "pii-email"' in str(ei.value)
        cur.execute("SELECT COUNT(*) FROM customers")
        assert cur.fetchone() == (2,)
    conn.close()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    emails=st.lists(st.emails().filter(lambda e: 8 <= len(e) <= 80 and "'" not in e and "\\" not in e), min_size=1, max_size=4),
    shape=st.sampled_from(
        ["SELECT * FROM pii_random", "SELECT UPPER(email) FROM pii_random", "SELECT GROUP_CONCAT(email) FROM pii_random"]
    ),
    prepared=st.booleans(),
)
def test_random_pii_never_leaks(tap: Tap, mask_db: str, emails: list[str], shape: str, prepared: bool) -> None:
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=mask_db, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM pii_random")
        for email in emails:
            cur.execute("INSERT INTO pii_random (email, ssn) VALUES (%s, %s)", (email, "219-09-9999"))
    conn.close()
    tap.reset()
    (_run_connector_prepared if prepared else _run_pymysql)(tap.port, shape)
    for value in emails:
        assert value.encode() not in tap.received, (shape, value)


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_server_side_cursor_rows_are_masked(tap: Tap, deprecate_eof: bool) -> None:
    """COM_STMT_EXECUTE with a read-only cursor returns only the metadata; the rows come by
    COM_STMT_FETCH, and are masked with the plan of the statement that opened the cursor."""
    from tests.support import mywire

    caps = mywire.DEFAULT_CAPABILITIES | mywire.CLIENT_DEPRECATE_EOF
    if not deprecate_eof:
        caps &= ~mywire.CLIENT_DEPRECATE_EOF
    tap.reset()
    with mywire.RawMySQL.open("127.0.0.1", tap.port) as c:
        c.read_handshake()
        c.login("ana", SECRETS["ana"], DB, capabilities=caps)
        st = c.stmt_prepare("SELECT id, email, ssn FROM customers ORDER BY id")
        c.command(0x17, struct.pack("<IBI", st.stmt_id, 0x01, 1))  # CURSOR_TYPE_READ_ONLY
        n = mywire.Buf(c.read_packet()).lenenc()
        cols = c._read_columns(n)
        if deprecate_eof:  # the metadata ends with an OK (0xFE) carrying SERVER_STATUS_CURSOR_EXISTS
            assert c.read_packet()[:1] == b"\xfe"
        fetched: list = []
        for _ in range(3):
            c.command(0x1C, struct.pack("<II", st.stmt_id, 1))  # COM_STMT_FETCH, one row
            rows, _ = c._read_rows(cols, binary=True)
            fetched += rows
        c.stmt_close(st)
        assert c.scalar("SELECT 7") == 7  # the session goes on
    assert [r[0] for r in fetched] == [1, 2]
    assert [r[1] for r in fetched] == ["z****@example.com", "z****@corp-mail.io"]
    assert not _leaks(tap.received), _leaks(tap.received)
