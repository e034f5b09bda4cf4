"""The gateway logs into its upstream with every PostgreSQL authentication method and TLS mode.

The upstream is a private cluster (tests.support.pgcluster) where each user can log in by
exactly one method: scram_user (scram-sha-256), md5_user (md5), clear_user (password),
trust_user (trust), tls_user (scram-sha-256, hostssl only). One gateway has a target per case;
the client (alice, SCRAM to the gateway) picks the case by database name.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import psycopg
import pytest

from tests.integration.conftest import VIA
from tests.support import pgwire
from tests.support.gateway import GatewayProcess, target
from tests.support.pgcluster import PgCluster

# target name -> (user, dsn params, expected upstream TLS)
WORKING: dict[str, tuple[str, dict[str, str], bool]] = {
    "up_scram": ("scram_user", {"sslmode": "disable"}, False),
    "up_md5": ("md5_user", {"sslmode": "disable"}, False),
    "up_clear": ("clear_user", {"sslmode": "disable"}, False),
    "up_trust": ("trust_user", {"sslmode": "disable"}, False),
    "up_scram_prefer": ("scram_user", {"sslmode": "prefer"}, True),
    "up_scram_require": ("scram_user", {"sslmode": "require"}, True),
    "up_clear_require": ("clear_user", {"sslmode": "require"}, True),
    "up_tls_require": ("tls_user", {"sslmode": "require"}, True),
    "up_tls_verify_ca": ("tls_user", {"sslmode": "verify-ca", "sslrootcert": "CA"}, True),
    "up_tls_verify_full": ("tls_user", {"sslmode": "verify-full", "sslrootcert": "CA"}, True),
}
WRONG_PASSWORD = "wrong-upstream-pw-7f3a9c"


def _targets(cluster: PgCluster, workdir: str) -> list[dict[str, Any]]:
    out = []
    for name, (user, params, _) in WORKING.items():
        params = {k: (cluster.ca_file if v == "CA" else v) for k, v in params.items()}
        extra: dict[str, Any] = {}
        pw = cluster.passwords[user]
        if user == "md5_user":
            path = os.path.join(workdir, "md5.pw")
            with open(path, "w") as f:
                f.write(pw + "\n")
            extra["password_file"] = path
        elif pw:
            extra["password"] = pw
        out.append(target(name, cluster.dsn(user, **params), "development", **extra))
    out += [
        target("up_tls_wrong_ca", cluster.dsn("tls_user", sslmode="verify-full", sslrootcert=cluster.wrong_ca_file),
               password=cluster.passwords["tls_user"]),
        target("up_tls_plain", cluster.dsn("tls_user", sslmode="disable"), password=cluster.passwords["tls_user"]),
        target("up_wrong_password", cluster.dsn("scram_user", sslmode="disable"), password=WRONG_PASSWORD),
        target("up_md5_wrong_password", cluster.dsn("md5_user", sslmode="disable"), password=WRONG_PASSWORD),
        target("up_clear_wrong_password", cluster.dsn("clear_user", sslmode="disable"), password=WRONG_PASSWORD),
    ]
    return out


@pytest.fixture(scope="module")
def upstream_gw(pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    if VIA == "direct":
        pytest.skip("SQLWARD_IT_VIA=direct: gateway-only test")
    work = tmp_path_factory.mktemp("upstream-gw")
    with GatewayProcess(targets=_targets(pg_cluster, str(work)), name="it-upstream") as gw:
        yield gw


# -- the fixture itself ---------------------------------------------------------------------------

EXPECTED_AUTH = {
    "scram_user": pgwire.AUTH_SASL,
    "md5_user": pgwire.AUTH_MD5,
    "clear_user": pgwire.AUTH_CLEARTEXT,
    "trust_user": pgwire.AUTH_OK,
}


@pytest.mark.parametrize("user", sorted(EXPECTED_AUTH))
def test_cluster_user_logs_in_by_its_method(pg_cluster: PgCluster, user: str):
    with pgwire.RawConn.connect(pg_cluster.host, pg_cluster.port) as c:
        c.send(pgwire.startup_message({"user": user, "database": "itdb"}))
        first = c.read_message()
        assert first.type == "R" and first.auth_code == EXPECTED_AUTH[user], first
    with psycopg.connect(pg_cluster.dsn(user, pg_cluster.passwords[user] or None, sslmode="disable")) as conn:
        assert conn.execute("select current_user").fetchone() == (user,)
    if user != "trust_user":
        with pytest.raises(psycopg.OperationalError, match="authentication failed"):
            psycopg.connect(pg_cluster.dsn(user, "not-it", sslmode="disable"))


def test_cluster_tls_user_needs_tls(pg_cluster: PgCluster):
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(pg_cluster.dsn("tls_user", pg_cluster.passwords["tls_user"], sslmode="disable"))
    dsn = pg_cluster.dsn("tls_user", pg_cluster.passwords["tls_user"], sslmode="verify-full", sslrootcert=pg_cluster.ca_file)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(pg_cluster.dsn("tls_user", pg_cluster.passwords["tls_user"], sslmode="verify-full",
                                       sslrootcert=pg_cluster.wrong_ca_file))


# -- through the gateway --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(WORKING))
def test_gateway_reaches_upstream(upstream_gw: GatewayProcess, name: str):
    user, _, tls = WORKING[name]
    with psycopg.connect(upstream_gw.dsn("alice", "alice-secret", name), autocommit=True, connect_timeout=15) as conn:
        row = conn.execute(
            "select current_user, current_database(), "
            "coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false)"
        ).fetchone()
    assert row == (user, "itdb", tls)


def _fatal_for(gw: GatewayProcess, dbname: str) -> pgwire.PgError:
    with pytest.raises(pgwire.PgError) as ei:
        c = pgwire.open_session(gw.host, gw.port, "alice", "alice-secret", dbname, timeout=20)
        c.close()
    err = ei.value
    assert err.severity == "FATAL", err
    return err


def test_verify_full_with_wrong_ca_fails_clearly(upstream_gw: GatewayProcess):
    err = _fatal_for(upstream_gw, "up_tls_wrong_ca")
    text = err.error.text.lower() + " " + err.error.fields.get("D", "").lower()
    assert any(w in text for w in ("certificate", "verif", "tls", "ssl")), err.error.fields
    with pytest.raises(psycopg.OperationalError, match="FATAL"):
        psycopg.connect(upstream_gw.dsn("alice", "alice-secret", "up_tls_wrong_ca"), connect_timeout=15)


def test_upstream_refusing_plaintext_gives_fatal(upstream_gw: GatewayProcess):
    err = _fatal_for(upstream_gw, "up_tls_plain")
    assert err.error.text


@pytest.mark.parametrize("name", ["up_wrong_password", "up_md5_wrong_password", "up_clear_wrong_password"])
def test_wrong_upstream_password(upstream_gw: GatewayProcess, name: str):
    err = _fatal_for(upstream_gw, name)
    fields = " ".join(err.error.fields.values())
    assert WRONG_PASSWORD not in fields
    assert any(w in fields.lower() for w in ("password", "authentication")), err.error.fields
    with pytest.raises(psycopg.OperationalError) as ei:
        psycopg.connect(upstream_gw.dsn("alice", "alice-secret", name), connect_timeout=15)
    assert WRONG_PASSWORD not in str(ei.value)
    # The gateway still serves a good target afterwards.
    with psycopg.connect(upstream_gw.dsn("alice", "alice-secret", "up_scram"), connect_timeout=15) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_no_upstream_password_in_logs_or_audit(upstream_gw: GatewayProcess, pg_cluster: PgCluster):
    # Runs after the cases above (file order); on its own it still checks a few sessions.
    with psycopg.connect(upstream_gw.dsn("alice", "alice-secret", "up_md5"), connect_timeout=15) as conn:
        conn.execute("select 1")
    secrets = [p for p in pg_cluster.passwords.values() if p] + [WRONG_PASSWORD, "alice-secret", "bob-secret"]
    for what, text in (("audit", upstream_gw.audit_text()), ("stderr", upstream_gw.stderr_text()),
                       ("stdout", upstream_gw.stdout_text())):
        for s in secrets:
            assert s not in text, f"a password appears in the gateway's {what}"
