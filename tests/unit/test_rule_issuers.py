"""The `issuers` rule criterion: globs over Identity.issuer (the OIDC issuer URL of a token
identity, "" for static identities), case-sensitive like `identities`."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from sqlward.gateway.config import ConfigError, load_config
from sqlward.policy.engine import Engine
from sqlward.policy.model import Analysis, Identity, StatementFacts, TargetInfo
from sqlward.policy.rules import EnvironmentPolicy, Rule, rule_problems

PROD = TargetInfo(name="db", protocol="postgres", environment="production")
ENVS = {"production": EnvironmentPolicy(default_action="allow")}
CORP = Identity(subject="alice@example.com", verified_by="oidc", issuer="https://idp.example.com/realms/corp")
PARTNER = Identity(subject="alice@example.com", verified_by="oidc", issuer="https://login.partner.example/")
STATIC = Identity(subject="alice@example.com", verified_by="static")

DROP = Analysis(fingerprint="DROP TABLE t", dialect="postgres",
                statements=(StatementFacts(operation="drop", operations=("drop",), tables_written=("t",)),))


def _rule_id(rule: Rule, identity: Identity) -> str:
    return Engine([rule], ENVS, version=1).decide(DROP, identity, PROD).rule_id


@pytest.mark.parametrize(
    "issuers, identity, matches",
    [
        (("https://idp.example.com/realms/corp",), CORP, True),
        (("https://idp.example.com/*",), CORP, True),
        (("https://idp.example.com/*",), PARTNER, False),
        (("https://IDP.example.com/*",), CORP, False),  # case-sensitive, as the iss claim
        (("https://idp.example.com/*", "https://login.partner.example/"), PARTNER, True),
        (("https://*",), STATIC, False),  # a static identity has no issuer
        (("",), STATIC, True),
        (("*",), STATIC, True),
    ],
)
def test_issuers_globs(issuers: tuple[str, ...], identity: Identity, matches: bool) -> None:
    rule = Rule(id="r", action="deny", issuers=issuers)
    assert (_rule_id(rule, identity) == "r") is matches


def test_issuers_left_out_matches_every_identity() -> None:
    for identity in (CORP, PARTNER, STATIC):
        assert _rule_id(Rule(id="r", action="deny"), identity) == "r"


def test_issuer_fact_explains_the_decision() -> None:
    decision = Engine([Rule(id="r", action="deny", issuers=("https://idp.example.com/*",))], ENVS, version=1).decide(DROP, CORP, PROD)
    assert f"issuer={CORP.issuer}" in decision.facts


def test_decisions_are_cached_per_issuer() -> None:
    engine = Engine([Rule(id="partner-no-drop", action="deny", issuers=("https://login.partner.example/",))], ENVS, version=1)
    assert engine.decide(DROP, CORP, PROD).action == "allow"
    # Same subject, groups and target: only the issuer differs.
    assert engine.decide(DROP, PARTNER, PROD).rule_id == "partner-no-drop"
    assert engine.decide(DROP, msgspec.structs.replace(PARTNER, issuer=CORP.issuer), PROD).action == "allow"


def test_issuers_in_rule_problems() -> None:
    assert rule_problems(Rule(id="r", action="deny", issuers=("https://idp.example.com/*",))) == []
    assert rule_problems(Rule(id="r", action="deny", issuers=("",))) == []  # "": static identities


def test_issuers_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "sqlward.toml"
    path.write_text(
        """
[gateway]
name = "t"
[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:0"
[[targets]]
name = "db"
protocol = "postgres"
environment = "production"
dsn = "postgresql://u@127.0.0.1:5432/db"
[[rules]]
id = "corp-only"
issuers = ["https://idp.example.com/*"]
action = "allow"
[[rules]]
id = "bad"
issuers = "https://idp.example.com/"
action = "deny"
"""
    )
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env={})
    assert "$.rules[1].issuers" in str(info.value)
    path.write_text(path.read_text().replace('issuers = "https://idp.example.com/"', 'issuers = ["https://idp.example.com/"]'))
    config = load_config(str(path), env={})
    assert config.rules[0].issuers == ("https://idp.example.com/*",)
