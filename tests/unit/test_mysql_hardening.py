"""Issue 12, MySQL adapter without I/O: the client character sets the gateway reads, the
in-session switches it finds in a request's text, the identity statement."""

from __future__ import annotations

import pytest

from sqlward.adapters.mysql import charsets
from sqlward.adapters.mysql.charsets import CharsetEffect, client_charset_effect
from sqlward.adapters.mysql.errors import CharsetRefused, PreAuthPacketTooLarge, error_reply
from sqlward.adapters.mysql.relaystate import text_row_values
from sqlward.adapters.mysql.session import identity_statement


@pytest.mark.parametrize("sql,named", [
    ("SET NAMES gbk", ("gbk",)),
    ("set names 'BIG5'", ("big5",)),
    ('SET NAMES "sjis" COLLATE sjis_bin', ("sjis",)),
    ("SET NAMES `cp932`", ("cp932",)),
    ("SET CHARACTER SET gbk", ("gbk",)),
    ("SET CHARSET gbk", ("gbk",)),
    ("SET character_set_client = gbk", ("gbk",)),
    ("SET character_set_client := 'gbk'", ("gbk",)),
    ("SET @@character_set_client = 28", ("gbk",)),
    ("SET @@session.character_set_client = 'gbk'", ("gbk",)),
    ("SET @@local.`character_set_client`=gbk", ("gbk",)),
    ("SET SESSION character_set_client = 1", ("big5",)),
    ("/*!40101 SET NAMES gbk */", ("gbk",)),
    ("/*M!100100 SET NAMES gbk */", ("gbk",)),
    ("SET @a = 1, NAMES gbk, @b = 2", ("gbk",)),
    ("SET STATEMENT character_set_client = gbk FOR SELECT 1", ("gbk",)),
    ("SET NAMES utf8mb4", ("utf8mb4",)),
    ("SET NAMES latin1", ("latin1",)),
    ("BEGIN NOT ATOMIC SET NAMES gbk; END", ("gbk",)),
    ("IF 1 THEN SET NAMES gbk; END IF", ("gbk",)),
    ("FOR i IN 1..1 DO SET CHARACTER SET big5; END FOR", ("big5",)),
])
def test_literal_switches_are_found(sql: str, named: tuple[str, ...]) -> None:
    effect = client_charset_effect(sql)
    assert effect.named == named and not effect.unsettled and effect.switches


@pytest.mark.parametrize("sql", [
    "SET character_set_client = @cs", "SET NAMES DEFAULT", "SET CHARACTER SET DEFAULT",
    "EXECUTE stmt", "EXECUTE IMMEDIATE @q", "SET character_set_client = CONCAT('g', 'bk')",
    "SET NAMES 'unterminated",
    "BEGIN NOT ATOMIC EXECUTE IMMEDIATE 'SET NAMES gbk'; END",
])
def test_unsettled_switches_ask_the_server(sql: str) -> None:
    assert client_charset_effect(sql).unsettled


@pytest.mark.parametrize("sql", [
    "SELECT 'SET NAMES gbk'", "CREATE TABLE t (c VARCHAR(3) CHARACTER SET gbk)",
    "SELECT CAST(x AS CHAR CHARACTER SET gbk) FROM t", "SELECT CONVERT(x USING gbk)",
    "SET @names = 'gbk'", "SET collation_connection = gbk_chinese_ci", "SET character_set_results = gbk",
    "ALTER DATABASE d CHARACTER SET gbk", "select 1", "UPDATE t SET names = 'gbk', charset = 'big5'",
    "LOAD DATA INFILE 'x' INTO TABLE t CHARACTER SET gbk", "GRANT EXECUTE ON PROCEDURE p TO u",
    "ALTER TABLE t CONVERT TO CHARACTER SET gbk",
])
def test_other_statements_do_not_switch(sql: str) -> None:
    assert client_charset_effect(sql) == CharsetEffect()


def test_a_switch_followed_by_a_statement_is_flagged() -> None:
    assert client_charset_effect("SET NAMES latin1; SELECT 1").after_switch == 2
    assert client_charset_effect("SELECT 1; SET NAMES latin1").after_switch == 0
    assert client_charset_effect("SET NAMES utf8mb4; SET NAMES gbk").refused() == "gbk"


def test_latin1_is_windows_1252_with_the_five_code_points_mariadb_adds() -> None:
    assert charsets.decode(b"caf\xe9 \x80 \x81\x8d\x8f\x90\x9d", "mysql-latin1") == "café € \x81\x8d\x8f\x90\x9d"
    assert charsets.encode("café\x81", "mysql-latin1") == b"caf\xe9\x81"


def test_collation_table() -> None:
    assert [charsets.charset_of_collation(i) for i in (8, 28, 45, 63, 224, 255, 1, 2047)] == [
        "latin1", "gbk", "utf8mb4", "binary", "utf8mb4", "utf8mb4", "big5", None]


def test_refusals_name_the_charset_and_what_to_use() -> None:
    reply = error_reply(CharsetRefused("gbk"))
    assert reply.payload is not None and reply.payload[1:3] == (1115).to_bytes(2, "little")
    assert "'gbk'" in reply.message and "utf8mb4" in reply.message
    reply = error_reply(PreAuthPacketTooLarge(65536))
    assert reply.payload is not None and reply.payload[1:3] == (1153).to_bytes(2, "little")
    assert "before authentication" in reply.message


def test_identity_statement_is_ascii_hex_converted_to_utf8mb4() -> None:
    stmt = identity_statement("sqlward:x中\\'")
    assert stmt.isascii() and b"'" not in stmt.split(b"X'", 1)[1].rstrip(b"' USING utf8mb4)")
    assert stmt == b"SET @sqlward_identity = CONVERT(X'" + "sqlward:x中\\'".encode().hex().upper().encode() + b"' USING utf8mb4)"


def test_text_row_values() -> None:
    def pkt(seq: int, body: bytes) -> bytes:
        return len(body).to_bytes(3, "little") + bytes([seq]) + body
    response = pkt(1, b"\x02") + pkt(2, b"def") + pkt(3, b"def") + pkt(4, b"\xfb\x04gbk_") + pkt(5, b"\xfe\0\0\2\0")
    assert text_row_values(response, deprecate_eof=True) == (None, b"gbk_")
