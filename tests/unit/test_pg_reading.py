"""Issue 12 (attack report item 1-2): statements that would change how PostgreSQL reads SQL text
(`adapters.postgres.reading`), the pipeline's `sql-reading` refusal, SHIFT_JIS_2004 decoding."""

from __future__ import annotations

import pytest

from sqlward.adapters.base import StatementRequest
from sqlward.adapters.postgres.encodings import decoder_for, problem
from sqlward.adapters.postgres.reading import reading_change, restores, tokens
from sqlward.gateway.pipeline import sql_reading
from sqlward.policy import rule_ids

REFUSED = [
    "SET standard_conforming_strings = off",
    "set Standard_Conforming_Strings TO 'off'",
    "SET SESSION standard_conforming_strings = false",
    "SET LOCAL standard_conforming_strings=0",
    'SET "standard_conforming_strings" = off',
    'SET "STANDARD_CONFORMING_STRINGS" = off',
    'SET U&"standard\\005fconforming_strings" = off',
    "SET U&\"standard!005fconforming_strings\" UESCAPE '!' = off",
    "SET /* x */ standard_conforming_strings -- y\n = off",
    "SELECT set_config('standard_conforming_strings','off',false)",
    "SELECT set_config(E'standard\\x5fconforming_strings','off',false)",
    "SELECT set_config(U&'STANDARD\\005Fconforming_strings','off',false)",
    "SELECT set_config($$standard_conforming_strings$$,'off',false)",
    "SELECT set_config($t$standard_conforming_strings$t$,'off',false)",
    "SELECT set_config('standard_conforming_'\n'strings','off',false)",
    "SELECT set_config('standard_conforming_' || 'strings','off',false)",
    "SELECT pg_catalog.set_config(name, 'x', false) FROM t",
    'SELECT "set_config"(lower(\'X\'), \'off\', false)',
    "ALTER ROLE bob SET standard_conforming_strings = off",
    "ALTER DATABASE d SET standard_conforming_strings TO off",
    "ALTER SYSTEM SET standard_conforming_strings = off",
    "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
    "UPDATE pg_catalog.pg_settings SET setting = 'off' WHERE name LIKE 'standard%'",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET standard_conforming_strings = off AS 'select 1'",
    "DO $$BEGIN SET standard_conforming_strings = off; END$$",
    "DO $$BEGIN EXECUTE 'SET standard_' || 'conforming_strings = off'; END$$",
    "DO $x$BEGIN PERFORM set_config(v, 'off', false); END$x$",
    "SELECT 1; SET standard_conforming_strings = off",
    "SELECT query_to_xml('sel' || 'ect 1', true, true, '')",
]
ALLOWED = [
    "SET standard_conforming_strings = on",
    "SET standard_conforming_strings TO DEFAULT",
    "RESET standard_conforming_strings",
    "SHOW standard_conforming_strings",
    "SELECT current_setting('standard_conforming_strings')",
    "SELECT name, setting FROM pg_settings WHERE name = 'standard_conforming_strings'",
    "SELECT set_config('search_path', 'public', false)",
    "SELECT set_config('standard_conforming_strings','on',false)",
    "SELECT 'a\\' , 'b'",
    "SELECT * FROM t WHERE x = 'it''s'",
    "DO $$BEGIN EXECUTE 'select 1'; END$$",
    "EXECUTE myplan(1)",
    "INSERT INTO t VALUES ('please execute the plan')",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refused(sql: str) -> None:
    assert reading_change(sql) is not None
    decision = sql_reading(StatementRequest(sql=sql, dialect="postgres"))
    assert decision is not None and decision.rule_id == rule_ids.SQL_READING


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed(sql: str) -> None:
    assert reading_change(sql) is None


def test_rule_id_listed() -> None:
    assert rule_ids.SQL_READING in rule_ids.ALL


def test_tokens_decode_every_quoting() -> None:
    assert [t.value for t in tokens("U&'\\0061' E'\\x62' $q$c$q$ 'd'\n'e' \"F\" G")] == ["a", "b", "c", "de", "F", "g"]


def test_restores_only_a_plain_switch_back() -> None:
    assert restores("SET standard_conforming_strings = on")
    assert restores("reset all;")
    assert not restores("SET standard_conforming_strings = on; DROP TABLE t")
    assert restores("SET client_encoding = 'UTF8'", scs=False)
    assert not restores("SET client_encoding = 'UTF8'; SELECT 1", scs=False)


def test_shift_jis_2004_reads_backslash_and_tilde() -> None:
    assert decoder_for("SHIFT_JIS_2004")(b"E'a\\' ~") == "E'a\\' ~"
    assert decoder_for("SHIFT_JIS_2004")(bytes.fromhex("818f")) == "\uffe5"


def test_unknown_encoding_is_a_problem() -> None:
    assert problem("NOT_AN_ENCODING") is not None
    assert problem("UTF8") is None and problem("SJIS") is None


@pytest.mark.parametrize("sql", [
    "SET client_encoding = 'GBK'", "SET NAMES 'SJIS'", 'SET "CLIENT_ENCODING" TO big5',
    "SET U&\"client\\005fencoding\" = gbk", "SELECT set_config('client_encoding', 'GBK', false)",
    "RESET client_encoding", "RESET ALL", "DISCARD ALL", "SELECT 1; SET client_encoding = 'GBK'",
])
def test_may_switch_encoding(sql: str) -> None:
    from sqlward.adapters.postgres.reading import may_switch_encoding

    assert may_switch_encoding(sql)


def test_transaction_end_may_switch_back_once_switched() -> None:
    from sqlward.adapters.postgres.reading import may_switch_encoding

    assert not may_switch_encoding("COMMIT")
    assert may_switch_encoding("ROLLBACK", touched=True)
    assert not may_switch_encoding("SELECT 'names'")
