"""Issue 12 (item 1): `adapters/postgres/startup.py`, the server's reading of a startup packet
and the gateway's policy on it (the integration tests check the same against the server)."""

from __future__ import annotations

import pytest

from sqlward.adapters.postgres.startup import (
    StartupRefused,
    StartupSyntaxError,
    read_startup,
    read_switches,
    split_options,
    upstream_params,
)


@pytest.mark.parametrize("text,words", [
    ("", []),
    ("  -c  a=b\t-c\nc=d ", ["-c", "a=b", "-c", "c=d"]),
    ("-c a=b\\ c", ["-c", "a=b c"]),
    ("-c a=\\\\", ["-c", "a=\\"]),
    ("ro\\le", ["role"]),
    ("\\", [""]),
    ("a\\", ["a"]),
    ("x\u00a0y", ["x\u00a0y"]),  # only ASCII whitespace splits
])
def test_split_options_as_pg_split_opts(text: str, words: list[str]) -> None:
    assert split_options(text) == words


@pytest.mark.parametrize("words,switches", [
    (["-c", "a=b"], [("-c", "a", "b")]),
    (["-ca=b"], [("-c", "a", "b")]),
    (["--a-b=c-d"], [("--", "a_b", "c-d")]),
    (["-c", "A-B=x=y"], [("-c", "A_B", "x=y")]),
    (["-c", "--x=1"], [("-c", "__x", "1")]),
    (["-F"], [("-F", "", "")]),
    (["-Fc", "a=b"], [("-F", "", ""), ("-c", "a", "b")]),
    (["-B", "100"], [("-B", "", "100")]),
    (["-c", "a=b", "--"], [("-c", "a", "b")]),
    (["--"], []),
])
def test_switches_as_getopt_reads_them(words: list[str], switches: list[tuple[str, str, str]]) -> None:
    assert read_switches(words) == switches


@pytest.mark.parametrize("words", [["x"], ["-"], [""], ["-c"], ["-c", "a"], ["--a"], ["-c", "a=b", "--", "x"], ["-X"], ["-o", "x"]])
def test_what_the_server_refuses_is_a_syntax_error(words: list[str]) -> None:
    with pytest.raises(StartupSyntaxError):
        read_switches(words)


@pytest.mark.parametrize("params", [
    {"options": "-c role=x"}, {"options": "--ROLE=x"}, {"options": "-c ro\\le=x"},
    {"options": "--session-authorization=x"}, {"role": "x"}, {"Role": "x"}, {"session_authorization": "x"},
    {"sqlward.identity": "x"}, {"SQLWARD.IDENTITY": "x"}, {"options": "-c sqlward.identity=x"},
    {"options": "-c sqlward.other=x"}, {"options": "-F"}, {"options": "-e"}, {"options": "-S 1MB"},
    {"standard_conforming_strings": "off"}, {"options": "-c work_mem=1GB"}, {"unknown_thing": "1"},
])
def test_everything_off_the_allow_list_is_refused(params: dict[str, str]) -> None:
    with pytest.raises(StartupRefused) as caught:
        read_startup(tuple(params.items()))
    assert "not allowed through sqlward" in str(caught.value)


def test_the_server_order_and_canonical_re_emission() -> None:
    params = (
        ("user", "alice"), ("database", "app"), ("_pq_.x", "1"), ("replication", "false"),
        ("options", "-c search_path=a\\ b -c DateStyle=German --statement-timeout=5 -c sqlward.reason=INC\\ 1"),
        ("DATESTYLE", "ISO"), ("application_name", "psql"),
    )
    got = read_startup(params)
    assert got.settings == {"search_path": "a b", "statement_timeout": "5", "datestyle": "ISO", "application_name": "psql"}
    assert got.reason == "INC 1" and got.application_name == "psql"
    out = upstream_params(got, application_name="sqlward:alice psql", identity_label="sqlward:alice x\\y")
    assert out == [
        ("options", "-c search_path=a\\ b -c statement_timeout=5 -c datestyle=ISO -c sqlward.identity=sqlward:alice\\ x\\\\y"),
        ("application_name", "sqlward:alice psql"),
    ]
    assert split_options(out[0][1])[-1] == "sqlward.identity=sqlward:alice x\\y"


def test_no_label_and_the_clients_own_name() -> None:
    got = read_startup((("application_name", "app1"),))
    assert upstream_params(got, application_name=None, identity_label=None) == [("application_name", "app1")]
