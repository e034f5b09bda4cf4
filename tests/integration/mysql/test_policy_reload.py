"""MySQL: a statement prepared under the old policy is decided again after a reload."""

from __future__ import annotations

import time

import mysql.connector

from tests.support.gateway import GatewayProcess

from .conftest import mysql_listener, my_target


def test_prepared_statement_is_decided_again_after_a_reload(mysql_it_database: str) -> None:
    gw = GatewayProcess(
        targets=[my_target("app")],
        listener=mysql_listener(default_target="app"),
        extra={"gateway": {"name": "it-mysql-reload", "policy_files": ["policies/*.toml"]}},
    )
    policy = gw.dir / "policies" / "p.toml"
    policy.parent.mkdir()
    policy.write_text('[[rules]]\nid = "ok"\naction = "allow"\n')
    with gw:
        conn = mysql.connector.connect(
            host=gw.host, port=gw.port, user="alice", password="alice-secret", database="app", use_pure=True,
        )
        try:
            cur = conn.cursor(prepared=True)
            cur.execute("select owner from accounts where id = ?", (1,))
            assert cur.fetchall() == [("alice",)]
            time.sleep(1.1)
            policy.write_text(
                '[[rules]]\nid = "no-accounts"\noperations = ["select"]\ntables = ["accounts"]\naction = "deny"\n'
            )
            deadline = time.monotonic() + 10
            refused = False
            while time.monotonic() < deadline and not refused:
                try:
                    cur.execute("select owner from accounts where id = ?", (1,))  # same statement id
                    cur.fetchall()
                    time.sleep(0.2)
                except mysql.connector.Error as exc:
                    assert exc.errno == 1227 and "no-accounts" in exc.msg, exc
                    refused = True
            assert refused, gw.stderr_text()
            plain = conn.cursor()
            plain.execute("select 1")
            assert plain.fetchall() == [(1,)]  # the session goes on
        finally:
            conn.close()


def test_sql_comment_names_the_identity_to_the_server(mysql_it_database: str) -> None:
    """`[identity] sql_comment = true` on MySQL: the processlist shows the identity comment."""
    gw = GatewayProcess(
        targets=[my_target("app")],
        listener=mysql_listener(default_target="app"),
        extra={"identity": {"sql_comment": True}},
    )
    with gw:
        conn = mysql.connector.connect(
            host=gw.host, port=gw.port, user="alice", password="alice-secret", database="app", use_pure=True,
        )
        try:
            cur = conn.cursor()
            cur.execute("select info from information_schema.processlist where id = connection_id()")
            (info,) = cur.fetchone()
            assert info.startswith("/*sqlward_identity='alice'*/ "), info
        finally:
            conn.close()
