"""Issue 11 on MariaDB: the attacker's corpus. No byte of a masked value reaches the client through
messages (warnings, errors, diagnostics), comparisons outside WHERE, user variables, objects the
session creates or a moved current database; and a rule on a table holds however the session
moves its current database.

One gateway for the module (a mysql listener), upstream root on the system MariaDB:

    sqlward_evasion_my.customers         id, name, email, ssn, pin  (masked: sqlward_evasion_my.customers.email,
                                         *.ssn, sqlward_evasion_my.customers.pin)
    sqlward_evasion_my_vault.customers   a harmless decoy of the same shape
    sqlward_evasion_my_vault.secrets     the vault marker (rule no-vault-secrets)

Targets: `shop` (database sqlward_evasion_my) and `side` (database sqlward_evasion_my_vault).
Identities: ana (under masking) and dora (group dpo, exempt from the masks: only the rule
protects the vault from her).

Every client connection goes through a `Tap` that records every byte the client receives; the
tests assert on those bytes for PyMySQL, mysql-connector (prepared statements, pure Python) and
the mariadb CLI with --show-warnings. Yes / no probes: the client must not tell the true guess
from a wrong one (both refused with errno 1227, or byte-identical answers).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from tests.integration.conftest import VIA
from tests.integration.mysql.conftest import mysql_listener, root_sql
from tests.support.evasion import exclusive, MY_CLIENTS, MY_REFUSED, MySession, leaks, run_my, run_my_probe_pair
from tests.support.gateway import GatewayProcess, target
from tests.support.tap import Tap

DB = "sqlward_evasion_my"
VDB = "sqlward_evasion_my_vault"
SECRETS = {"ana": "ana-secret", "dora": "dora-secret"}
EMAILS = ["zq7.alice.private@example.com", "zq7.bob.hidden@corp-mail.io"]
SSNS = ["219-09-9999", "078-05-1120"]
PINS = [1589831593, 1589831594]
WRONG_EMAIL = "zq7.nobody.wrong@example.com"
VAULT_MARKER = "MYVAULT-MARKER-5d1e77"


def masked_secrets() -> list[bytes]:
    out = [v.encode() for v in (*EMAILS, *SSNS)]
    for p in PINS:
        out += [str(p).encode(), p.to_bytes(8, "little")]
    # parts of a value: server messages cut long values (XPATH errors keep about 32 characters)
    out += [b"alice.private", b"bob.hidden"]
    # the hex of an email (HEX(email), a warning quoting a binary string)
    out += [EMAILS[0].encode().hex().encode(), EMAILS[0].encode().hex().upper().encode()]
    return out


VAULT_SECRETS = [VAULT_MARKER.encode()]

MASKS = [
    {"id": "pii-email", "columns": [f"{DB}.customers.email"], "function": "email", "exempt_groups": ["dpo"]},
    {"id": "ssn", "columns": ["*.ssn"], "function": "partial", "keep_last": 2, "exempt_groups": ["dpo"]},
    {"id": "pin", "columns": [f"{DB}.customers.pin"], "function": "redact", "exempt_groups": ["dpo"]},
]
RULES = [{"id": "no-vault-secrets", "tables": [f"{VDB}.secrets"], "action": "deny"}]


def _drop() -> None:
    root_sql(f"DROP DATABASE IF EXISTS {DB}", f"DROP DATABASE IF EXISTS {VDB}")


@pytest.fixture(scope="module")
def evasion_my_db() -> Iterator[str]:
    with exclusive('sqlward_evasion_my'):
        _drop()
        root_sql(
            f"CREATE DATABASE {DB} CHARACTER SET utf8mb4",
            f"CREATE DATABASE {VDB} CHARACTER SET utf8mb4",
            f"CREATE TABLE {DB}.customers (id INT PRIMARY KEY, name VARCHAR(50), email VARCHAR(100), ssn VARCHAR(20), pin BIGINT)",
            *(
                f"INSERT INTO {DB}.customers VALUES ({i}, 'name{i}', '{e}', '{s}', {p})"
                for i, (e, s, p) in enumerate(zip(EMAILS, SSNS, PINS), start=1)
            ),
            f"CREATE TABLE {DB}.orders (id INT PRIMARY KEY, customer_id INT, total DECIMAL(10,2))",
            f"INSERT INTO {DB}.orders VALUES (1, 1, 10.50), (2, 2, 20.00)",
            f"CREATE TABLE {VDB}.customers (id INT PRIMARY KEY, name VARCHAR(50), email VARCHAR(100), ssn VARCHAR(20), pin BIGINT)",
            f"INSERT INTO {VDB}.customers VALUES (1, 'decoy', 'decoy@example.org', '000-00-0000', 7)",
            f"CREATE TABLE {VDB}.secrets (id INT PRIMARY KEY, secret VARCHAR(100))",
            f"INSERT INTO {VDB}.secrets VALUES (1, '{VAULT_MARKER}')",
        )
        yield DB
        _drop()


@pytest.fixture(scope="module")
def evasion_my_gateway(evasion_my_db: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    gw = GatewayProcess(
        targets=[
            target("shop", f"mysql://root@127.0.0.1:3306/{DB}?sslmode=disable", "staging", protocol="mysql"),
            target("side", f"mysql://root@127.0.0.1:3306/{VDB}?sslmode=disable", "staging", protocol="mysql"),
        ],
        identities=[
            {"name": "ana", "secret": SECRETS["ana"], "groups": ["analysts"]},
            {"name": "dora", "secret": SECRETS["dora"], "groups": ["dpo"]},
        ],
        rules=RULES,
        listener=mysql_listener(),
        extra={"masks": MASKS, "masking": {"hash_key": "evasion-hash-key"}},
        name="it-evasion-my",
    )
    with gw:
        yield gw


@pytest.fixture(scope="module")
def tap(evasion_my_gateway: GatewayProcess) -> Iterator[Tap]:
    t = Tap(evasion_my_gateway.host, evasion_my_gateway.port)
    yield t
    t.close()


def _sess(tap: Tap, user: str, target_name: str = "shop") -> MySession:
    return MySession(tap.port, user, SECRETS[user], target_name)


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@dataclass
class Attack:
    name: str
    steps: list[str]
    target: str = "shop"
    clients: tuple[str, ...] = MY_CLIENTS
    cleanup: list[str] = field(default_factory=list)


EVERYTHING = "CONCAT(email, ' ', ssn, ' ', pin)"
READS = [
    "SELECT UPPER(email), LOWER(ssn), pin + 0 FROM customers",
    f"SELECT GROUP_CONCAT({EVERYTHING}) FROM customers",
    "SELECT CONCAT(email, ''), CAST(ssn AS CHAR(40)), CAST(pin AS CHAR) FROM customers",
    "SELECT HEX(email) FROM customers",
]
NO_CLI = ("pymysql", "connector-prepared")

MASK_ATTACKS: list[Attack] = [
    # -- messages: warnings, errors and diagnostics that repeat the value
    Attack("warn-cast-signed", ["SELECT CAST(email AS SIGNED) FROM customers", "SHOW WARNINGS"]),
    Attack("warn-cast-decimal", ["SELECT CAST(ssn AS DECIMAL(10,2)) FROM customers", "SHOW WARNINGS"]),
    Attack("warn-convert", ["SELECT CONVERT(email, DOUBLE) FROM customers", "SHOW WARNINGS LIMIT 5"]),
    Attack("warn-cast-date", ["SELECT CAST(email AS DATE), CAST(ssn AS DATETIME) FROM customers", "SHOW WARNINGS"]),
    Attack("warn-arithmetic", ["SELECT email + 0, ssn * 1 FROM customers", "SHOW WARNINGS"]),
    Attack("warn-show-errors", ["SELECT CAST(email AS SIGNED) FROM customers", "SHOW ERRORS", "SHOW WARNINGS"]),
    Attack("warn-multi-statement", ["SELECT CAST(email AS SIGNED) FROM customers; SHOW WARNINGS"], clients=("pymysql",)),
    Attack("warn-get-diagnostics", ["SELECT CAST(email AS SIGNED) FROM customers",
                                    "GET DIAGNOSTICS CONDITION 1 @ev_m = MESSAGE_TEXT", "SELECT @ev_m"]),
    Attack("warn-get-diagnostics-number", ["SELECT CAST(ssn AS SIGNED), CAST(email AS SIGNED) FROM customers",
                                           "GET DIAGNOSTICS @ev_n = NUMBER",
                                           "GET DIAGNOSTICS CONDITION 2 @ev_m = MESSAGE_TEXT", "SELECT @ev_n, @ev_m"]),
    Attack("error-extractvalue", ["SELECT EXTRACTVALUE('<a/>', CONCAT('~', email)) FROM customers", "SHOW ERRORS",
                                  "SHOW WARNINGS"]),
    Attack("error-updatexml", ["SELECT UPDATEXML('<a/>', CONCAT('/~', email), '1') FROM customers", "SHOW WARNINGS"]),
    Attack("warn-after-use", ["USE sqlward_evasion_my", "SELECT CAST(email AS SIGNED) FROM customers", "SHOW WARNINGS"],
           target="side"),
    Attack("warn-through-view", ["CREATE VIEW ev_wv_{u} AS SELECT email AS e, ssn AS s FROM customers",
                                 "SELECT CAST(e AS SIGNED), CAST(s AS SIGNED) FROM ev_wv_{u}", "SHOW WARNINGS"]),
    # -- reads that bypass SELECT, and statistics of the values
    Attack("handler-read", ["HANDLER customers OPEN", "HANDLER customers READ FIRST", "HANDLER customers READ NEXT",
                            "HANDLER customers CLOSE"]),
    Attack("procedure-analyse", ["SELECT email, ssn, pin FROM customers PROCEDURE ANALYSE()"]),
    Attack("column-stats", ["ANALYZE TABLE customers PERSISTENT FOR ALL",
                            f"SELECT column_name, min_value, max_value FROM mysql.column_stats WHERE db_name = '{DB}'"]),
    # -- the current database moved to the masked one
    Attack("use-then-bare-name", ["USE sqlward_evasion_my", *READS], target="side"),
    Attack("com-init-db-then-bare-name", ["!init_db sqlward_evasion_my", *READS], target="side"),
    Attack("use-in-multi-statement", ["USE sqlward_evasion_my; SELECT UPPER(email), HEX(email) FROM customers"],
           target="side", clients=("pymysql",)),
    Attack("change-user-then-bare-name", ["USE sqlward_evasion_my", "!change_user ana side", *READS], target="side",
           clients=("connector-prepared",)),
    Attack("reset-connection-then-bare-name", ["USE sqlward_evasion_my", "!reset_connection", *READS], target="side",
           clients=NO_CLI),
    # -- user variables
    Attack("uservar-set-subquery", ["SET @ev_v = (SELECT email FROM customers WHERE id = 1)", "SELECT @ev_v"]),
    Attack("uservar-set-agg", [f"SET @ev_v := (SELECT GROUP_CONCAT({EVERYTHING}) FROM customers)", "SELECT @ev_v"]),
    Attack("uservar-assign-in-select", ["SELECT @ev_v := email FROM customers", "SELECT @ev_v"]),
    Attack("uservar-select-into", ["SELECT email, ssn INTO @ev_a, @ev_b FROM customers LIMIT 1", "SELECT @ev_a, @ev_b"]),
    Attack("uservar-after-use", ["USE sqlward_evasion_my", "SET @ev_v = (SELECT HEX(email) FROM customers WHERE id = 1)",
                                 "SELECT @ev_v", "SELECT UNHEX(@ev_v)"], target="side"),
    # -- objects the session creates
    Attack("obj-view", ["CREATE VIEW ev_v_{u} AS SELECT email AS e, ssn AS s, pin AS p FROM customers",
                        "SELECT CONCAT(e, ' ', s, ' ', p) FROM ev_v_{u}", "SELECT * FROM ev_v_{u}"]),
    Attack("obj-view-of-expressions", [f"CREATE VIEW ev_v2_{{u}} AS SELECT {EVERYTHING} AS x FROM customers",
                                       "SELECT * FROM ev_v2_{u}"]),
    Attack("obj-function", [f"CREATE FUNCTION ev_f_{{u}}() RETURNS TEXT READS SQL DATA RETURN (SELECT GROUP_CONCAT({EVERYTHING}) "
                            "FROM customers)", "SELECT ev_f_{u}()"]),
    Attack("obj-function-arg", ["CREATE FUNCTION ev_g_{u}(i INT) RETURNS TEXT READS SQL DATA "
                                "RETURN (SELECT email FROM customers WHERE id = i)", "SELECT ev_g_{u}(1)"]),
    Attack("obj-procedure", ["CREATE PROCEDURE ev_p_{u}() SELECT email, ssn, pin FROM customers", "CALL ev_p_{u}()"]),
    Attack("obj-procedure-signal", [
        "CREATE PROCEDURE ev_s_{u}() BEGIN DECLARE v TEXT; SELECT GROUP_CONCAT(email) INTO v FROM customers; "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = v; END",
        "CALL ev_s_{u}()", "SHOW ERRORS",
    ]),
    Attack("obj-procedure-out-param", [
        "CREATE PROCEDURE ev_o_{u}(OUT v TEXT) SELECT GROUP_CONCAT(email) INTO v FROM customers",
        "CALL ev_o_{u}(@ev_out)", "SELECT @ev_out",
    ]),
    Attack("obj-table-insert-select", ["CREATE TABLE ev_t_{u} (e VARCHAR(200), s VARCHAR(40))",
                                       "INSERT INTO ev_t_{u} SELECT email, ssn FROM customers", "SELECT * FROM ev_t_{u}"]),
    Attack("obj-temporary-table-as", ["CREATE TEMPORARY TABLE ev_tt AS SELECT * FROM customers", "SELECT * FROM ev_tt"]),
]


def _steps(steps: list[str]) -> list[str]:
    u = uuid.uuid4().hex[:8]
    return [s.replace("{u}", u) for s in steps]


MASK_CASES = [pytest.param(a, c, id=f"{a.name}-{c}") for a in MASK_ATTACKS for c in a.clients]


@pytest.mark.parametrize(("attack", "client"), MASK_CASES)
def test_no_masked_byte_reaches_the_client(tap: Tap, attack: Attack, client: str) -> None:
    tap.reset()
    steps = _steps(attack.steps)
    outcomes = run_my(client, _sess(tap, "ana", attack.target), steps)
    received = tap.received
    assert received, "the tap saw no traffic"
    found = leaks(received, masked_secrets())
    assert not found, (attack.name, client, list(zip(steps, outcomes)), found)


# -- yes / no probes ---------------------------------------------------------------------------


@dataclass
class Probe:
    name: str
    sql: str
    setup: list[str] = field(default_factory=list)
    target: str = "shop"
    true_value: str = EMAILS[0]
    wrong_value: str = WRONG_EMAIL


PAIR = "(SELECT 'a' AS k, email AS e FROM customers WHERE id = 1 UNION ALL SELECT 'b', {g}) x"
PROBES = [
    Probe("intersect-count", "SELECT COUNT(*) FROM (SELECT email FROM customers INTERSECT SELECT {g}) x"),
    Probe("intersect-rows", "SELECT email FROM customers INTERSECT SELECT {g}"),
    Probe("except-count", "SELECT COUNT(*) FROM (SELECT {g} EXCEPT SELECT email FROM customers) x"),
    Probe("except-rows", "SELECT ssn FROM customers EXCEPT SELECT {g}", true_value=SSNS[0], wrong_value="123-45-6789"),
    Probe("union-count", "SELECT COUNT(*) FROM (SELECT email FROM customers UNION SELECT {g}) x"),
    Probe("distinct-across-sources", "SELECT COUNT(DISTINCT e) FROM (SELECT email AS e FROM customers UNION ALL SELECT {g}) x"),
    Probe("if-sum", "SELECT SUM(IF(email = {g}, 1, 0)) FROM customers"),
    Probe("if-per-row", "SELECT id, IF(email = {g}, 'yes', 'no') AS hit FROM customers ORDER BY id"),
    Probe("case-sum", "SELECT SUM(CASE WHEN email = {g} THEN 1 ELSE 0 END) FROM customers"),
    Probe("nullif-count", "SELECT COUNT(NULLIF(email, {g})) FROM customers"),
    Probe("nullif-is-null", "SELECT id, NULLIF(email, {g}) IS NULL AS hit FROM customers ORDER BY id"),
    Probe("natural-join", "SELECT COUNT(*) FROM customers NATURAL JOIN (SELECT {g} AS email) g"),
    Probe("using-join", "SELECT COUNT(*) FROM customers JOIN (SELECT {g} AS email) g USING (email)"),
    Probe("window-order-by", f"SELECT k, RANK() OVER (ORDER BY e) FROM {PAIR} ORDER BY k"),
    Probe("bare-name-after-use", "SELECT COUNT(*) FROM customers WHERE email = {g}", setup=["USE sqlward_evasion_my"],
          target="side"),
    Probe("uservar-compare", "SELECT @ev_v = {g}", setup=["SET @ev_v = (SELECT email FROM customers WHERE id = 1)"]),
]


@pytest.mark.parametrize("client", MY_CLIENTS)
@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_yes_no_probe_is_not_answered(tap: Tap, probe: Probe, client: str) -> None:
    r = run_my_probe_pair(
        client, _sess(tap, "ana", probe.target), tap, probe.setup,
        probe.sql.replace("{g}", _lit(probe.true_value)), probe.sql.replace("{g}", _lit(probe.wrong_value)),
    )
    assert not leaks(r.received, masked_secrets()), (probe.name, client, leaks(r.received, masked_secrets()))
    assert r.indistinguishable(MY_REFUSED), (probe.name, client, r.explain())


TIMING_PROBES = [
    "SELECT IF(email = {g}, SLEEP(0.8), 0) FROM customers WHERE id = 1",
    "SELECT SUM(IF(email = {g}, SLEEP(0.8), 0)) FROM customers",
    "SELECT CASE WHEN email = {g} THEN SLEEP(0.8) ELSE 0 END FROM customers",
]


@pytest.mark.parametrize("sql", TIMING_PROBES)
def test_timing_probe_is_refused_or_tells_nothing(tap: Tap, sql: str) -> None:
    r = run_my_probe_pair("pymysql", _sess(tap, "ana"), tap, [],
                          sql.replace("{g}", _lit(EMAILS[0])), sql.replace("{g}", _lit(WRONG_EMAIL)))
    if r.true_outcome == MY_REFUSED and r.false_outcome == MY_REFUSED:
        return
    t_true, t_false = r.timings[1], r.timings[3]
    assert abs(t_true - t_false) < 0.4, (sql, r.true_outcome, r.false_outcome, t_true, t_false)
    assert r.indistinguishable(MY_REFUSED), r.explain()


# -- the table rule however the current database moves ------------------------------------------

VAULT_READS = ["SELECT * FROM secrets", "SELECT secret FROM secrets WHERE id = 1", "SELECT CONCAT(secret, '') FROM secrets"]
VAULT_ATTACKS: list[Attack] = [
    Attack("use", [f"USE {VDB}", *VAULT_READS]),
    Attack("use-backquoted", [f"USE `{VDB}`", *VAULT_READS]),
    Attack("com-init-db", [f"!init_db {VDB}", *VAULT_READS]),
    Attack("use-in-executable-comment", [f"/*!00000 USE {VDB} */", *VAULT_READS], clients=NO_CLI),
    Attack("handler-on-vault", [f"HANDLER {VDB}.secrets OPEN AS h", "HANDLER h READ FIRST", "HANDLER h CLOSE"]),
    Attack("handler-after-use", [f"USE {VDB}", "HANDLER secrets OPEN", "HANDLER secrets READ FIRST", "HANDLER secrets CLOSE"]),
    Attack("use-in-multi-statement", [f"USE {VDB}; SELECT * FROM secrets"], clients=("pymysql",)),
    Attack("use-then-reset-connection", [f"USE {VDB}", "!reset_connection", *VAULT_READS], clients=NO_CLI),
    Attack("use-then-change-user", [f"USE {VDB}", "!change_user dora shop", *VAULT_READS], clients=("connector-prepared",)),
    Attack("change-user-to-side", ["!change_user dora side", *VAULT_READS], clients=("connector-prepared",)),
    Attack("function-reading-vault", ["CREATE FUNCTION ev_vf_{u}() RETURNS TEXT READS SQL DATA "
                                      f"RETURN (SELECT secret FROM {VDB}.secrets LIMIT 1)", "SELECT ev_vf_{u}()"]),
    Attack("function-in-vault-database", [f"CREATE FUNCTION {VDB}.ev_vg_{{u}}() RETURNS TEXT READS SQL DATA "
                                          "RETURN (SELECT secret FROM secrets LIMIT 1)", f"SELECT {VDB}.ev_vg_{{u}}()"]),
    Attack("procedure-in-vault-database", [f"CREATE PROCEDURE {VDB}.ev_vp_{{u}}() SELECT secret FROM secrets",
                                           f"CALL {VDB}.ev_vp_{{u}}()"]),
    Attack("view-made-under-use", [f"USE {VDB}", f"CREATE VIEW {DB}.ev_vv_{{u}} AS SELECT secret FROM secrets",
                                   f"USE {DB}", "SELECT * FROM ev_vv_{u}"]),
    Attack("side-target-bare", VAULT_READS, target="side"),
]
VAULT_CASES = [pytest.param(a, c, id=f"{a.name}-{c}") for a in VAULT_ATTACKS for c in a.clients]


@pytest.mark.parametrize(("attack", "client"), VAULT_CASES)
def test_table_rule_holds_however_the_database_moves(tap: Tap, attack: Attack, client: str) -> None:
    tap.reset()
    steps = _steps(attack.steps)
    outcomes = run_my(client, _sess(tap, "dora", attack.target), steps)
    assert tap.received, "the tap saw no traffic"
    found = leaks(tap.received, VAULT_SECRETS)
    assert not found, (attack.name, client, list(zip(steps, outcomes)), found)


# -- legitimate work still runs -----------------------------------------------------------------


@pytest.mark.parametrize("client", MY_CLIENTS)
def test_legitimate_reads_after_moving_the_database(tap: Tap, client: str) -> None:
    tap.reset()
    steps = [f"USE {VDB}", "SELECT name FROM customers", f"USE {DB}", "SELECT name FROM customers WHERE id = 2"]
    outcomes = run_my(client, _sess(tap, "dora"), steps)
    assert outcomes == ["ok"] * 4, list(zip(steps, outcomes))
    assert b"decoy" in tap.received and b"name2" in tap.received


@pytest.mark.parametrize("client", MY_CLIENTS)
def test_masked_analyst_reads_unmasked_columns_and_masked_output(tap: Tap, client: str) -> None:
    tap.reset()
    steps = [
        "SELECT id, name FROM customers WHERE id = 1",
        "SELECT c.name, o.total FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.id = 2",
        "SELECT email, ssn FROM customers WHERE id = 1",
        "SELECT COUNT(*) FROM customers WHERE name LIKE 'name%'",
    ]
    outcomes = run_my(client, _sess(tap, "ana"), steps)
    assert outcomes == ["ok"] * 4, list(zip(steps, outcomes))
    assert b"name1" in tap.received and b"name2" in tap.received
    assert b"z****@example.com" in tap.received
    assert not leaks(tap.received, masked_secrets())
