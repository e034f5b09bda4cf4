"""`sqlward audit verify | export | search | tail`: read an audit trail back (docs/audit-query.md).

SOURCE is a JSON-lines audit file with its rotated siblings, a directory of them, `-` for
standard input, or a PostgreSQL URI (`postgresql://...`, the sink's table: `--table`); see
`audit.reading` for how each is read.

    verify SOURCE --public-key FILE [--gateway G] [--window | --from-seq N --prev HASH]
        proves each chain untouched with only the public key (`audit.chain.verify`): a file set
        as one chain across its files, a table per gateway. Prints one line per chain: what was
        verified, or the first broken link (the file and line, or the gateway and seq) and why.
        `--window`: the trail is a cut-out (an export) and starts where its first record's link
        says; the line says records before that seq are not covered.
    export SOURCE --since T [--until T] [--gateway G]
        writes one chain's records from `--since` to `--until` and on to the next checkpoint
        (so the window ends on a signature and verifies with `verify --window`) to stdout.
    search SOURCE [filters] [--limit N] [--format json|table]
    tail SOURCE [-n N] [-f] [filters] [--format json|table]
        the records matching the filters (tail: the last N; `-f` follows new ones: a file through
        rotation, a table by polling; Ctrl-C ends it with exit 0).

Times are RFC 3339 (`2026-12-07T08:55:05Z`), Unix seconds, or relative (`-30m`, `-1h`, `-2d`).

Error handling: a source that cannot be read, a bad URI or time, a key that is not a supported
public key: one line on stderr, exit 2 (never a traceback). verify exits 1 when any chain is
broken. A closed stdout (`| head`) and Ctrl-C end quietly with exit 0.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from sqlward.audit import reading
from sqlward.audit.chain import GENESIS, PublicKey, Report, key_id, verify
from sqlward.audit.reading import CHECKPOINT, Filter, Line, Record, SourceError

__all__ = ["add_parser", "run"]

# 3: the chain is intact but not every record was signed by the gateway that wrote it (records
# after the last checkpoint, records adopted unsigned at a restart, no checkpoint at all).
EXIT_OK, EXIT_BROKEN, EXIT_USAGE, EXIT_UNSIGNED = 0, 1, 2, 3
Format = Literal["json", "table"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="audit trail tools: verify, export, search, tail, keygen")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="COMMAND")

    def source(p: argparse.ArgumentParser) -> None:
        # `--since -1h`: argparse takes "-1h" for an option unless it looks like a negative
        # number; this is its own test widened to a digit after the dash (as Python 3.13 has it).
        p._negative_number_matcher = re.compile(r"^-\.?\d")
        p.add_argument("source", metavar="SOURCE",
                       help="an audit file (with its rotated siblings), a directory of them, - for standard input, "
                       "or a PostgreSQL URI postgresql://...")
        p.add_argument("--table", default=reading.DEFAULT_TABLE, metavar="NAME",
                       help=f"PostgreSQL source: the audit table (default {reading.DEFAULT_TABLE}; SCHEMA.NAME allowed)")
        p.add_argument("--gateway", metavar="NAME", help="only this gateway's chain")

    check = audit_sub.add_parser(
        "verify", help="verify an audit trail's hash chain and signed checkpoints (exit 0 ok, 1 broken, 2 usage)",
        description="Verify an audit trail with the gateway's public key only: a file set as one chain across "
        "its files, a PostgreSQL table per gateway.",
    )
    source(check)
    check.add_argument("--public-key", required=True, action="append", metavar="FILE",
                       help="PEM public key (Ed25519 or ECDSA P-256); repeat for a trail that spans a key rotation")
    check.add_argument("--window", action="store_true",
                       help="a window cut from a longer trail (an export): start where its first record's chain link says")
    check.add_argument("--from-seq", type=int, default=None, metavar="N", help="a window: the chain sequence of its first record")
    check.add_argument("--prev", default=None, metavar="HASH", help="a window: the hash its first record names as prev")

    export = audit_sub.add_parser(
        "export", help="write a time window of one chain, up to the next signed checkpoint, to stdout",
        description="Write the records of a time window and everything up to and including the next checkpoint "
        "after it (so the window ends on a signature and verifies on its own with `verify --window`).",
    )
    source(export)
    export.add_argument("--since", required=True, metavar="TIME", help="start: RFC 3339, Unix seconds, or -30m, -1h, -2d")
    export.add_argument("--until", metavar="TIME", help="end (default: the end of the trail)")

    search = audit_sub.add_parser("search", help="print the records matching filters",
                                  description="Print the audit records matching every given filter.")
    source(search)
    _filters(search)
    search.add_argument("--limit", type=int, metavar="N", help="at most N records")

    tail = audit_sub.add_parser("tail", help="print the last records, and with -f new ones as they come",
                                description="Print the last N matching records; with -f keep printing new ones.")
    source(tail)
    _filters(tail)
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="how many of the last records (default 10)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records until Ctrl-C")
    tail.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                      help="-f: how often to look for new records (default 1)")
    _keygen_parser(audit_sub)


def _keygen_parser(audit_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = audit_sub.add_parser(
        "keygen", help="make a checkpoint signing key (PEM, mode 0600) and its public key (FILE.pub)",
        description="Make an audit signing key for [audit] signing_key_file: Ed25519 (default) or ECDSA P-256.",
    )
    keygen.add_argument("--out", required=True, metavar="FILE", help="the private key to write (it must not exist)")
    keygen.add_argument("--ecdsa", action="store_true", help="ECDSA P-256 (FIPS-bound deployments) instead of Ed25519")


def _keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if args.ecdsa else ed25519.Ed25519PrivateKey.generate()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(f"sqlward audit keygen: cannot create {args.out}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    with open(args.out + ".pub", "wb") as f:
        f.write(public)
    print(f"{args.out}: {'ECDSA P-256' if args.ecdsa else 'Ed25519'} signing key; public key {args.out}.pub "
          f"(key id {key_id(key.public_key())})")
    return EXIT_OK


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--identity", metavar="SUBJECT", help="records of this subject (who.subject; an approver's subject)")
    p.add_argument("--actor", metavar="NAME", help="records whose delegation chain holds this actor")
    p.add_argument("--target", metavar="T", help="records for this target")
    p.add_argument("--environment", metavar="E", help="records for this environment")
    p.add_argument("--rule", metavar="ID", help="records decided by this rule (rule_id)")
    p.add_argument("--decision", metavar="ACTION", help="statement decisions allow, deny, review, ... (or approve/reject)")
    p.add_argument("--event", action="append", default=[], metavar="NAME", help="records of this event (repeatable)")
    p.add_argument("--since", metavar="TIME", help="records at or after TIME (RFC 3339, Unix seconds, -30m, -1h, -2d)")
    p.add_argument("--until", metavar="TIME", help="records at or before TIME")
    p.add_argument("--text", metavar="SUBSTRING", help="records whose SQL text holds SUBSTRING (any case)")
    p.add_argument("--format", choices=("json", "table"), default="json", help="JSON lines as stored (default) or a table")


def _public_key(path: str) -> PublicKey:
    with open(path, "rb") as f:
        key = load_pem_public_key(f.read())
    if isinstance(key, ed25519.Ed25519PublicKey) or (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        return key
    raise ValueError("not an Ed25519 or ECDSA P-256 public key")


def run(args: argparse.Namespace) -> int:
    command = args.audit_command
    if command == "keygen":
        return _keygen(args)
    if command not in ("verify", "export", "search", "tail"):
        print("sqlward audit: expected a command: verify, export, search, tail or keygen", file=sys.stderr)
        return EXIT_USAGE
    try:
        if command == "verify":
            return _verify(args)
        if command == "export":
            return _export(args)
        if command == "search":
            return _search(args)
        return _tail(args)
    except SourceError as exc:
        print(f"sqlward audit {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `| head`: the reader has gone; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


# --- verify ------------------------------------------------------------------------------------


class _Tracker:
    """Passes lines on and remembers the last one given out: `verify` stops at the broken line,
    so the last line taken is where the problem is (its file and line, or its row's seq)."""

    def __init__(self, lines: Iterable[Line]) -> None:
        self._lines = iter(lines)
        self.count = 0
        self.last: Line | None = None
        self.files: list[str] = []
        self.restarts: dict[int, Line] = {}  # where each gateway.started is, by line count

    def __iter__(self) -> Iterator[bytes]:
        for line in self._lines:
            self.count += 1
            self.last = line
            if not self.files or self.files[-1] != line.origin:
                self.files.append(line.origin)
            if b'"event":"gateway.started"' in line.raw:
                self.restarts[self.count] = line
            yield line.raw


def _where_number(tracker: _Tracker, count: int, table: bool) -> str:
    """Where the `count`-th line given to verify is: file and line, or a table row's seq."""
    line = tracker.restarts.get(count)
    if line is None:
        return f"line {count}"
    return f"seq {line.number}" if table else f"{line.origin} line {line.number}"


def _verify(args: argparse.Namespace) -> int:
    if args.window and (args.from_seq is not None or args.prev is not None):
        raise SourceError("--window takes the start from the first record: not with --from-seq / --prev")
    keys: list[PublicKey] = []
    for path in args.public_key:
        try:
            keys.append(_public_key(path))
        except (OSError, ValueError) as exc:
            print(f"sqlward audit verify: cannot use {path} as a public key: {exc}", file=sys.stderr)
            return EXIT_USAGE
    source = reading.open_source(args.source, table=args.table)
    table = isinstance(source, reading.Table)
    status = EXIT_OK
    seen = 0
    for chain in reading.chains(source, gateway=args.gateway):
        seen += 1
        name = f"{source.name} {'.'.join(source.table)} gateway {chain.name}" if isinstance(source, reading.Table) else (
            args.source if isinstance(source, reading.Stdin) or chain.name == args.source else chain.name)
        lines = chain.lines
        window = ""
        seq = (args.from_seq or 1) - 1
        prev = args.prev or GENESIS
        if args.window:
            first = next(lines, None)
            if first is not None:
                record = reading.decode(first.raw)
                link = record.chain if record is not None else None
                if link is None:
                    print(f"{_where(first, table)}: BROKEN: the window's first record has no chain link")
                    status = EXIT_BROKEN
                    continue
                seq, prev = link.seq - 1, link.prev
                lines = _prepend(first, lines)
            window = f"a window from seq {seq + 1} (records before it are not covered), "
        tracker = _Tracker(lines)
        report = verify(tracker, keys, prev=prev, seq=seq)
        if not report.ok:
            status = EXIT_BROKEN
            print(_broken(name, report, tracker, table, hint=not args.window and args.from_seq is None))
            continue
        files = f" ({len(tracker.files)} files: {', '.join(tracker.files)})" if len(tracker.files) > 1 else ""
        unsigned = []
        if report.unsigned_tail:
            unsigned.append(f"{report.unsigned_tail} records after the last checkpoint (not yet signed, or a cut tail)")
        if report.adopted:
            at = ", ".join(_where_number(tracker, n, table) for n in report.restarts)
            unsigned.append(f"{report.adopted} records no checkpoint covered before the gateway restarted at {at} "
                            "(written before a crash, or added while it was down: never signed by their writer)")
        if not report.checkpoints:
            unsigned.append("no signed checkpoint at all: nothing here is vouched for")
        if report.vouched:
            print(f"{name}: ok, {window}{report.records} records, {report.checkpoints} signed checkpoints{files}")
        else:
            status = max(status, EXIT_UNSIGNED) if status != EXIT_BROKEN else status
            print(f"{name}: intact but not all signed (exit 3), {window}{report.records} records, "
                  f"{report.checkpoints} signed checkpoints; " + "; ".join(unsigned) + files)
    if not seen:
        raise SourceError(f"{source.name}: no records" + (f" of gateway {args.gateway}" if args.gateway else ""))
    return status


def _prepend(first: Line, rest: Iterator[Line]) -> Iterator[Line]:
    yield first
    yield from rest


def _where(line: Line, table: bool) -> str:
    return f"gateway {line.gateway} seq {line.number}" if table else f"{line.origin} line {line.number}"


def _broken(name: str, report: Report, tracker: _Tracker, table: bool, *, hint: bool) -> str:
    line = tracker.last
    so_far = f"({report.records} records and {report.checkpoints} checkpoints verified before it)"
    extra = ""
    if hint and report.line == 1 and "where 1 was due" in report.problem:
        extra = "; the trail does not start at the chain's beginning: older records removed? (--window)"
    if line is None or report.line != tracker.count:
        return f"{name}: BROKEN at line {report.line}: {report.problem} {so_far}{extra}"
    if table:
        return f"{name}: BROKEN at seq {line.number}: {report.problem} {so_far}{extra}"
    return f"{line.origin}: BROKEN at line {line.number}: {report.problem} {so_far}{extra}"


# --- export ------------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    since = reading.parse_time(args.since)
    until = reading.parse_time(args.until) if args.until else None
    source = reading.open_source(args.source, table=args.table)
    gateway = args.gateway
    if gateway is None and not isinstance(source, reading.Stdin):
        names = reading.gateways(source)
        if len(names) > 1:
            raise SourceError(f"{source.name} holds several chains ({', '.join(names)}): pick one with --gateway")
    out = sys.stdout.buffer
    written = signed = 0
    first_seq = last_seq = None
    found = reading.chains(source, gateway=gateway, since=since)
    chain = next(found, None)
    closing = last_was_checkpoint = False
    for line in chain.lines if chain is not None else ():
        record = line.record
        checkpoint = record is not None and record.event == CHECKPOINT
        when = record.time if record is not None else None
        if until is not None and when is not None and when > until and not closing:
            if written == 0 or last_was_checkpoint:
                break
            closing = True
        out.write(line.raw)
        written += 1
        link = record.chain if record is not None else None
        if link is not None:
            first_seq = link.seq if first_seq is None else first_seq
            last_seq = link.seq
        last_was_checkpoint = checkpoint
        if checkpoint:
            signed = written
            if closing:
                break
    found.close()
    out.flush()
    if not written:
        print("sqlward audit export: no records in the window", file=sys.stderr)
    elif signed == written:
        print(f"sqlward audit export: {written} lines (chain seq {first_seq}-{last_seq}), ending on a signed checkpoint",
              file=sys.stderr)
    else:
        print(f"sqlward audit export: {written} lines (chain seq {first_seq}-{last_seq}); the last {written - signed} "
              "are not yet covered by a checkpoint (the trail has none after them yet)", file=sys.stderr)
    return EXIT_OK


# --- search and tail ---------------------------------------------------------------------------


def _filter(args: argparse.Namespace) -> Filter:
    return Filter(
        gateway=args.gateway, events=tuple(args.event),
        since=reading.parse_time(args.since) if args.since else None,
        until=reading.parse_time(args.until) if args.until else None,
        identity=args.identity, actor=args.actor, target=args.target, environment=args.environment,
        rule=args.rule, decision=args.decision, text=args.text,
    )


def _search(args: argparse.Namespace) -> int:
    flt = _filter(args)
    if args.limit is not None and args.limit < 0:
        raise SourceError("--limit: expected a number of records, 0 or more")
    source = reading.open_source(args.source, table=args.table)
    lines = reading.search(source, flt)
    if args.limit is not None:
        lines = _first(lines, args.limit)
    _print(lines, args.format)
    return EXIT_OK


def _tail(args: argparse.Namespace) -> int:
    flt = _filter(args)
    if args.lines < 0 or args.interval <= 0:
        raise SourceError("-n: expected 0 or more; --interval: expected more than 0 seconds")
    source = reading.open_source(args.source, table=args.table)
    _print(reading.tail(source, flt, args.lines, follow=args.follow, poll=args.interval), args.format)
    return EXIT_OK


def _first(lines: Iterator[Line], n: int) -> Iterator[Line]:
    for i, line in enumerate(lines):
        if i >= n:
            return
        yield line


_COLUMNS = ("TIME", "GATEWAY", "EVENT", "IDENTITY", "TARGET", "DECISION", "SQL")
_CAPS = (24, 20, 24, 32, 20, 32, 100)
_SAMPLE = 50  # rows that size the columns; later rows are cut to fit


def _print(lines: Iterable[Line], fmt: Format) -> None:
    out = sys.stdout.buffer
    sys.stdout.flush()
    if fmt == "json":
        for line in lines:
            out.write(line.raw)
            out.flush()
        return
    it = iter(lines)
    sample: list[tuple[str, ...]] = []
    for line in it:
        sample.append(_row(line))
        if len(sample) >= _SAMPLE:
            break
    widths = [min(cap, max([len(h), *(len(r[i]) for r in sample)])) for i, (h, cap) in enumerate(zip(_COLUMNS, _CAPS))]

    def emit(row: tuple[str, ...]) -> None:
        cells = [_cut(c, w).ljust(w) for c, w in zip(row, widths)]
        out.write(("  ".join(cells).rstrip() + "\n").encode())
        out.flush()

    emit(_COLUMNS)
    for row in sample:
        emit(row)
    for line in it:
        emit(_row(line))


def _row(line: Line) -> tuple[str, ...]:
    r = line.record or Record()
    who = r.who.subject if r.who is not None else (r.approver.subject if r.approver is not None else "")
    if r.who is not None and r.who.actor:
        who += " via " + ",".join(r.who.actor)
    decision = " ".join(x for x in (r.action or r.verdict, r.rule_id or ",".join(r.rules)) if x)
    if r.event == CHECKPOINT and r.covers_seq is not None:
        decision = f"signs seq {r.covers_seq}"
    when = r.time_text or (_time_text(r.time) if r.time is not None else "")
    return tuple(_show(x) for x in (when, r.gateway, r.event, who, r.target, decision, r.sql))


def _time_text(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, as the envelope's time_text (checkpoints carry only time)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


def _show(text: str) -> str:
    """Text safe for a terminal: control characters and spaces other than U+0020 escaped."""
    return "".join(c if c == " " or (c.isprintable() and not c.isspace()) else ascii(c)[1:-1] for c in text)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"
