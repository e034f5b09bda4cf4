"""Issue 11 on PostgreSQL: the attacker's corpus. No bypass of a schema rule through search_path,
and no byte of a masked value reaches the client, whatever door the statement takes.

One gateway for the module, in front of the database `sqlward_evasion_pg` reached as the
dedicated upstream role `sqlward_evasion_up` (so ALTER ROLE / ALTER DATABASE ... SET search_path
can be done by the test's admin connection without touching `postgres`):

    app.customers        id, name, email, ssn, pin   (masked: app.customers.email, *.ssn, app.customers.pin)
    "CrmData".contacts   id, email                   (masked: CrmData.contacts.email)
    public.customers     a harmless decoy of the same shape (what a bare name reads by default)
    public.notes         harmless
    vault.secrets        the vault marker            (rule no-vault: deny vault.*)
    "SecretOps".keys     another marker              (rule no-secretops: deny SecretOps.*)

Identities: ana (group analysts: under masking) and dora (group dpo: exempt from the masks, so
the schema rules alone stand between her and the vault).

Every client connection goes through a `Tap` that records every byte the client receives; the
tests assert on those bytes (answered or refused alike), for psycopg (text and binary), asyncpg
(prepared statements) and psql. A yes / no probe is sent with the true guess and a wrong one on
one session: the client must not tell them apart (both refused with 42501, or byte-identical).
Only observable behaviour is asserted; refusals are told by SQLSTATE 42501 alone.
"""

from __future__ import annotations

import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import psycopg
import pytest

from tests.support import pgwire
from tests.support.evasion import exclusive, PG_CLIENTS, PG_REFUSED, PgSession, leaks, run_pg, run_pg_probe_pair
from tests.support.gateway import GatewayProcess, target
from tests.support.tap import Tap

from .conftest import VIA, _admin_dsn

DB = "sqlward_evasion_pg"
UP_ROLE = "sqlward_evasion_up"
SECRETS = {"ana": "ana-secret", "dora": "dora-secret"}

EMAILS = ["zq7.alice.private@example.com", "zq7.bob.hidden@corp-mail.io"]
SSNS = ["219-09-9999", "078-05-1120"]
PINS = [1589831593, 1589831594]
CRM_EMAIL = "qx9.carol.crm@example.net"
USER_EMAIL = "qx9.dave.own-schema@example.net"  # in the upstream role's own schema ("$user")
VAULT_MARKER = "VAULT-MARKER-7f3a9c"
SECRETOPS_MARKER = "SECRETOPS-MARKER-2b8e"
WRONG_EMAIL = "zq7.nobody.wrong@example.com"


def masked_secrets() -> list[bytes]:
    out = [v.encode() for v in (*EMAILS, *SSNS, CRM_EMAIL, USER_EMAIL)]
    for p in PINS:
        out += [str(p).encode(), struct.pack("!q", p), struct.pack("!I", p)]
    return out


VAULT_SECRETS = [VAULT_MARKER.encode(), SECRETOPS_MARKER.encode()]

SCHEMA = f"""
CREATE SCHEMA app;
CREATE SCHEMA vault;
CREATE SCHEMA "CrmData";
CREATE SCHEMA "SecretOps";
CREATE TABLE app.customers (id int PRIMARY KEY, name text, email text, ssn text, pin bigint);
INSERT INTO app.customers VALUES
    (1, 'name1', '{EMAILS[0]}', '{SSNS[0]}', {PINS[0]}),
    (2, 'name2', '{EMAILS[1]}', '{SSNS[1]}', {PINS[1]});
CREATE TABLE "CrmData".contacts (id int PRIMARY KEY, email text);
INSERT INTO "CrmData".contacts VALUES (1, '{CRM_EMAIL}');
CREATE TABLE public.customers (id int PRIMARY KEY, name text, email text, ssn text, pin bigint);
INSERT INTO public.customers VALUES (1, 'decoy', 'decoy@example.org', '000-00-0000', 7), (2, 'decoy2', 'd2@example.org', '000-00-0001', 8);
CREATE TABLE public.notes (id int PRIMARY KEY, note text);
INSERT INTO public.notes VALUES (1, 'public note');
CREATE TABLE vault.secrets (id int PRIMARY KEY, secret text);
INSERT INTO vault.secrets VALUES (1, '{VAULT_MARKER}');
CREATE TABLE "SecretOps".keys (id int PRIMARY KEY, secret text);
INSERT INTO "SecretOps".keys VALUES (1, '{SECRETOPS_MARKER}');
CREATE SCHEMA {UP_ROLE};
CREATE TABLE {UP_ROLE}.profiles (id int PRIMARY KEY, email text);
INSERT INTO {UP_ROLE}.profiles VALUES (1, '{USER_EMAIL}');
CREATE TABLE public.profiles (id int PRIMARY KEY, email text);
INSERT INTO public.profiles VALUES (1, 'decoy-profile@example.org');
CREATE SEQUENCE public.ev_seq;
ANALYZE app.customers;
GRANT ALL ON SCHEMA app, vault, public, "CrmData", "SecretOps", {UP_ROLE} TO {UP_ROLE};
GRANT ALL ON ALL TABLES IN SCHEMA app, vault, public, "CrmData", "SecretOps", {UP_ROLE} TO {UP_ROLE};
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {UP_ROLE};
"""

MASKS = [
    {"id": "pii-email", "columns": ["app.customers.email", "CrmData.contacts.email", f"{UP_ROLE}.profiles.email"],
     "function": "email",
     "exempt_groups": ["dpo"]},
    {"id": "ssn", "columns": ["*.ssn"], "function": "partial", "keep_last": 2, "exempt_groups": ["dpo"]},
    {"id": "pin", "columns": ["app.customers.pin"], "function": "redact", "exempt_groups": ["dpo"]},
]
RULES = [
    {"id": "no-vault", "tables": ["vault.*"], "action": "deny"},
    {"id": "no-secretops", "tables": ["SecretOps.*"], "action": "deny"},
]


def _admin(sql: str, dbname: str = DB) -> None:
    with psycopg.connect(_admin_dsn(dbname), autocommit=True) as c:
        c.execute(sql)


@pytest.fixture(scope="module")
def evasion_db() -> Iterator[str]:
    with exclusive('sqlward_evasion_pg'):
        with psycopg.connect(_admin_dsn(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            c.execute(f"DROP ROLE IF EXISTS {UP_ROLE}")
            c.execute(f"CREATE ROLE {UP_ROLE} LOGIN")
            c.execute(f"CREATE DATABASE {DB}")
        _admin(SCHEMA)
        yield DB
        with psycopg.connect(_admin_dsn(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            c.execute(f"DROP ROLE IF EXISTS {UP_ROLE}")


@pytest.fixture(scope="module")
def evasion_gateway(evasion_db: str) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    gw = GatewayProcess(
        targets=[target("shop", f"postgresql://{UP_ROLE}@127.0.0.1:5432/{evasion_db}?sslmode=disable", "staging")],
        identities=[
            {"name": "ana", "secret": SECRETS["ana"], "groups": ["analysts"]},
            {"name": "dora", "secret": SECRETS["dora"], "groups": ["dpo"]},
        ],
        rules=RULES,
        extra={"masks": MASKS, "masking": {"hash_key": "evasion-hash-key"}},
        name="it-evasion-pg",
    )
    with gw:
        yield gw


@pytest.fixture(scope="module")
def tap(evasion_gateway: GatewayProcess) -> Iterator[Tap]:
    t = Tap(evasion_gateway.host, evasion_gateway.port)
    yield t
    t.close()


def _sess(tap: Tap, user: str, options: str = "") -> PgSession:
    return PgSession(tap.port, user, SECRETS[user], "shop", options)


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# -- attacks ---------------------------------------------------------------------------------------


@dataclass
class Attack:
    """A script of statements on one session (each may be refused: the script goes on)."""

    name: str
    steps: list[str]
    options: str = ""  # startup `options` (psql / psycopg) or server settings (asyncpg)
    server_setting: tuple[str, str] | None = None  # (set, reset) run by the admin before the session
    listen: str = ""  # a second session LISTENs on this channel during the script
    cleanup: list[str] = field(default_factory=list)  # admin statements afterwards


READS = [
    "SELECT upper(email), lower(ssn), pin + 0 FROM customers",
    "SELECT string_agg(email || ' ' || ssn || ' ' || pin, ',') FROM customers",
    "SELECT email || '', ssn::varchar(40), pin::text FROM customers",
    "SELECT c.email, c.ssn, c.pin FROM customers c",
    "SELECT json_agg(email) FROM customers",
]
CRM_READS = [
    "SELECT upper(email) FROM contacts",
    "SELECT email || '' FROM contacts",
    "SELECT string_agg(email, ',') FROM contacts",
]
USER_READS = ["SELECT upper(email), email || '' FROM profiles", "SELECT string_agg(email, ',') FROM profiles"]
ROLE_APP = (f"ALTER ROLE {UP_ROLE} SET search_path = app", f"ALTER ROLE {UP_ROLE} RESET search_path")
DB_APP = (f"ALTER DATABASE {DB} SET search_path = app", f"ALTER DATABASE {DB} RESET search_path")
ROLE_IN_DB_APP = (
    f"ALTER ROLE {UP_ROLE} IN DATABASE {DB} SET search_path = app",
    f"ALTER ROLE {UP_ROLE} IN DATABASE {DB} RESET search_path",
)
EVERYTHING = "email || ' ' || ssn || ' ' || pin"

MASK_ATTACKS: list[Attack] = [
    # -- search_path routes to the masked table under a bare name
    Attack("sp-set", ["SET search_path TO app", *READS]),
    Attack("sp-set-session", ["SET SESSION search_path = app, public", *READS]),
    Attack("sp-set-quoted", ['SET search_path TO "app"', *READS]),
    Attack("sp-set-strings", ["SET search_path TO 'app', 'public'", *READS]),
    Attack("sp-pg-temp-first", ["SET search_path TO pg_temp, app", *READS]),
    Attack("sp-set-local", ["BEGIN", "SET LOCAL search_path TO app", *READS, "COMMIT"]),
    Attack("sp-set-config", ["SELECT set_config('search_path', 'app', false)", *READS]),
    Attack("sp-set-config-local", ["BEGIN", "SELECT set_config('search_path', 'app, public', true)", *READS, "COMMIT"]),
    Attack("sp-set-config-computed", ["SELECT set_config('search_path', 'ap' || 'p', false)", *READS]),
    Attack("sp-set-config-in-select-list", ["SELECT 1 AS x, set_config('search_path', 'app', false) AS y", *READS]),
    Attack("sp-multi-statement", [
        "SET search_path TO app; SELECT upper(email), lower(ssn), pin + 0 FROM customers",
        "SELECT set_config('search_path', 'app', false); SELECT string_agg(email || ssn, ',') FROM customers",
    ]),
    # The server's start-up path is "$user", public: a schema named after the upstream role comes first.
    Attack("sp-dollar-user-by-default", USER_READS),
    Attack("sp-dollar-user-explicit", ['SET search_path TO "$user", public', *USER_READS]),
    Attack("sp-dollar-user-after-reset", ["SET search_path TO public", "SELECT email FROM profiles", "RESET search_path",
                                          *USER_READS]),
    Attack("sp-mixed-case", ['SET search_path TO "CrmData"', *CRM_READS]),
    Attack("sp-mixed-case-list", ['SET search_path = public, "CrmData"', *CRM_READS]),
    Attack("sp-startup-options", READS, options="-c search_path=app"),
    Attack("sp-startup-options-mixed-case", CRM_READS, options='-c search_path="CrmData"'),
    Attack("sp-alter-role", READS, server_setting=ROLE_APP),
    Attack("sp-alter-database", READS, server_setting=DB_APP),
    Attack("sp-alter-role-in-database", READS, server_setting=ROLE_IN_DB_APP),
    Attack("sp-reset-to-role-default", ["SET search_path TO public", "SELECT count(*) FROM customers",
                                        "RESET search_path", *READS], server_setting=ROLE_APP),
    Attack("sp-set-to-default", ["SET search_path TO public", "SET search_path TO DEFAULT", *READS],
           server_setting=ROLE_APP),
    Attack("sp-reset-all", ["SET search_path TO public", "RESET ALL", *READS], server_setting=DB_APP),
    Attack("sp-discard-all", ["SET search_path TO public", "DISCARD ALL", *READS], server_setting=ROLE_APP),
    Attack("sp-rollback-restores-set", ["SET search_path TO app", "BEGIN", "SET search_path TO public", "ROLLBACK", *READS]),
    Attack("sp-commit-ends-set-local", ["SET search_path TO app", "BEGIN", "SET LOCAL search_path TO public", "COMMIT", *READS]),
    Attack("sp-rollback-to-savepoint", ["BEGIN", "SET LOCAL search_path TO app", "SAVEPOINT s1",
                                        "SET LOCAL search_path TO public", "ROLLBACK TO SAVEPOINT s1", *READS, "COMMIT"]),
    Attack("sp-failed-transaction", ["SET search_path TO app", "BEGIN", "SET search_path TO public", "SELECT 1/0",
                                     "ROLLBACK", *READS]),
    Attack("sp-function-set-clause", [
        "CREATE FUNCTION pg_temp.ev_path() RETURNS text LANGUAGE sql SET search_path = app "
        f"AS $$SELECT string_agg({EVERYTHING}, ',') FROM customers$$",
        "SELECT pg_temp.ev_path()",
    ]),
    Attack("sp-prepare-under-path", ["SET search_path TO app", f"PREPARE ev_p AS SELECT {EVERYTHING} FROM customers",
                                     "EXECUTE ev_p"]),
    # -- objects the session creates
    Attack("obj-temp-view", ["CREATE TEMP VIEW ev_tv AS SELECT * FROM app.customers",
                             "SELECT upper(email), ssn || '', pin + 0 FROM ev_tv", "SELECT * FROM ev_tv",
                             "SELECT string_agg(email, ',') FROM ev_tv"]),
    Attack("obj-view-in-pg-temp", ["CREATE VIEW pg_temp.ev_tv2 AS SELECT email AS a, ssn AS b, pin AS c FROM app.customers",
                                   "SELECT a || '', b || '', c + 0 FROM pg_temp.ev_tv2", "SELECT * FROM ev_tv2"]),
    Attack("obj-temp-view-of-expressions", ["CREATE TEMP VIEW ev_tv3 AS SELECT upper(email) AS u, ssn || '' AS s, pin + 0 AS p "
                                            "FROM app.customers", "SELECT * FROM ev_tv3"]),
    Attack("obj-temp-view-bare-name", ["SET search_path TO app", "CREATE TEMP VIEW ev_tv4 AS SELECT * FROM customers",
                                       "SELECT email || '', ssn || '' FROM ev_tv4"]),
    Attack("obj-sql-function-pg-temp", [
        f"CREATE FUNCTION pg_temp.ev_f1() RETURNS SETOF text LANGUAGE sql AS $$SELECT {EVERYTHING} FROM app.customers$$",
        "SELECT pg_temp.ev_f1()", "SELECT * FROM pg_temp.ev_f1()",
    ]),
    Attack("obj-plpgsql-function-pg-temp", [
        "CREATE FUNCTION pg_temp.ev_f2() RETURNS text LANGUAGE plpgsql AS $$DECLARE v text; BEGIN "
        f"SELECT string_agg({EVERYTHING}, ',') INTO v FROM app.customers; RETURN v; END$$",
        "SELECT pg_temp.ev_f2()",
    ]),
    Attack("obj-function-in-public", [
        "CREATE OR REPLACE FUNCTION public.ev_f3_{u}() RETURNS text LANGUAGE sql "
        f"AS $$SELECT string_agg({EVERYTHING}, ',') FROM app.customers$$",
        "SELECT ev_f3_{u}()", "SELECT public.ev_f3_{u}()",
    ]),
    Attack("obj-function-returns-table", [
        "CREATE FUNCTION pg_temp.ev_f4() RETURNS TABLE(a text, b text, c bigint) LANGUAGE sql "
        "AS $$SELECT email, ssn, pin FROM app.customers$$",
        "SELECT * FROM pg_temp.ev_f4()", "SELECT a || b || c FROM pg_temp.ev_f4()",
    ]),
    Attack("obj-temp-table-as", ["CREATE TEMP TABLE ev_tt AS SELECT * FROM app.customers", "SELECT * FROM ev_tt"]),
    Attack("obj-temp-table-insert", ["CREATE TEMP TABLE ev_tt2 (e text, s text, p bigint)",
                                     "INSERT INTO ev_tt2 SELECT email, ssn, pin FROM app.customers", "SELECT * FROM ev_tt2"]),
    Attack("obj-materialized-view", ["CREATE MATERIALIZED VIEW public.ev_mv_{u} AS SELECT email AS a, ssn AS b, pin AS c "
                                     "FROM app.customers", "SELECT * FROM public.ev_mv_{u}"]),
    Attack("obj-temp-view-shadows-a-public-name", [
        # pg_temp is searched before every schema of the path (for relations): the bare name is the view
        "CREATE TEMP VIEW customers AS SELECT * FROM app.customers",
        "SELECT upper(email), ssn || '', pin + 0 FROM customers", "SELECT string_agg(email, ',') FROM customers",
    ]),
    # -- lineage through set-returning functions in FROM
    Attack("srf-in-from", [
        "SELECT m[1] FROM app.customers, regexp_matches(email || ' ' || ssn, '(.+)') m",
        "SELECT v FROM app.customers, LATERAL (VALUES (email), (ssn)) t(v)",
        "SELECT e.value FROM app.customers, jsonb_each_text(jsonb_build_object('e', email, 's', ssn)) e",
        "SELECT x FROM app.customers, string_to_table(email || ',' || ssn, ';') x",
    ]),
    # -- statistics the server keeps about the values
    Attack("fx-statistics", ["SELECT most_common_vals::text, histogram_bounds::text FROM pg_stats WHERE tablename = 'customers'",
                             "SELECT s.histogram_bounds::text FROM pg_catalog.pg_stats s WHERE s.attname IN ('email', 'ssn', 'pin')"]),
    # -- side effects and session state
    Attack("fx-notify-self", ["LISTEN ev_ch", f"SELECT pg_notify('ev_ch', {EVERYTHING}) FROM app.customers", "SELECT 1"],
           listen="ev_ch"),
    Attack("fx-notify-subquery", ["LISTEN ev_ch",
                                  "SELECT pg_notify('ev_ch', (SELECT string_agg(email || ssn, ',') FROM app.customers))",
                                  "SELECT 1"], listen="ev_ch"),
    Attack("fx-notify-bare-name", ["SET search_path TO app", "LISTEN ev_ch",
                                   f"SELECT pg_notify('ev_ch', {EVERYTHING}) FROM customers", "SELECT 1"], listen="ev_ch"),
    Attack("fx-custom-setting", [f"SELECT set_config('ev.leak', {EVERYTHING}, false) FROM app.customers WHERE id = 1",
                                 "SELECT current_setting('ev.leak')", "SHOW ev.leak"]),
    Attack("fx-custom-setting-local", ["BEGIN", "SELECT set_config('ev.leak', (SELECT string_agg(email || ssn, ',') "
                                       "FROM app.customers), true)", "SELECT current_setting('ev.leak')", "COMMIT"]),
    Attack("fx-search-path-as-storage", ["SELECT set_config('search_path', email, false) FROM app.customers WHERE id = 1",
                                         "SHOW search_path", "SELECT current_setting('search_path')"]),
    Attack("fx-update-pg-settings", ["UPDATE pg_settings SET setting = (SELECT email FROM app.customers WHERE id = 1) "
                                     "WHERE name = 'search_path'", "SHOW search_path"]),
    Attack("fx-application-name", ["SELECT set_config('application_name', email, false) FROM app.customers WHERE id = 1",
                                   "SHOW application_name"]),
    Attack("fx-large-object", [
        f"SELECT lo_from_bytea({{oid}}, convert_to({EVERYTHING}, 'UTF8')) FROM app.customers WHERE id = 1",
        "SELECT convert_from(lo_get({oid}), 'UTF8')", "SELECT lo_get({oid})",
        "SELECT encode(lo_get(m.oid), 'escape') FROM pg_largeobject_metadata m",
    ], cleanup=["SELECT lo_unlink(oid) FROM pg_largeobject_metadata"]),
    Attack("fx-sequence", ["SELECT setval('public.ev_seq', pin) FROM app.customers WHERE id = 1",
                           "SELECT last_value FROM public.ev_seq", "SELECT currval('public.ev_seq')"],
           cleanup=["SELECT setval('public.ev_seq', 1)"]),
    Attack("fx-advisory-lock", ["SELECT pg_advisory_lock(pin) FROM app.customers WHERE id = 1",
                                "SELECT classid, objid FROM pg_locks WHERE locktype = 'advisory'",
                                "SELECT pg_advisory_unlock_all()"]),
    Attack("fx-notice-do-block", ["DO $$DECLARE v text; BEGIN SELECT string_agg(email || ' ' || ssn, ',') INTO v "
                                  "FROM app.customers; RAISE NOTICE 'v=%', v; END$$"]),
    Attack("fx-notice-function", [
        "CREATE FUNCTION pg_temp.ev_n() RETURNS int LANGUAGE plpgsql AS $$BEGIN RAISE NOTICE 'v=%', "
        f"(SELECT string_agg({EVERYTHING}, ',') FROM app.customers); RETURN 1; END$$",
        "SELECT pg_temp.ev_n()",
    ]),
    Attack("fx-warning-function", [
        "CREATE FUNCTION pg_temp.ev_w() RETURNS int LANGUAGE plpgsql AS $$BEGIN RAISE WARNING 'v=%', "
        f"(SELECT string_agg({EVERYTHING}, ',') FROM app.customers); RETURN 1; END$$",
        "SELECT pg_temp.ev_w()",
    ]),
    Attack("fx-exception-function", [
        "CREATE FUNCTION pg_temp.ev_x() RETURNS int LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'v=%', "
        f"(SELECT string_agg({EVERYTHING}, ',') FROM app.customers); END$$",
        "SELECT pg_temp.ev_x()",
    ]),
    Attack("fx-error-text-bare-name", ["SET search_path TO app", "SELECT email::int FROM customers",
                                       "SELECT ssn::date FROM customers", "SELECT (email || pin)::numeric FROM customers"]),
    Attack("fx-error-text-temp-view", ["CREATE TEMP VIEW ev_ev AS SELECT * FROM app.customers",
                                       "SELECT email::int FROM ev_ev", "SELECT ssn::date FROM ev_ev"]),
    Attack("fx-error-text-setting", ["SELECT set_config('default_text_search_config', email, false) "
                                     "FROM app.customers WHERE id = 1"]),
]


def _apply(attack: Attack) -> tuple[list[str], str]:
    u = uuid.uuid4().hex[:8]
    oid = str(500000 + int(u[:5], 16) % 400000)
    steps = [s.replace("{u}", u).replace("{oid}", oid) for s in attack.steps]
    return steps, u


def _run_attack(tap: Tap, user: str, client: str, attack: Attack) -> tuple[list[str], bytes]:
    steps, _ = _apply(attack)
    if attack.server_setting:
        _admin(attack.server_setting[0])
    listener = None
    try:
        tap.reset()
        if attack.listen:
            listener = psycopg.connect(_sess(tap, user).dsn(), autocommit=True)
            listener.execute(f"LISTEN {attack.listen}")
        outcomes = run_pg(client, _sess(tap, user, attack.options), steps)
        if listener is not None:
            time.sleep(0.05)
            listener.execute("SELECT 1")
        return outcomes, tap.received
    finally:
        if listener is not None:
            listener.close()
        if attack.server_setting:
            _admin(attack.server_setting[1])
        for sql in attack.cleanup:
            _admin(sql)


@pytest.mark.parametrize("client", PG_CLIENTS)
@pytest.mark.parametrize("attack", MASK_ATTACKS, ids=[a.name for a in MASK_ATTACKS])
def test_no_masked_byte_reaches_the_client(tap: Tap, attack: Attack, client: str) -> None:
    outcomes, received = _run_attack(tap, "ana", client, attack)
    assert received, "the tap saw no traffic"
    found = leaks(received, masked_secrets())
    assert not found, (attack.name, client, list(zip(attack.steps, outcomes)), found)


# -- yes / no probes ---------------------------------------------------------------------------------


@dataclass
class Probe:
    name: str
    sql: str  # {g}: the guessed value, as a literal
    setup: list[str] = field(default_factory=list)
    true_value: str = EMAILS[0]
    wrong_value: str = WRONG_EMAIL
    options: str = ""


PAIR = "(SELECT 'a' AS k, email AS e FROM app.customers WHERE id = 1 UNION ALL SELECT 'b', {g}) x"
PROBES: list[Probe] = [
    Probe("intersect-count", "SELECT count(*) FROM (SELECT email FROM app.customers INTERSECT SELECT {g}) x"),
    Probe("intersect-rows", "SELECT email FROM app.customers INTERSECT SELECT {g}"),
    Probe("intersect-ssn", "SELECT count(*) FROM (SELECT ssn FROM app.customers INTERSECT SELECT {g}) x",
          true_value=SSNS[0], wrong_value="123-45-6789"),
    Probe("except-count", "SELECT count(*) FROM (SELECT {g} EXCEPT SELECT email FROM app.customers) x"),
    Probe("except-rows", "SELECT email FROM app.customers EXCEPT SELECT {g}"),
    Probe("union-count", "SELECT count(*) FROM (SELECT email FROM app.customers UNION SELECT {g}) x"),
    Probe("distinct-across-sources", "SELECT count(DISTINCT e) FROM (SELECT email AS e FROM app.customers "
                                     "UNION ALL SELECT {g}) x"),
    Probe("aggregate-filter", "SELECT count(*) FILTER (WHERE email = {g}) FROM app.customers"),
    Probe("aggregate-filter-ids", "SELECT array_agg(id) FILTER (WHERE email = {g}) FROM app.customers"),
    Probe("case-sum", "SELECT sum(CASE WHEN email = {g} THEN 1 ELSE 0 END) FROM app.customers"),
    Probe("case-per-row", "SELECT id, CASE WHEN email = {g} THEN 'yes' ELSE 'no' END AS hit FROM app.customers ORDER BY id"),
    Probe("nullif-count", "SELECT count(NULLIF(email, {g})) FROM app.customers"),
    Probe("nullif-is-null", "SELECT id, NULLIF(email, {g}) IS NULL AS hit FROM app.customers ORDER BY id"),
    Probe("natural-join", "SELECT count(*) FROM app.customers NATURAL JOIN (SELECT {g}::text AS email) g"),
    Probe("using-join", "SELECT count(*) FROM app.customers JOIN (SELECT {g}::text AS email) g USING (email)"),
    Probe("hypothetical-rank", "SELECT rank({g}) WITHIN GROUP (ORDER BY email) FROM app.customers"),
    Probe("percentile-disc-having", "SELECT count(*) FROM app.customers "
                                    "HAVING percentile_disc(0) WITHIN GROUP (ORDER BY email) = {g}"),
    Probe("mode-having", "SELECT count(*) FROM app.customers WHERE id = 1 HAVING mode() WITHIN GROUP (ORDER BY email) = {g}"),
    Probe("window-order-by", f"SELECT k, rank() OVER (ORDER BY e) FROM {PAIR} ORDER BY k"),
    Probe("window-partition-by", f"SELECT k, count(*) OVER (PARTITION BY e) FROM {PAIR} ORDER BY k"),
    Probe("lateral-where", "SELECT count(*) FROM app.customers c, LATERAL (SELECT 1 WHERE c.email = {g}) x"),
    Probe("bare-name-where", "SELECT count(*) FROM customers WHERE email = {g}", setup=["SET search_path TO app"]),
    Probe("bare-name-case", "SELECT sum(CASE WHEN email = {g} THEN 1 ELSE 0 END) FROM customers",
          setup=["SELECT set_config('search_path', 'app', false)"]),
    Probe("bare-name-mixed-case", "SELECT count(*) FROM contacts WHERE email = {g}",
          setup=['SET search_path TO "CrmData"'], true_value=CRM_EMAIL),
    Probe("bare-name-startup-options", "SELECT count(*) FROM customers WHERE email = {g}", options="-c search_path=app"),
    Probe("temp-view-where", "SELECT count(*) FROM ev_pv WHERE email = {g}",
          setup=["CREATE TEMP VIEW ev_pv AS SELECT * FROM app.customers"]),
    Probe("function-where", "SELECT count(*) FROM pg_temp.ev_pf() e WHERE e = {g}",
          setup=["CREATE FUNCTION pg_temp.ev_pf() RETURNS SETOF text LANGUAGE sql AS $$SELECT email FROM app.customers$$"]),
]


@pytest.mark.parametrize("client", PG_CLIENTS)
@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_yes_no_probe_is_not_answered(tap: Tap, probe: Probe, client: str) -> None:
    """The same probe with the true value and with a wrong guess: refused both times (42501),
    or answered with the very same bytes."""
    r = run_pg_probe_pair(
        client, _sess(tap, "ana", probe.options), tap, probe.setup,
        probe.sql.replace("{g}", _lit(probe.true_value)), probe.sql.replace("{g}", _lit(probe.wrong_value)),
    )
    assert not leaks(r.received, masked_secrets()), (probe.name, client, leaks(r.received, masked_secrets()))
    assert r.indistinguishable(PG_REFUSED), (probe.name, client, r.explain())


TIMING_PROBES = [
    "SELECT pg_sleep(CASE WHEN email = {g} THEN 0.8 ELSE 0 END) FROM app.customers WHERE id = 1",
    "SELECT id, CASE WHEN email = {g} THEN pg_sleep(0.8)::text ELSE '' END FROM app.customers ORDER BY id",
    "SELECT count(*) FROM app.customers, LATERAL pg_sleep((email = {g})::int * 0.8) s",
    "SELECT count(*) FROM customers, LATERAL pg_sleep((email = {g})::int * 0.8) s",
]


@pytest.mark.parametrize("sql", TIMING_PROBES)
def test_timing_probe_is_refused_or_tells_nothing(tap: Tap, sql: str) -> None:
    setup = ["SET search_path TO app"] if " customers," in sql and "app." not in sql else []
    r = run_pg_probe_pair("psycopg-text", _sess(tap, "ana"), tap, setup,
                          sql.replace("{g}", _lit(EMAILS[0])), sql.replace("{g}", _lit(WRONG_EMAIL)))
    if r.true_outcome == PG_REFUSED and r.false_outcome == PG_REFUSED:
        return
    n = len(setup)
    t_true, t_false = r.timings[n + 1], r.timings[n + 3]
    assert abs(t_true - t_false) < 0.4, (sql, r.true_outcome, r.false_outcome, t_true, t_false)
    assert r.indistinguishable(PG_REFUSED), r.explain()


# -- the schema rule under search_path ----------------------------------------------------------------

VAULT_READS = ["SELECT * FROM secrets", "SELECT secret FROM secrets WHERE id = 1", "SELECT s.secret || '' FROM secrets s",
               "TABLE secrets"]
ROLE_VAULT = (f"ALTER ROLE {UP_ROLE} SET search_path = vault", f"ALTER ROLE {UP_ROLE} RESET search_path")
DB_VAULT = (f"ALTER DATABASE {DB} SET search_path = vault, public", f"ALTER DATABASE {DB} RESET search_path")
ROLE_IN_DB_VAULT = (
    f"ALTER ROLE {UP_ROLE} IN DATABASE {DB} SET search_path = vault",
    f"ALTER ROLE {UP_ROLE} IN DATABASE {DB} RESET search_path",
)

VAULT_ATTACKS: list[Attack] = [
    Attack("set", ["SET search_path TO vault", *VAULT_READS]),
    Attack("set-session", ["SET SESSION search_path = vault, public", *VAULT_READS]),
    Attack("set-quoted", ['SET search_path TO "vault"', *VAULT_READS]),
    Attack("set-string", ["SET search_path = 'vault'", *VAULT_READS]),
    Attack("set-list-public-first", ["SET search_path TO public, vault", *VAULT_READS]),
    Attack("set-pg-temp-first", ["SET search_path TO pg_temp, vault", *VAULT_READS]),
    Attack("set-pg-catalog-first", ["SET search_path TO pg_catalog, vault", *VAULT_READS]),
    Attack("set-user-first", ['SET search_path TO "$user", vault', *VAULT_READS]),
    Attack("set-mixed-case-schema", ['SET search_path TO "SecretOps"', "SELECT * FROM keys", "TABLE keys"]),
    Attack("set-local", ["BEGIN", "SET LOCAL search_path TO vault", *VAULT_READS, "COMMIT"]),
    Attack("set-config", ["SELECT set_config('search_path', 'vault', false)", *VAULT_READS]),
    Attack("set-config-local", ["BEGIN", "SELECT set_config('search_path', 'vault', true)", *VAULT_READS, "COMMIT"]),
    Attack("set-config-computed", ["SELECT set_config('search_path', 'va' || 'ult', false)", *VAULT_READS]),
    Attack("set-config-subquery", ["SELECT set_config('search_path', (SELECT 'vault'), false)", *VAULT_READS]),
    Attack("set-config-reversed", ["SELECT set_config('search_path', reverse('tluav'), false)", *VAULT_READS]),
    Attack("set-config-in-select-list", ["SELECT 1 AS x, set_config('search_path', 'vault', false) AS y", *VAULT_READS]),
    Attack("set-config-in-cte", ["WITH x AS (SELECT set_config('search_path', 'vault', false) AS p) SELECT p FROM x",
                                 *VAULT_READS]),
    Attack("set-config-computed-name", ["SELECT set_config(lower('SEARCH_PATH'), 'vault', false)", *VAULT_READS]),
    Attack("set-config-qualified-function", ["SELECT pg_catalog.set_config('search_path', 'vault', false)", *VAULT_READS]),
    Attack("set-config-quoted-function", ["SELECT \"set_config\"('search_path', 'vault', false)", *VAULT_READS]),
    Attack("set-config-from-a-row", ["SELECT set_config(n, v, false) FROM (VALUES ('search_path', 'vault')) t(n, v)",
                                     *VAULT_READS]),
    Attack("set-config-prepared", ["PREPARE ev_sc(text) AS SELECT set_config('search_path', $1, false)",
                                   "EXECUTE ev_sc('vault')", *VAULT_READS]),
    Attack("update-pg-settings", ["UPDATE pg_settings SET setting = 'vault' WHERE name = 'search_path'", *VAULT_READS]),
    Attack("temp-view-shadows-a-public-name", ["CREATE TEMP VIEW notes AS SELECT * FROM vault.secrets",
                                               "SELECT * FROM notes"]),
    Attack("temp-table-shadows-then-dropped", ["CREATE TEMP TABLE secrets (id int, secret text)", "DROP TABLE pg_temp.secrets",
                                               "SET search_path TO public, vault", *VAULT_READS]),
    Attack("do-block", ["DO $$BEGIN PERFORM set_config('search_path', 'vault', false); END$$", *VAULT_READS]),
    Attack("multi-statement", ["SET search_path TO vault; SELECT * FROM secrets"]),
    Attack("multi-statement-set-config", ["SELECT set_config('search_path', 'vault', false); SELECT * FROM secrets"]),
    Attack("multi-statement-local", ["BEGIN; SET LOCAL search_path TO vault; SELECT * FROM secrets; COMMIT"]),
    Attack("startup-options", VAULT_READS, options="-c search_path=vault"),
    Attack("startup-options-mixed-case", ["SELECT * FROM keys"], options='-c search_path="SecretOps"'),
    Attack("alter-role", VAULT_READS, server_setting=ROLE_VAULT),
    Attack("alter-database", VAULT_READS, server_setting=DB_VAULT),
    Attack("alter-role-in-database", VAULT_READS, server_setting=ROLE_IN_DB_VAULT),
    Attack("reset-to-role-default", ["SET search_path TO public", "SELECT note FROM notes", "RESET search_path",
                                     *VAULT_READS], server_setting=ROLE_VAULT),
    Attack("set-to-default", ["SET search_path TO public", "SET search_path TO DEFAULT", *VAULT_READS],
           server_setting=ROLE_VAULT),
    Attack("reset-all", ["SET search_path TO public", "RESET ALL", *VAULT_READS], server_setting=DB_VAULT),
    Attack("discard-all", ["SET search_path TO public", "DISCARD ALL", *VAULT_READS], server_setting=ROLE_VAULT),
    Attack("commit-ends-set-local", ["SET search_path TO vault", "BEGIN", "SET LOCAL search_path TO public", "COMMIT",
                                     *VAULT_READS]),
    Attack("rollback-restores-set", ["SET search_path TO vault", "BEGIN", "SET search_path TO public", "ROLLBACK",
                                     *VAULT_READS]),
    Attack("rollback-to-savepoint", ["BEGIN", "SET LOCAL search_path TO vault", "SAVEPOINT s1",
                                     "SET LOCAL search_path TO public", "ROLLBACK TO SAVEPOINT s1", *VAULT_READS, "COMMIT"]),
    Attack("rollback-to-savepoint-session", ["SET search_path TO vault", "BEGIN", "SAVEPOINT s1", "SET search_path TO public",
                                             "ROLLBACK TO SAVEPOINT s1", *VAULT_READS, "COMMIT"]),
    Attack("release-savepoint", ["BEGIN", "SAVEPOINT s1", "SET LOCAL search_path TO vault", "RELEASE SAVEPOINT s1",
                                 *VAULT_READS, "COMMIT"]),
    Attack("failed-transaction", ["SET search_path TO vault", "BEGIN", "SET search_path TO public", "SELECT 1/0",
                                  "ROLLBACK", *VAULT_READS]),
    Attack("function-set-clause", [
        "CREATE FUNCTION pg_temp.ev_vf() RETURNS SETOF text LANGUAGE sql SET search_path = vault "
        "AS $$SELECT secret FROM secrets$$",
        "SELECT pg_temp.ev_vf()",
    ]),
    Attack("temp-view-then-move", ["SET search_path TO vault", "CREATE TEMP VIEW ev_sv AS SELECT * FROM secrets",
                                   "SET search_path TO public", "SELECT * FROM ev_sv"]),
    Attack("prepare-under-path", ["SET search_path TO vault", "PREPARE ev_vp AS SELECT * FROM secrets", "EXECUTE ev_vp"]),
]


@pytest.mark.parametrize("client", PG_CLIENTS)
@pytest.mark.parametrize("attack", VAULT_ATTACKS, ids=[a.name for a in VAULT_ATTACKS])
def test_schema_rule_holds_whatever_the_search_path(tap: Tap, attack: Attack, client: str) -> None:
    outcomes, received = _run_attack(tap, "dora", client, attack)
    assert received, "the tap saw no traffic"
    found = leaks(received, VAULT_SECRETS)
    assert not found, (attack.name, client, list(zip(attack.steps, outcomes)), found)


@pytest.mark.parametrize(
    "attack", [a for a in VAULT_ATTACKS if a.name in ("set", "set-local", "startup-options", "alter-role")],
    ids=lambda a: a.name,
)
def test_schema_rule_holds_for_a_masked_identity_too(tap: Tap, attack: Attack) -> None:
    outcomes, received = _run_attack(tap, "ana", "psycopg-text", attack)
    assert not leaks(received, VAULT_SECRETS), (attack.name, outcomes)


def _pipeline_outcomes(c: psycopg.Connection, steps: list[str]) -> list[str]:
    out: list[str] = []
    curs = []
    try:
        with c.pipeline():
            for sql in steps:
                curs.append(c.execute(sql))
    except psycopg.Error as e:
        out.append(str(e.sqlstate))
    for cur in curs:
        try:
            if cur.description is not None:
                cur.fetchall()
            out.append("ok")
        except psycopg.Error as e:
            out.append(str(e.sqlstate))
    return out


PIPELINES = [
    ["SET search_path TO vault", "SELECT * FROM secrets"],
    ["SELECT set_config('search_path', 'vault', false)", "SELECT secret FROM secrets"],
    ["BEGIN", "SET LOCAL search_path TO vault", "SELECT * FROM secrets", "COMMIT"],
    ["SET search_path TO vault", "BEGIN", "SET LOCAL search_path TO public", "COMMIT", "SELECT * FROM secrets"],
]


@pytest.mark.parametrize("steps", PIPELINES, ids=[" / ".join(p)[:60] for p in PIPELINES])
def test_schema_rule_holds_in_psycopg_pipelines(tap: Tap, steps: list[str]) -> None:
    tap.reset()
    with psycopg.connect(_sess(tap, "dora").dsn(), autocommit=True) as c:
        outcomes = _pipeline_outcomes(c, steps)
        for sql in ("SELECT * FROM secrets", "TABLE secrets"):
            try:
                c.execute(sql).fetchall()
            except psycopg.Error:
                pass
    assert not leaks(tap.received, VAULT_SECRETS), (steps, outcomes)


@pytest.mark.parametrize("sync_each", [False, True], ids=["one-sync", "sync-each"])
def test_schema_rule_holds_in_a_raw_extended_protocol_pipeline(tap: Tap, sync_each: bool) -> None:
    """Parse/Bind/Execute of `SET search_path TO vault` then of a bare read, sent back to back
    before reading any answer (the gateway decides the read before the SET has run upstream)."""
    tap.reset()
    with pgwire.RawConn.connect("127.0.0.1", tap.port) as raw:
        raw.send(pgwire.startup_message({"user": "dora", "database": "shop"}))
        raw.authenticate("dora", SECRETS["dora"])
        data = b""
        for sql in ("SET search_path TO vault", "SELECT secret FROM secrets", "SELECT set_config('search_path', 'vault', false)",
                    "SELECT * FROM secrets"):
            data += pgwire.parse(sql) + pgwire.bind() + pgwire.describe("P") + pgwire.execute()
            if sync_each:
                data += pgwire.sync()
        if not sync_each:
            data += pgwire.sync()
        raw.send(data)
        for _ in range(4 if sync_each else 1):
            raw.read_until("Z")
        raw.send(pgwire.query("SELECT secret FROM secrets"))
        raw.read_until("Z")
    assert not leaks(tap.received, VAULT_SECRETS)


# -- legitimate work still runs ---------------------------------------------------------------------


LEGIT = [
    ("plain-read", ["SELECT note FROM notes"]),
    ("set-public-then-read", ["SET search_path TO public", "SELECT note FROM notes"]),
    ("set-vault-then-public", ["SET search_path TO vault", "SET search_path TO public", "SELECT note FROM notes"]),
    ("set-local-vault-committed", ["BEGIN", "SET LOCAL search_path TO vault", "COMMIT", "SELECT note FROM notes"]),
    ("set-vault-rolled-back", ["BEGIN", "SET search_path TO vault", "ROLLBACK", "SELECT note FROM notes"]),
    ("set-config-public", ["SELECT set_config('search_path', 'public', false)", "SELECT note FROM notes"]),
    ("qualified-public", ["SET search_path TO vault", "SELECT note FROM public.notes"]),
]


@pytest.mark.parametrize("client", PG_CLIENTS)
@pytest.mark.parametrize(("name", "steps"), LEGIT, ids=[n for n, _ in LEGIT])
def test_legitimate_reads_of_public_tables_still_run(tap: Tap, name: str, steps: list[str], client: str) -> None:
    tap.reset()
    outcomes = run_pg(client, _sess(tap, "dora"), steps)
    assert outcomes[-1] == "ok", (name, client, list(zip(steps, outcomes)))
    assert b"public note" in tap.received


def test_masked_analyst_reads_unmasked_columns_and_filters_on_unmasked_keys(tap: Tap) -> None:
    tap.reset()
    with psycopg.connect(_sess(tap, "ana").dsn(), autocommit=True) as c:
        assert c.execute("SELECT id, name FROM app.customers WHERE id = 1").fetchall() == [(1, "name1")]
        rows = c.execute("SELECT c.id, c.name, p.name FROM app.customers c JOIN public.customers p ON p.id = c.id "
                         "ORDER BY c.id").fetchall()
        assert rows == [(1, "name1", "decoy"), (2, "name2", "decoy2")]
        assert c.execute("SELECT email FROM app.customers WHERE id = 1").fetchone() == ("z****@example.com",)
        assert c.execute("SELECT count(*) FROM app.customers WHERE name LIKE 'name%'").fetchone() == (2,)
        c.execute("SET search_path TO app")
        assert c.execute("SELECT id, name FROM customers WHERE id = 2").fetchall() == [(2, "name2")]
        rows = c.execute("SELECT email, ssn FROM customers ORDER BY id").fetchall()
        assert [r[0] for r in rows] == ["z****@example.com", "z****@corp-mail.io"]
        assert all(r[1] not in SSNS for r in rows)
        c.execute("SET search_path TO public")
        assert c.execute("SELECT email FROM customers WHERE id = 1").fetchone() == ("decoy@example.org",)
    assert not leaks(tap.received, masked_secrets())


@pytest.mark.parametrize("client", PG_CLIENTS)
def test_masked_analyst_under_a_bare_name_still_gets_masked_rows(tap: Tap, client: str) -> None:
    tap.reset()
    outcomes = run_pg(client, _sess(tap, "ana"), ["SET search_path TO app", "SELECT id, name, email FROM customers WHERE id = 1",
                                                  "SELECT id FROM customers WHERE name = 'name2'"])
    assert outcomes == ["ok", "ok", "ok"], outcomes
    assert b"z****@example.com" in tap.received
    assert not leaks(tap.received, masked_secrets())


# -- routes that need more than one session or bound parameters -------------------------------------


@pytest.mark.parametrize(("user", "path", "reads", "secrets"), [
    ("dora", "vault", VAULT_READS, VAULT_SECRETS),
    ("ana", "app", READS, masked_secrets()),
], ids=["vault-rule", "masks"])
def test_a_default_the_session_set_on_its_own_role_holds_in_the_next_session(
    tap: Tap, user: str, path: str, reads: list[str], secrets: list[bytes]
) -> None:
    """ALTER ROLE CURRENT_USER SET search_path through the gateway (a role may set its own
    defaults), then a new session: its start-up path is the new default."""
    tap.reset()
    try:
        first = run_pg("psycopg-text", _sess(tap, user), [f"ALTER ROLE CURRENT_USER SET search_path = {path}"])
        outcomes = run_pg("psycopg-text", _sess(tap, user), reads) + run_pg("asyncpg", _sess(tap, user), reads)
    finally:
        _admin(f"ALTER ROLE {UP_ROLE} RESET search_path")
    assert not leaks(tap.received, secrets), (first, outcomes, leaks(tap.received, secrets))


def test_set_config_with_a_bound_parameter(tap: Tap) -> None:
    """The path is a bound parameter ($1) of the extended protocol: the gateway cannot read it
    from the text; the rule must hold all the same."""
    import asyncio

    import asyncpg

    tap.reset()
    with psycopg.connect(_sess(tap, "dora").dsn(), autocommit=True) as c:
        for sql, args in (("SELECT set_config('search_path', %s, false)", ["vault"]),
                          ("SELECT set_config(%s, %s, false)", ["search_path", "vault"])):
            try:
                c.execute(sql, args).fetchall()
            except psycopg.Error:
                pass
            for read in VAULT_READS:
                try:
                    c.execute(read).fetchall()
                except psycopg.Error:
                    pass

    async def via_asyncpg() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=tap.port, user="dora", password=SECRETS["dora"],
                                     database="shop", ssl=False, command_timeout=3)
        try:
            for sql, args in (("SELECT set_config('search_path', $1, false)", ("vault",)),
                              ("SELECT set_config($1, $2, false)", ("search_path", "vault"))):
                try:
                    await conn.fetch(sql, *args)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
                    pass
                for read in VAULT_READS:
                    try:
                        await conn.fetch(read)
                    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
                        pass
        finally:
            conn.terminate()

    asyncio.run(via_asyncpg())
    assert not leaks(tap.received, VAULT_SECRETS)
