"""The `sqlward` command line.

How it works: `main(argv)` parses the arguments with argparse and dispatches to one function per
subcommand, each returning the process exit code (0 ok, 1 runtime failure, 2 usage or
configuration error). Configuration problems are printed as the `ConfigError` message
(``FILE: $.path: what was expected``), never as a traceback.

    sqlward check-config FILE      validate a config file, print a one-line summary
    sqlward serve --config FILE    load the config and run the gateway until SIGINT / SIGTERM
    sqlward --version

`gateway.server` is imported only by `serve`, so `check-config` stays fast and works without the
server's dependencies being importable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.config import Config, ConfigError, load_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _version() -> str:
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
    parser.add_argument("--version", action="version", version=f"sqlward {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", metavar="FILE", help="TOML configuration file")

    serve = sub.add_parser("serve", help="run the gateway until SIGINT / SIGTERM")
    serve.add_argument("--config", "-c", required=True, metavar="FILE", help="TOML configuration file")
    return parser


def _summary(file: str, config: Config) -> str:
    return (
        f"{file}: ok ({len(config.listeners)} listeners, {len(config.targets)} targets, "
        f"{len(config.identities)} identities, {len(config.rules)} rules)"
    )


def check_config(file: str) -> int:
    try:
        config = load_config(file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print(_summary(file, config))
    return EXIT_OK


def serve(file: str) -> int:
    try:
        config = load_config(file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    from gateway.server import run

    try:
        run(config)
    except ConfigError as exc:  # e.g. a secret file or the audit file, opened at start-up
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as exc:  # e.g. the listen address is taken
        print(f"sqlward: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "serve":
        return serve(args.config)
    parser.print_usage(sys.stderr)
    return EXIT_CONFIG


if __name__ == "__main__":
    raise SystemExit(main())
