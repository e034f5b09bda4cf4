"""The `sqlward` command line.

How it works: `main(argv)` parses the arguments with argparse and dispatches to one function per
subcommand, each returning the process exit code (0 ok, 1 runtime failure, 2 usage or
configuration error; `policy test` returns 0 / 1 / 3 for allow / deny / review). Configuration
problems are printed as the `ConfigError` message (``FILE: $.path: what was expected``), never as
a traceback.

    sqlward check-config FILE      validate a config file, print a one-line summary
    sqlward serve --config FILE    load the config and run the gateway until SIGINT / SIGTERM
    sqlward policy test --config FILE --as IDENTITY --target TARGET [--json] "SQL"
                                   the verdict a live session would get on one SQL text (or a
                                   protocol --command), explained, through the same statement
                                   pipeline without a gateway (see gateway.policy_check); exit 0
                                   allow, 1 deny, 3 review, 2 usage or configuration error
    sqlward approvals list [--status S] [--json] | show ID | approve ID | reject ID [--comment TEXT]
                                   an approver's commands over the admin API (--url / $SQLWARD_ADMIN_URL,
                                   --token, --token-file / $SQLWARD_TOKEN, --ca-file; see gateway.http.client):
                                   exit 0 done, 1 the server refused, 2 usage or connection error
    sqlward version                the version of sqlward, Python and the key dependencies
    sqlward healthcheck [--url URL] exit 0 when the admin listener's health URL answers 200
                                   (a container HEALTHCHECK; default $SQLWARD_HEALTH_URL, else
                                   http://127.0.0.1:8080/healthz)
    sqlward --version

`gateway.server` is imported only by `serve`, so `check-config` stays fast and works without the
server's dependencies being importable.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
from collections.abc import Sequence

from sqlward.audit.sinks import shown_url
from sqlward.gateway.config import Config, ConfigError, audit_sinks, load_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def sqlward_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("sqlward")
    except (ImportError, PackageNotFoundError):
        return "0.1.0+unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqlward",
        description="Identity-aware, policy-governed gateway for PostgreSQL and MySQL/MariaDB.",
    )
    parser.add_argument("--version", action="version", version=f"sqlward {sqlward_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", metavar="FILE", help="TOML configuration file")

    sub.add_parser("version", help="print the version of sqlward and of its key dependencies")

    health = sub.add_parser(
        "healthcheck", help="exit 0 when the admin listener's health URL answers 200 (container HEALTHCHECK)",
    )
    health.add_argument(
        "--url", default=os.environ.get("SQLWARD_HEALTH_URL", DEFAULT_HEALTH_URL), metavar="URL",
        help=f"the URL to ask (default: $SQLWARD_HEALTH_URL, else {DEFAULT_HEALTH_URL})",
    )
    health.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS", help="give up after this long")
    health.add_argument("--ca-file", metavar="FILE", help="CA certificate for an https URL")

    serve = sub.add_parser("serve", help="run the gateway until SIGINT / SIGTERM")
    serve.add_argument("--config", "-c", required=True, metavar="FILE", help="TOML configuration file")

    from sqlward.gateway.audit_cli import add_parser as add_audit_parser

    add_audit_parser(sub)

    policy = sub.add_parser("policy", help="policy tools")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND")
    test = policy_sub.add_parser(
        "test",
        help="explain the policy's decision on one SQL text (exit 0 allow, 1 deny, 3 review, 2 error)",
        description="Evaluate SQL against the configured policy as the gateway would, without a gateway "
        "or upstream. Exit status: 0 allow, 1 deny, 3 review, 2 usage or configuration error.",
    )
    test.add_argument("--config", "-c", required=True, metavar="FILE", help="TOML configuration file")
    test.add_argument(
        "--as", dest="identity", required=True, metavar="IDENTITY",
        help="a static identity of [[identities]], or any subject (an ad-hoc identity, as a token would give)",
    )
    test.add_argument("--target", required=True, metavar="TARGET", help="target name")
    test.add_argument("--dialect", choices=("postgres", "mysql"), help="SQL dialect (default: the target's protocol)")
    test.add_argument(
        "--group", dest="groups", action="append", default=[], metavar="G",
        help="group of the ad-hoc identity (repeatable)",
    )
    test.add_argument(
        "--actor", dest="actors", action="append", default=[], metavar="A",
        help="actor of the ad-hoc identity's delegation chain, outermost first (repeatable); makes it an agent",
    )
    test.add_argument(
        "--issuer", default="", metavar="URL",
        help="the [[oidc]] issuer of the ad-hoc identity's token (rules and [[access]] can match issuers)",
    )
    test.add_argument("--schema", metavar="DB", help="MySQL current database (default: the target DSN's database)")
    test.add_argument(
        "--expires-at", type=_when, metavar="TIME",
        help="judge as a token of the ad-hoc identity expiring at TIME (Unix seconds or ISO 8601, e.g. "
        "2026-01-01T00:00:00Z): what a live session gets once its token has expired",
    )
    test.add_argument(
        "--command", dest="protocol_command", default="", metavar="NAME",
        help="judge a protocol command that carries no SQL instead of a text: FunctionCall (PostgreSQL), "
        "COM_CREATE_DB, COM_DROP_DB, COM_REFRESH, ... (MySQL)",
    )
    test.add_argument(
        "--search-path", dest="search_path", default=None, metavar="SCHEMAS",
        help="PostgreSQL: the session's search_path that unqualified table names resolve through, as "
        "SHOW search_path gives it (default: public)",
    )
    test.add_argument("--json", action="store_true", help="print one JSON object")
    test.add_argument("sql", metavar="SQL", nargs="?", default="", help="the SQL text (may hold several statements)")

    from sqlward.gateway.http.client import add_commands

    add_commands(sub)
    return parser


def _when(text: str) -> float:
    """A point in time for --expires-at: Unix seconds, or ISO 8601 (UTC when no offset is given)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (Unix seconds or ISO 8601)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def _summary(file: str, config: Config) -> str:
    """One line: what the config defines, counting what its policy files add (load_config has
    already read them once, so they load)."""
    from sqlward.gateway.policy_files import load_policy

    bundle = load_policy(config)
    rules = f"{len(bundle.rules)} rules"
    masks = f", {len(bundle.masks)} masks" if bundle.masks else ""
    if bundle.files:
        added, added_masks = len(bundle.rules) - len(config.rules), len(bundle.masks) - len(config.masks)
        n = len(bundle.files)
        rules += f" ({added} from {n} policy file{'s' if n != 1 else ''})"
        if added_masks:
            masks += f" ({added_masks} from policy files)"
    return (
        f"{file}: ok ({len(config.listeners)} listeners, {len(config.targets)} targets, "
        f"{len(config.identities)} identities, {rules}{masks})"
        + _admin_summary(config)
        + _audit_summary(config)
    )


def _audit_summary(config: Config) -> str:
    """Where the audit trail goes and how durably (a sink's DSN is not shown: it may carry a
    password), and where telemetry goes."""
    audit = config.audit
    sinks = []
    for sink in audit_sinks(audit):
        where = {"file": sink.path, "postgres": f"table {sink.table}", "stdout": "", "otlp": shown_url(sink.endpoint)}[sink.kind]
        sinks.append(f"{sink.kind}{' ' + where if where else ''}{'' if sink.required else ' (optional)'}")
    text = f"; audit {audit.durability}, fail {audit.failure}: " + ", ".join(sinks)
    if config.telemetry.endpoint:
        text += f"; telemetry to {shown_url(config.telemetry.endpoint)}"
    return text


def _admin_summary(config: Config) -> str:
    """Where approvals are decided and kept, when the config says (the admin listener, the
    store, webhooks); the store's DSN is not shown (it may carry a password)."""
    if not config.admin.listen and not config.webhooks:
        return ""
    parts = []
    if config.admin.listen:
        parts.append(f"admin API on {config.admin.listen}" + (" (TLS)" if config.admin.tls else ""))
    store = config.approvals.store
    parts.append("approvals in PostgreSQL" if store.startswith(("postgresql://", "postgres://")) else f"approvals in {store}")
    if config.webhooks:
        parts.append(f"{len(config.webhooks)} webhook{'s' if len(config.webhooks) != 1 else ''}")
    return "; " + ", ".join(parts)


# The packages whose versions `sqlward version` prints (what a bug report needs).
KEY_DEPENDENCIES = (
    "trio", "sqlglot", "sqlglotc", "msgspec", "cryptography", "joserfc", "authlib", "scramp", "hypercorn",
    "starlette", "httpx", "opentelemetry-sdk",
)
DEFAULT_HEALTH_URL = "http://127.0.0.1:8080/healthz"


def version_report() -> str:
    """`sqlward version`: sqlward, Python, the key dependencies and whether the compiled hot
    paths are in use."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    lines = [f"sqlward {sqlward_version()}", f"python {platform.python_version()} ({platform.machine()})"]
    for name in KEY_DEPENDENCIES:
        try:
            lines.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            lines.append(f"{name} (not installed)")
    from sqlward.adapters.postgres import rowmask

    lines.append(f"PostgreSQL masking row walk: {'compiled' if rowmask._rowwalk is not None else 'pure Python'}")
    return "\n".join(lines)


def healthcheck(url: str, timeout: float, ca_file: str | None) -> int:
    """GET `url`: exit 0 on 200, 1 otherwise (one line on stderr), all within `timeout` seconds
    (the request runs in a thread: a server that trickles its answer cannot hold the check)."""
    import http.client
    import ssl
    import threading
    import urllib.error
    import urllib.request

    outcome: list[str | int] = []

    def ask() -> None:
        try:
            context = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
            with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
                resp.read(1 << 16)
                outcome.append(resp.status)
        except urllib.error.HTTPError as exc:
            outcome.append(exc.code)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            outcome.append(str(getattr(exc, "reason", None) or exc) or type(exc).__name__)

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        print(f"sqlward healthcheck: {url}: no answer within {timeout:g} s", file=sys.stderr)
        return EXIT_FAILURE
    status = outcome[0]
    if isinstance(status, str):
        print(f"sqlward healthcheck: {url}: {status}", file=sys.stderr)
        return EXIT_FAILURE
    if status != 200:
        print(f"sqlward healthcheck: {url} answered {status}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def check_config(file: str) -> int:
    try:
        config = load_config(file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print(_summary(file, config))
    return EXIT_OK


def serve(file: str) -> int:
    # SIGHUP asks a running gateway to reload; until its signal handling is set up (and after
    # it is gone, during the last flush) it must not end the process, as its default does (a
    # ConfigMap reloader may signal a pod that is still starting).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        config = load_config(file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    from sqlward.gateway.server import run

    try:
        run(config)
    except ConfigError as exc:  # e.g. a secret file or the audit file, opened at start-up
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as exc:  # e.g. the listen address is taken (the message names the listener)
        print(f"sqlward: {exc.strerror if exc.strerror else exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def policy_test(args: argparse.Namespace) -> int:
    import msgspec

    from sqlward.gateway.policy_check import PolicyTestError, evaluate, exit_code, format_text

    try:
        config = load_config(args.config)
        report = evaluate(
            config,
            identity=args.identity,
            target=args.target,
            sql=args.sql,
            dialect=args.dialect,
            groups=tuple(args.groups),
            actors=tuple(args.actors),
            schema=args.schema,
            expires_at=args.expires_at,
            command=args.protocol_command,
            search_path=args.search_path,
            issuer=args.issuer,
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except PolicyTestError as exc:
        print(f"sqlward policy test: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(msgspec.json.encode(report).decode())
    else:
        print(format_text(report))
    return exit_code(report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "version":
        print(version_report())
        return EXIT_OK
    if args.command == "healthcheck":
        return healthcheck(args.url, args.timeout, args.ca_file)
    if args.command == "serve":
        return serve(args.config)
    if args.command == "policy":
        if args.policy_command == "test":
            return policy_test(args)
        print("sqlward policy: expected a command: test", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "audit":
        from sqlward.gateway.audit_cli import run as audit

        return audit(args)
    if args.command == "approvals":
        from sqlward.gateway.http.client import run as approvals

        return approvals(args)
    parser.print_usage(sys.stderr)
    return EXIT_CONFIG


if __name__ == "__main__":
    raise SystemExit(main())
