"""Issue 12 (item 2, PostgreSQL): the identity label the gateway puts into the startup `options`
cannot be split by any character of a subject. Checked against the real server's own parser:
a label carrying every kind of whitespace, backslashes and a would-be `-c role=...` arrives as
one `sqlward.identity` value and sets nothing else."""

from __future__ import annotations

import psycopg
import pytest

from sqlward.adapters.identity import has_control, pg_option_value

from .conftest import _admin_dsn

LABELS = [
    "sqlward:alice via runbook-7",
    "sqlward:a\tb -c search_path=vault",
    "sqlward:x\n-c application_name=pwned",
    "sqlward:back\\slash\\ -c work_mem=1MB",
    "sqlward:\r\x0b\x0c -c statement_timeout=1",
    "sqlward:josé\u00a0ünïcode",
]


@pytest.mark.parametrize("label", LABELS)
def test_the_server_reads_the_label_whole(label: str) -> None:
    options = f"-c sqlward.identity={pg_option_value(label)}"
    with psycopg.connect(_admin_dsn(), options=options, autocommit=True) as c:
        got = c.execute("SELECT current_setting('sqlward.identity'), current_setting('search_path'), "
                        "current_setting('application_name'), current_setting('work_mem'), "
                        "current_setting('statement_timeout')").fetchone()
    assert got is not None
    assert got[0] == label
    assert got[1] != "vault" and got[2] != "pwned" and got[3] != "1MB" and got[4] == "0"


def test_control_characters_name_no_one() -> None:
    assert has_control("alice\tadmin") and has_control("a\nb") and has_control("a\x7f") and has_control("a\u2028")
    assert not has_control("josé.müller@example.com") and not has_control("runbook 7")
