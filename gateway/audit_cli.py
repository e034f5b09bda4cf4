"""`sqlward audit verify SOURCE --public-key FILE`: prove a trail untouched with only the
public key (`audit.chain.verify`).

SOURCE is a JSON-lines audit file (or `-` for standard input). The public key is a PEM file
(Ed25519 or ECDSA P-256). `--from-seq N --prev HASH` verify a window cut from a longer trail:
where the chain stood before its first record. Prints one line saying what was verified, or the
first broken link with its line number and why. Exit status: 0 verified, 1 broken, 2 usage
(an unreadable file, a key that is not a public key of a supported kind).
"""

from __future__ import annotations

import argparse
import sys

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from sqlward.audit.chain import GENESIS, PublicKey, verify

__all__ = ["add_parser", "run"]

EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="audit trail tools")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="COMMAND")
    check = audit_sub.add_parser(
        "verify", help="verify an audit trail's hash chain and signed checkpoints (exit 0 ok, 1 broken, 2 usage)",
        description="Verify a JSON-lines audit trail with the gateway's public key only.",
    )
    check.add_argument("source", metavar="SOURCE", help="the audit file (JSON lines), or - for standard input")
    check.add_argument("--public-key", required=True, metavar="FILE", help="PEM public key (Ed25519 or ECDSA P-256)")
    check.add_argument("--from-seq", type=int, default=1, metavar="N", help="a window: the chain sequence of its first record")
    check.add_argument("--prev", default=GENESIS, metavar="HASH", help="a window: the hash its first record names as prev")


def _public_key(path: str) -> PublicKey:
    with open(path, "rb") as f:
        key = load_pem_public_key(f.read())
    if isinstance(key, ed25519.Ed25519PublicKey) or (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        return key
    raise ValueError("not an Ed25519 or ECDSA P-256 public key")


def run(args: argparse.Namespace) -> int:
    if args.audit_command != "verify":
        print("sqlward audit: expected a command: verify", file=sys.stderr)
        return EXIT_USAGE
    try:
        key = _public_key(args.public_key)
    except (OSError, ValueError) as exc:
        print(f"sqlward audit verify: cannot use {args.public_key} as a public key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.source == "-":
            lines = sys.stdin.buffer.readlines()
        else:
            with open(args.source, "rb") as f:
                lines = f.readlines()
    except OSError as exc:
        print(f"sqlward audit verify: cannot read {args.source}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = verify(lines, key, prev=args.prev, seq=args.from_seq - 1)
    if not report.ok:
        print(f"{args.source}: BROKEN at line {report.line}: {report.problem} "
              f"({report.records} records and {report.checkpoints} checkpoints verified before it)")
        return EXIT_BROKEN
    tail = f"; {report.unsigned_tail} records after the last checkpoint (not yet signed, or a cut tail)" if report.unsigned_tail else ""
    print(f"{args.source}: ok, {report.records} records, {report.checkpoints} signed checkpoints{tail}")
    return EXIT_OK
