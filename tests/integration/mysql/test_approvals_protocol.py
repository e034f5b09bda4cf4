"""MySQL prepared statements that need approval, at the protocol level (issue 13, attack runs):
the parameters an approver sees are the ones the server runs with.

Raw COM_STMT_* commands through mysql-connector's pure-Python protocol (`cmd_stmt_prepare`,
`_send_cmd`): long data sent for statement id 0xFFFFFFFF ("the statement prepared last"),
an execution that leaves its parameter types out (new-params-bound 0), an execution of a
statement id the gateway never saw prepared, and a statement prepared under a policy that
allowed it and run after a reload that sends it to review. Fixtures from test_approvals.py.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path
from typing import Any

import mysql.connector
import pytest

from tests.integration.mysql.test_approvals import (  # noqa: F401 (fixtures)
    ROWS, apm_database, count, make_gateway, table,
)
from tests.support.approvals import api, requests, wait_pending

EXECUTE, LONG_DATA = 0x17, 0x18


def raw(gw: Any) -> Any:
    return mysql.connector.connect(
        host=gw.host, port=gw.port, user="alice", password="alice-secret", database="prod",
        use_pure=True, ssl_disabled=True, autocommit=True,
    )


def execute_payload(stmt_id: int, types: bytes, values: bytes) -> bytes:
    """COM_STMT_EXECUTE body for one parameter: flags 0, one iteration, null bitmap 0."""
    bound = b"\x01" + types if types else b"\x00"
    return struct.pack("<IBI", stmt_id, 0, 1) + b"\x00" + bound + values


def send(cn: Any, command: int, body: bytes) -> bytes:
    """The answer's first packet: b"ok" for an OK packet, b"error <errno>: <message>" for ERR."""
    packet = bytes(cn._send_cmd(command, body))
    payload = packet[4:]
    if payload[:1] == b"\xff":
        return b"error %d: " % int.from_bytes(payload[1:3], "little") + payload[9:]
    return b"ok" if payload[:1] == b"\x00" else payload


def test_long_data_for_the_last_statement_id_cannot_slip_past_the_approval(tmp_path: Path, table: str) -> None:
    """MariaDB applies long data sent for id 0xFFFFFFFF to the statement prepared last: the
    gateway counts it for that statement, so its execution is refused (a statement needing
    approval takes its values in the execution, where the approver sees them)."""
    with make_gateway(tmp_path) as gw:
        cn = raw(gw)
        sid = cn.cmd_stmt_prepare(f"DELETE FROM {table} WHERE id <= ?".encode())["statement_id"]
        cn._send_cmd(LONG_DATA, struct.pack("<IH", 0xFFFFFFFF, 0) + b"300", expect_response=False)
        answer = send(cn, EXECUTE, execute_payload(sid, b"\xfd\x00", b"\x011"))
        assert answer.startswith(b"error ") and b"COM_STMT_SEND_LONG_DATA" in answer, answer
        assert count(table) == ROWS and requests(gw) == []
        cn.close()


def test_an_execution_without_its_parameter_types_is_refused(tmp_path: Path, table: str) -> None:
    with make_gateway(tmp_path) as gw:
        cn = raw(gw)
        sid = cn.cmd_stmt_prepare(f"DELETE FROM {table} WHERE id <= ?".encode())["statement_id"]
        answer = send(cn, EXECUTE, execute_payload(sid, b"", b"\x070000005"))
        assert answer.startswith(b"error ") and b"a statement that needs approval" in answer, answer
        assert count(table) == ROWS and requests(gw) == []
        cn.close()


def test_an_execution_of_a_statement_not_prepared_through_the_gateway_is_refused(tmp_path: Path, table: str) -> None:
    with make_gateway(tmp_path) as gw:
        cn = raw(gw)
        answer = send(cn, EXECUTE, execute_payload(0xFFFFFFFF, b"\x08\x00", struct.pack("<q", 300)))
        assert answer.startswith(b"error 1243"), answer  # no statement prepared yet
        answer = send(cn, EXECUTE, execute_payload(4242, b"\x08\x00", struct.pack("<q", 300)))
        assert b"error 1243" in answer and b"not prepared through sqlward" in answer, answer
        assert count(table) == ROWS
        cn.close()


def test_the_last_statement_id_is_approved_as_that_statement_with_its_values(tmp_path: Path, table: str) -> None:
    with make_gateway(tmp_path) as gw:
        cn = raw(gw)
        cn.cmd_stmt_prepare(f"DELETE FROM {table} WHERE id <= ?".encode())
        seen: dict[str, Any] = {}

        def approver() -> None:
            [p] = wait_pending(gw)
            seen.update(sql=p["sql"], parameters=p["parameters"])
            api(gw, "POST", f"/api/v1/approvals/{p['id']}/approve")

        thread = threading.Thread(target=approver)
        thread.start()
        answer = send(cn, EXECUTE, execute_payload(0xFFFFFFFF, b"\x08\x00", struct.pack("<q", 50)))
        thread.join(20)
        assert seen == {"sql": f"DELETE FROM {table} WHERE id <= ?", "parameters": ["50"]}
        assert answer == b"ok", answer
        assert count(table) == ROWS - 50
        cn.close()
