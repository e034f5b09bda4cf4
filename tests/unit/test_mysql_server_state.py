"""adapters/mysql/server_state.py: what a MySQL listener's sessions share, without I/O: the
greeting facts learnt from an upstream, the greeting a session sends, the caching_sha2_password
fast-path cache."""

from __future__ import annotations

import pytest

from sqlward.adapters.mysql import auth, messages
from sqlward.adapters.mysql.constants import Capability
from sqlward.adapters.mysql.server_state import CONSERVATIVE, DEFAULT_VERSION, SUPPORTED, Greeting, MysqlServerState

KEYS = (b"-----BEGIN PRIVATE KEY-----\n", b"-----BEGIN PUBLIC KEY-----\n")  # not used for crypto here

# What MariaDB 10.11 offers (CLIENT_MYSQL clear: the extended MariaDB bits are in the high half).
MARIADB = (
    Capability.LONG_PASSWORD | Capability.FOUND_ROWS | Capability.LONG_FLAG | Capability.CONNECT_WITH_DB
    | Capability.NO_SCHEMA | Capability.COMPRESS | Capability.ODBC | Capability.LOCAL_FILES
    | Capability.IGNORE_SPACE | Capability.PROTOCOL_41 | Capability.INTERACTIVE | Capability.SSL
    | Capability.TRANSACTIONS | Capability.SECURE_CONNECTION | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS | Capability.PS_MULTI_RESULTS | Capability.PLUGIN_AUTH | Capability.CONNECT_ATTRS
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA | Capability.SESSION_TRACK | Capability.DEPRECATE_EOF
)


def test_default_greeting_is_conservative() -> None:
    g = MysqlServerState(rsa_keys=KEYS).greeting
    assert g == Greeting(int(CONSERVATIVE), DEFAULT_VERSION, 45)
    assert not g.capabilities & Capability.SESSION_TRACK and g.capabilities & Capability.DEPRECATE_EOF


def test_learnt_greeting_offers_what_both_sides_relay() -> None:
    state = MysqlServerState(rsa_keys=KEYS)
    state.learn_greeting(int(MARIADB), "10.11.6-MariaDB", 224)
    g = state.greeting
    assert (g.server_version, g.charset) == ("10.11.6-MariaDB", 224)
    assert g.capabilities == int(SUPPORTED & MARIADB)
    # what the gateway cannot relay is never offered, even when the upstream has it
    for flag in (Capability.SSL, Capability.COMPRESS, Capability.NO_SCHEMA, Capability.ODBC):
        assert not g.capabilities & flag, flag
    assert g.capabilities & Capability.SESSION_TRACK


def test_learnt_greeting_narrows_and_keeps_long_password() -> None:
    old = Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH
    g = Greeting.of_upstream(int(old), "5.7.44", 0)
    assert g.capabilities == int(old | Capability.LONG_PASSWORD)
    assert not g.capabilities & Capability.DEPRECATE_EOF  # the upstream lacks it: clients get EOF packets
    assert g.charset == 45  # the upstream named none


@pytest.mark.parametrize("tls", [False, True])
def test_handshake_of_a_session(tls: bool) -> None:
    state = MysqlServerState(rsa_keys=KEYS)
    state.learn_greeting(int(MARIADB), "10.11.6-MariaDB", 45)
    nonce = auth.generate_nonce()
    hello = state.handshake(4242, nonce, tls=tls)
    assert hello.connection_id == 4242 and hello.auth_plugin_data == nonce
    assert hello.auth_plugin_name == auth.CACHING_SHA2_PASSWORD and hello.server_version == "10.11.6-MariaDB"
    assert bool(hello.capabilities & Capability.SSL) == tls
    assert hello.capabilities & ~Capability.SSL == state.greeting.capabilities
    wire = messages.encode(hello, hello.capabilities)
    assert messages.decode_handshake(wire) == hello


def test_sha2_fast_path_cache() -> None:
    state = MysqlServerState(rsa_keys=KEYS)
    assert state.sha2_fast_path("alice", "never")
    assert not state.sha2_fast_path("alice", "always")
    assert not state.sha2_fast_path("alice", "first-login")
    state.sha2_logged_in("alice")
    assert state.sha2_fast_path("alice", "first-login") and not state.sha2_fast_path("bob", "first-login")
    assert not state.sha2_fast_path("alice", "always")


def test_rsa_pair_is_generated_once_per_state() -> None:
    state = MysqlServerState()
    assert state.rsa_private_key.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert state.rsa_public_key.startswith(b"-----BEGIN PUBLIC KEY-----")
