"""Issue 12, hardened edges of the MySQL / MariaDB adapter (attacker tests).

* Identity labels cannot inject: the statement that shows the identity upstream is immune to the
  client's character set (a hex literal converted to utf8mb4), at login, after COM_CHANGE_USER
  and after COM_RESET_CONNECTION.
* Pre-authentication bounds: handshake and auth packets over the login-sized cap are refused
  from their header, before the body is read.
* Every `connection.opened` is followed by `connection.closed` or `connection.refused`.
* The audit fails closed for every execution path, and the session goes on.
* Login edges: one refusal text for a wrong user and a wrong secret; advice that is true.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from tests.integration.mysql.conftest import MY_ENVIRONMENTS, default_targets, direct_rows, mysql_listener
from tests.support import mywire
from tests.support.gateway import DEFAULT_IDENTITIES, SECRETS, GatewayProcess
from tests.support.mariadb import SYSTEM_HOST, SYSTEM_PORT

# A subject whose UTF-8 bytes end in a GBK / Big5 / SJIS lead byte right before the quote
# escaping's backslash: with the label in a quoted string read in such a charset, the escape is
# swallowed and the quote closes the string early.
EVIL_SUBJECT = "myh12\u4e2d\\', @sqlward_identity = 0x61646d696e, @myh12_pwned = 1 #"
EVIL_SECRET = "evil-secret-1"

ALL_CHARSETS = [
    "armscii8", "ascii", "big5", "binary", "cp1250", "cp1251", "cp1256", "cp1257", "cp850", "cp852", "cp866",
    "cp932", "dec8", "eucjpms", "euckr", "gb2312", "gbk", "geostd8", "greek", "hebrew", "hp8", "keybcs2", "koi8r",
    "koi8u", "latin1", "latin2", "latin5", "latin7", "macce", "macroman", "sjis", "swe7", "tis620", "ujis",
    "utf8mb3", "utf8mb4",
]


@pytest.mark.parametrize("charset", ALL_CHARSETS)
def test_identity_statement_is_immune_to_every_client_charset(charset: str) -> None:
    """The exact bytes the gateway sends, run on MariaDB itself in every client charset it
    allows: the variable holds the label and nothing else is assigned."""
    from sqlward.adapters.mysql.session import identity_statement

    label = f"sqlward:{EVIL_SUBJECT}"
    conn = pymysql.connect(host=SYSTEM_HOST, port=SYSTEM_PORT, user="root", password="", charset="utf8mb4",
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET NAMES {charset}")
            # send the gateway's bytes untouched (PyMySQL would re-encode a str)
            conn._execute_command(pymysql.constants.COMMAND.COM_QUERY, identity_statement(label))
            conn._read_query_result()
            cur.execute("SET NAMES utf8mb4")
            cur.execute("SELECT HEX(CONVERT(@sqlward_identity USING utf8mb4)), @myh12_pwned")
            hexed, pwned = cur.fetchone()
    finally:
        conn.close()
    assert bytes.fromhex(hexed).decode("utf-8") == label and pwned is None


GBK_CI = 28  # gbk_chinese_ci
LATIN1_SWEDISH_CI = 8

EVIL_IDENTITIES = [*DEFAULT_IDENTITIES, {"name": EVIL_SUBJECT, "secret": EVIL_SECRET}]


@pytest.fixture(scope="module")
def evil_gw(mysql_it_database: str) -> Iterator[GatewayProcess]:
    with GatewayProcess(targets=default_targets(), identities=EVIL_IDENTITIES, environments=MY_ENVIRONMENTS,
                        listener=mysql_listener(default_target="app"), name="myh12-label") as g:
        yield g


def raw_login(g: GatewayProcess, user: str, password: str, database: str | None = "app", *,
              charset: int = 45, attrs: dict[str, str] | None = None) -> mywire.RawMySQL:
    """A raw login with the collation id `charset` in the handshake response."""
    c = mywire.RawMySQL.connect(g.host, g.port)
    try:
        assert c.handshake is not None
        c._password = password.encode()
        c.plugin = c.handshake.auth_plugin or mywire.NATIVE
        first = c.scramble(c.plugin, password.encode(), c.nonce)
        c.send_packet(c.handshake_response(user, first, database, c.plugin, attrs=attrs, charset=charset), 1)
        c._auth_loop()
    except BaseException:
        c.close()
        raise
    return c


def _label_seen(c: mywire.RawMySQL) -> tuple[str, Any]:
    row = c.query_rows("SELECT HEX(CONVERT(@sqlward_identity USING utf8mb4)), @myh12_pwned", decode=True)[0]
    return bytes.fromhex(row[0]).decode("utf-8"), row[1]


@pytest.mark.parametrize("charset", [LATIN1_SWEDISH_CI, 45])
def test_label_is_shown_exactly_at_login_change_user_and_reset(evil_gw: GatewayProcess, charset: int) -> None:
    label = f"sqlward:{EVIL_SUBJECT}"
    with raw_login(evil_gw, EVIL_SUBJECT, EVIL_SECRET, charset=charset) as c:
        assert _label_seen(c) == (label, None)
        c.reset_connection()
        assert _label_seen(c) == (label, None)
        c.change_user("alice", SECRETS["alice"], "app", charset=charset)
        assert _label_seen(c) == ("sqlward:alice", None)
        c.change_user(EVIL_SUBJECT, EVIL_SECRET, "app", charset=charset)
        assert _label_seen(c) == (label, None)
