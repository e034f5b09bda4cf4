"""docs/approvals.md's examples are real: its TOML loads, its webhook check verifies sqlward's
signatures.

How it works: every ```toml block of the page is either a complete configuration (it has a
`[gateway]` table) or a fragment, which is appended to a minimal base configuration (one
listener, one target). Each is written into the test's directory with every file it names (the
`*_file` keys: secrets, API tokens, TLS files) created there, and loaded with
`sqlward.gateway.config.load_config`, exactly as `sqlward check-config` does. The ```python
block that defines `verify` is executed, and its function must accept a body signed by
`sqlward.gateway.approvals.webhooks.sign` (and a real delivery of the notifier, captured by an
httpx mock transport), and refuse a changed body, another secret and an old timestamp.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from sqlward.gateway.approvals.model import ApprovalRequest, Requester
from sqlward.gateway.approvals.webhooks import WebhookNotifier, sign
from sqlward.gateway.config import Config, WebhookConfig, load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "approvals.md"
BASE = """\
[gateway]
name = "docs"

[[listeners]]
protocol = "postgres"
listen = "127.0.0.1:6432"

[[targets]]
name = "app"
protocol = "postgres"
environment = "production"
dsn = "postgresql://sqlward@127.0.0.1:5432/app"
"""
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[str]:
    return [body for lang, body in _BLOCK.findall(DOC.read_text(encoding="utf-8")) if lang == language]


def _files(node: Any) -> Iterator[str]:
    """Every file a config names (values of keys ending in `_file`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_file") and isinstance(value, str) and value:
                yield value
            else:
                yield from _files(value)
    elif isinstance(node, list):
        for item in node:
            yield from _files(item)


def load(text: str, directory: Path) -> Config:
    document = text if re.search(r"^\[gateway\]", text, re.MULTILINE) else BASE + "\n" + text
    for name in _files(tomllib.loads(document)):
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a-secret-of-more-than-16-characters\n", encoding="utf-8")
    config = directory / "sqlward.toml"
    config.write_text(document, encoding="utf-8")
    return load_config(str(config))


TOML = blocks("toml")


def test_the_page_has_its_examples() -> None:
    assert len(TOML) >= 8
    assert sum(1 for b in TOML if "[gateway]" in b) >= 1


@pytest.mark.parametrize("index", range(len(TOML)))
def test_each_toml_example_loads(index: int, tmp_path: Path) -> None:
    config = load(TOML[index], tmp_path)
    assert config.gateway.name


def test_the_quick_start_is_what_it_says(tmp_path: Path) -> None:
    [quick] = [b for b in TOML if "[gateway]" in b]
    config = load(quick, tmp_path)
    bot = next(i for i in config.identities if i.name == "change-bot")
    assert bot.bot and bot.api_token_file.endswith("change-bot.token")
    assert config.admin.listen == "127.0.0.1:8443"
    guard = config.guardrails["mass-write"]
    assert guard.action == "review" and guard.approval is not None
    assert guard.approval.approvers == ("group:dba", "bot:change-bot")
    # The defaults the page states.
    assert guard.approval.mode == "hold" and guard.approval.expires == 900 and guard.approval.hold_timeout == 300
    assert config.approvals.store == str(tmp_path / "approvals.sqlite3")
    assert config.approvals.max_pending_per_identity == 20 and config.approvals.retention_days == 30
    assert config.admin.access.approvals_read == ("*",) and config.admin.access.approvals_decide == ("*",)


def test_the_reference_example_sets_every_key(tmp_path: Path) -> None:
    [reference] = [b for b in TOML if "reason_pattern" in b and "all_groups" in b]
    approval = load(reference, tmp_path).guardrails["mass-write"].approval
    assert approval is not None
    assert approval.approvals == 2 and approval.all_groups == ("dba", "security")
    assert approval.reason_pattern == "(CHG|INC)-[0-9]+"
    assert set(msgspec.structs.asdict(approval)) <= set(re.findall(r"^(\w+) =", reference, re.MULTILINE))


def test_the_shorthand_and_the_table_merge(tmp_path: Path) -> None:
    [rule_block] = [b for b in TOML if 'id = "big-deletes"' in b]
    [rule] = load(rule_block, tmp_path).rules
    assert rule.approvers == ("group:dba",) and rule.approval is not None and rule.approval.hold_timeout == 120


def test_the_webhook_example_and_the_store_examples(tmp_path: Path) -> None:
    [hook_block] = [b for b in TOML if "[[webhooks]]" in b]
    [hook] = load(hook_block, tmp_path / "hook").webhooks
    assert hook.secret_file == str(tmp_path / "hook" / "webhook.secret") and hook.max_attempts == 6
    [pg] = [b for b in TOML if "postgresql://sqlward@db-approvals" in b]
    approvals = load(pg, tmp_path / "pg").approvals
    assert approvals.store.startswith("postgresql://") and approvals.table == "sqlward_approvals"


# -- the webhook signature check -------------------------------------------------------------------


def _verify() -> Any:
    [code] = [b for b in blocks("python") if "def verify(" in b]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the page's own example
    return namespace["verify"]


def test_the_verify_snippet_accepts_sqlwards_signature() -> None:
    verify = _verify()
    secret = b"webhook-signing-secret-0123456789"
    body = b'{"event":"approval.requested","text":"..."}'
    now = time.time()
    ts = str(int(now))
    headers = {"X-Sqlward-Timestamp": ts, "X-Sqlward-Signature": sign(secret, ts, body)}
    assert verify(secret, headers, body, now=now)
    assert not verify(secret, headers, body + b" ", now=now)  # another body
    assert not verify(b"another-secret-0123456789", headers, body, now=now)  # another key
    assert not verify(secret, headers, body, now=now + 3600)  # outside the replay window
    assert not verify(secret, {**headers, "X-Sqlward-Timestamp": "x"}, body, now=now)


def test_the_verify_snippet_accepts_a_real_delivery() -> None:
    """The notifier's own POST (headers as a receiver's framework gives them: case-insensitive),
    captured by an httpx mock transport."""
    verify = _verify()
    secret = b"webhook-signing-secret-0123456789"
    got: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        got.append(request)
        return httpx.Response(204)

    hook = WebhookConfig(url="https://hooks.example.com/sqlward", secret=secret.decode())
    notifier = WebhookNotifier(
        [(hook, secret)], link=lambda i: f"https://sqlward.example.com:8443/api/v1/approvals/{i}", gateway="gw-1",
    )
    now = time.time()
    request = ApprovalRequest(
        id="ap-874z08qg7532", binding="0" * 64, requester=Requester(subject="bob", groups=("dev",)), target="app",
        environment="production", protocol="postgres", sql="DELETE FROM sessions WHERE last_seen < now()",
        created=now, expires=now + 900,
    )

    async def deliver() -> None:
        notifier.notify("approval.requested", request)
        async with trio.open_nursery() as nursery:
            original = notifier._client
            notifier._client = lambda h: httpx.AsyncClient(transport=httpx.MockTransport(handler))  # type: ignore[method-assign]
            nursery.start_soon(notifier.run)
            with trio.fail_after(10):
                while not got:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
            notifier._client = original  # type: ignore[method-assign]

    trio.run(deliver)
    [sent] = got
    assert sent.headers["X-Sqlward-Event"] == "approval.requested"
    assert verify(secret, sent.headers, sent.content)
    assert not verify(secret, sent.headers, sent.content.replace(b"bob", b"eve"))


def test_check_config_names_the_admin_listener_and_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sqlward.gateway import cli

    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\nname = "gw"\n[[listeners]]\nprotocol = "postgres"\nlisten = "127.0.0.1:6432"\n'
        '[[targets]]\nname = "app"\nprotocol = "postgres"\nenvironment = "production"\n'
        'dsn = "postgresql://app:pw@127.0.0.1:5432/app"\n'
        '[admin]\nlisten = "127.0.0.1:8443"\n[approvals]\nstore = "postgresql://sqlward:secret@db/approvals"\n'
    )
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "; admin API on 127.0.0.1:8443, approvals in PostgreSQL; audit buffered, fail closed: file " in out and "secret" not in out
