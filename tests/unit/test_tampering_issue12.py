"""Issue 12 (attack report item 3): identity tampering in every spelling the attacker found, and
the role switches, refused by `pipeline.tampering` (identity-tampering) in every environment."""

from __future__ import annotations

import pytest

from sqlward.adapters.base import StatementRequest
from sqlward.adapters.identity import mysql_identity_write, pg_identity_write
from sqlward.gateway.pipeline import tampering
from sqlward.policy import rule_ids

PG_REFUSED = [
    "SET sqlward.identity = 'bob'",
    'SET "SQLWARD.IDENTITY" = \'bob\'',
    'SET "sqlward"."identity" = \'bob\'',
    'SET U&"\\0073qlward".identity = \'bob\'',
    "SET U&\"!0073qlward\" UESCAPE '!' .identity = 'bob'",
    "SET SESSION sqlward.identity TO 'bob'",
    "RESET sqlward.identity",
    "SELECT set_config('sqlward.identity','bob',false)",
    "SELECT set_config(E'\\x73qlward.identity','bob',false)",
    "SELECT set_config(U&'\\0073qlward.identity','bob',false)",
    "SELECT set_config(chr(115)||'qlward.identity','bob',false)",
    "SELECT \"set_config\"('sqlward.identity','bob',false)",
    "DO $$BEGIN PERFORM set_config('sqlward.identity','bob',false); END$$",
    "DO $$BEGIN EXECUTE 'SET sqlw'||'ard.identity = ''bob'''; END$$",
    "DO $$BEGIN EXECUTE format('SET %s = %L', 'sqlw'||'ard.identity', 'bob'); END$$",
    "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$BEGIN EXECUTE 'SET ' || x; END$f$",
    "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'SET ROLE bob'",
    "UPDATE pg_catalog.pg_settings SET setting = 'bob' WHERE name = 'sqlw'||'ard.identity'",
    "SET application_name = 'sqlward:bob'",
    "SET application_name = E'\\x73qlward:bob'",
    "SET application_name = U&'\\0073qlward:bob'",
    "SET application_name = $$sqlward:bob$$",
    "SET application_name = $a$SQLWARD:bob$a$",
    "SET application_name = 'SqlWard:bob'",
    "SET application_name = '\uff53\uff51\uff4c\uff57\uff41\uff52\uff44:bob'",
    'SET "application_name" = \'sqlward:bob\'',
    "SELECT set_config('application_name', E'\\x73qlward:bob', false)",
    "SET ROLE other",
    "SET role TO other",
    "SET SESSION ROLE other",
    "SET LOCAL ROLE other",
    "SET SESSION AUTHORIZATION other",
    "SET session_authorization = other",
    "SELECT set_config('role','other',false)",
    "SELECT set_config('ROLE','other',false)",
    "ALTER ROLE x SET role = y",
]
PG_ALLOWED = [
    "RESET ROLE",
    "RESET SESSION AUTHORIZATION",
    "SET application_name = 'psql'",
    "SELECT current_setting('sqlward.identity')",
    "SELECT 'sqlward:bob'",
    "CREATE ROLE x",
    "GRANT r TO x",
    "SET search_path = public",
    "DO $$BEGIN RAISE NOTICE 'x'; END$$",
    "RESET ALL",
]
MY_REFUSED = [
    "SET @sqlward_identity = 'bob'",
    "SET @'sqlward_identity' = 'bob'",
    'SET @"sqlward_identity" = \'bob\'',
    "SET @`sqlward_identity` = 'bob'",
    "SET @'SQLWARD_IDENTITY' := 'bob'",
    "SET @'sqlw\\ard_identity' = 'bob'",
    "SET @a = 1, @\"Sqlward_Identity\" = 'bob'",
    "SELECT 'bob' INTO @'sqlward_identity'",
    "SELECT 'bob' INTO @\"sqlward_identity\"",
    "SELECT 'bob' INTO @`sqlward_identity`",
]
MY_ALLOWED = ["SELECT @sqlward_identity", "SELECT @'sqlward_identity'", "SET @x = 'sqlward'", "SELECT @@version"]


@pytest.mark.parametrize("sql", PG_REFUSED)
def test_pg_refused(sql: str) -> None:
    assert pg_identity_write(sql)
    decision = tampering(StatementRequest(sql=sql, dialect="postgres"))
    assert decision is not None and decision.rule_id == rule_ids.IDENTITY_TAMPERING


@pytest.mark.parametrize("sql", PG_ALLOWED)
def test_pg_allowed(sql: str) -> None:
    assert not pg_identity_write(sql)


@pytest.mark.parametrize("sql", MY_REFUSED)
def test_mysql_refused(sql: str) -> None:
    assert mysql_identity_write(sql)
    decision = tampering(StatementRequest(sql=sql, dialect="mysql"))
    assert decision is not None and decision.rule_id == rule_ids.IDENTITY_TAMPERING


@pytest.mark.parametrize("sql", MY_ALLOWED)
def test_mysql_allowed(sql: str) -> None:
    assert not mysql_identity_write(sql)
