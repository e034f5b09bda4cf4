"""Reading audit trails back from where the sinks keep them (`sqlward audit verify / export /
search / tail`, gateway/audit_cli.py).

How it works. `open_source(text)` turns a SOURCE argument into one of:

- `Stdin` (`-`): one chain, read once;
- `Files`: one or more *file sets*, each one gateway's chain. A path to a file is that file with
  its rotated siblings, named as the file sink rotates (``<name>.<UTC time>[.n]``:
  ``audit.jsonl.20261207T101500Z``, ``...Z.1``); siblings come first in name order (their names
  sort in time order), the named file last (when it is gone, the siblings alone). A path naming
  a rotated file is read alone. A directory holds one set per live file name, with or without
  the live file (hidden files, subdirectories and files that do not start with a JSON object are
  skipped);
- `Table` (`postgresql://...` or `postgres://...`): the PostgreSQL sink's table (default
  ``sqlward_audit``: gateway, seq, time, event, line; PRIMARY KEY (gateway, seq)), one chain per
  gateway. Rows are read through server-side cursors per gateway in `seq` order (the primary
  key's index), so a large table streams; the gateways are listed with a loose index scan.
  Time, gateway and event filters go into the SQL, always as parameters; the table name is
  quoted as an identifier (``schema.table`` allowed).

Every line comes out as a `Line`: the raw bytes with their newline (what the chain hashes),
where it came from (a file and its 1-based line number, or the table and the row's `seq`), and
the chain (gateway) it belongs to. Four readers over a source:

- `chains(source, gateway=, since=)`: each chain's lines in order (for verify); with `since`,
  each chain from its first record at or after that time, contiguous to its end (for export);
- `search(source, flt)`: the records matching a `Filter`, the chains merged by record time;
- `tail(source, flt, n, follow=)`: the last `n` matching records, then (`follow`) new ones as
  they come: a file set's live file is read on as it grows and reopened by path when rotation
  replaces it (after draining the old one); a table is polled every `poll` seconds for rows
  beyond each gateway's last `seq` seen.

Records are decoded into `Record`, a typed view holding only the fields the filters and the
table output need (msgspec ignores the rest); a line that is not such an object decodes to None
and is skipped by search and tail (verify is the tool that says what is wrong with it).

Error handling: everything a user can get wrong or that the environment can refuse (a missing or
unreadable path, a bad URI, a server that refuses, a missing table, a bad time) raises
`SourceError` with a one-line message; the CLI prints it and exits 2.
"""

from __future__ import annotations

import contextlib
import datetime
import heapq
import itertools
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

__all__ = [
    "CHECKPOINT", "DEFAULT_TABLE", "ChainLines", "FileSet", "Files", "Filter", "Line", "Record", "Source",
    "SourceError", "Stdin", "Table",
    "chains", "decode", "gateways", "open_source", "parse_time", "search", "tail",
]

DEFAULT_TABLE = "sqlward_audit"
CHECKPOINT = "audit.checkpoint"
_ITERSIZE = 2000


class SourceError(Exception):
    """A source that cannot be read, or an argument about it that makes no sense (one line)."""


# ---------------------------------------------------------------------------------------------
# Records


class _Who(msgspec.Struct, frozen=True):
    subject: str = ""
    actor: tuple[str, ...] = ()


class _Approver(msgspec.Struct, frozen=True):
    subject: str = ""


class _Link(msgspec.Struct, frozen=True):
    v: int = 0
    seq: int = 0
    prev: str = ""


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of an audit line that search and the table output read (audit/events.py);
    absent ones keep their defaults. `chain` is the link `audit.chain` added."""

    event: str = ""
    time: float | None = None
    time_text: str = ""
    gateway: str = ""
    who: _Who | None = None
    approver: _Approver | None = None  # approval.decided
    target: str = ""
    environment: str = ""
    action: str = ""  # statement.decided: allow, deny, review, ...
    verdict: str = ""  # approval.decided: approve, reject
    rule_id: str = ""
    rules: tuple[str, ...] = ()  # approval.requested
    sql: str = ""
    covers_seq: int | None = None  # audit.checkpoint
    chain: _Link | None = None


_record_decoder = msgspec.json.Decoder(Record)


def decode(raw: bytes) -> Record | None:
    """The `Record` view of one line, or None when it is not an audit record's JSON object."""
    try:
        return _record_decoder.decode(raw)
    except msgspec.DecodeError:  # includes ValidationError (a field of another type)
        return None


class Filter(msgspec.Struct, frozen=True, kw_only=True):
    """What search and tail keep. Every given criterion must hold; identity, actor, target,
    environment, rule and decision only match records that carry them. Times are Unix seconds
    (records without a time, checkpoints, do not match a time range). `text` is a substring of
    the SQL text, case-insensitive."""

    gateway: str | None = None
    events: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    identity: str | None = None
    actor: str | None = None
    target: str | None = None
    environment: str | None = None
    rule: str | None = None
    decision: str | None = None
    text: str | None = None

    def matches(self, r: Record) -> bool:
        if self.gateway is not None and r.gateway != self.gateway:
            return False
        if self.events and r.event not in self.events:
            return False
        if self.since is not None and (r.time is None or r.time < self.since):
            return False
        if self.until is not None and (r.time is None or r.time > self.until):
            return False
        if self.identity is not None:
            subjects = {x.subject for x in (r.who, r.approver) if x is not None}
            if self.identity not in subjects:
                return False
        if self.actor is not None and (r.who is None or self.actor not in r.who.actor):
            return False
        if self.target is not None and r.target != self.target:
            return False
        if self.environment is not None and r.environment != self.environment:
            return False
        if self.rule is not None and self.rule != r.rule_id and self.rule not in r.rules:
            return False
        if self.decision is not None and self.decision not in (r.action, r.verdict):
            return False
        if self.text is not None and self.text.casefold() not in r.sql.casefold():
            return False
        return True


# ---------------------------------------------------------------------------------------------
# Times

_RELATIVE = re.compile(r"-?(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_UNIX = re.compile(r"\d+(?:\.\d+)?")


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from RFC 3339 / ISO 8601 text (UTC when no offset is given), Unix seconds,
    ``now``, or a time relative to now: ``-30s``, ``-30m``, ``-1h``, ``-2d``, ``-1w``."""
    t = text.strip()
    current = time.time() if now is None else now
    if t == "now":
        return current
    if m := _RELATIVE.fullmatch(t):
        return current - float(m[1]) * _UNITS[m[2]]
    if _UNIX.fullmatch(t):
        return float(t)
    try:
        when = datetime.datetime.fromisoformat(t)
    except ValueError:
        raise SourceError(
            f"not a time: {text!r} (RFC 3339 like 2026-12-07T08:55:05Z, or relative like -1h, -30m, -2d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


# ---------------------------------------------------------------------------------------------
# Sources


class Line(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a trail: `raw` ends in a newline (the bytes the chain hashes); `origin` is the
    file (or ``table NAME``) and `number` its 1-based line there (or the row's seq); `gateway`
    the chain it belongs to; `record` its decoded view when the reader decoded it."""

    raw: bytes
    origin: str
    number: int
    gateway: str
    record: Record | None = None


class ChainLines(msgspec.Struct, frozen=True, kw_only=True):
    """One chain of a source: `name` is the gateway (a table) or the live file (a file set)."""

    name: str
    gateway: str
    lines: Iterator[Line]


class Stdin(msgspec.Struct, frozen=True):
    """`-`: standard input."""

    name: str = "-"


class FileSet(msgspec.Struct, frozen=True):
    """One chain kept in files: rotated siblings in order, then the live file (`live`)."""

    live: Path
    files: tuple[Path, ...]


class Files(msgspec.Struct, frozen=True):
    name: str
    sets: tuple[FileSet, ...]


class Table(msgspec.Struct, frozen=True):
    """A PostgreSQL sink's table; `name` is the URI without its password (for messages)."""

    conninfo: str
    table: tuple[str, ...]
    name: str


Source = Stdin | Files | Table


_ROTATED = re.compile(r"(.+)\.\d{8}T\d{6}Z(?:\.\d+)?")


def _table_name(text: str) -> tuple[str, ...]:
    parts = tuple(text.split("."))
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise SourceError(f"--table: expected NAME or SCHEMA.NAME, not {text!r}")
    return parts


def _redacted(uri: str) -> str:
    try:
        info = psycopg.conninfo.conninfo_to_dict(uri)
    except psycopg.Error as exc:  # its text may quote the URI, password and all: not repeated
        reason = _first_line(exc).replace(uri, "the URI")
        raise SourceError(f"not a PostgreSQL URI (postgresql://USER@HOST:PORT/DBNAME?...): {reason}") from None
    host = str(info.get("host", ""))
    port = f":{info['port']}" if info.get("port") else ""
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}{port}/{info.get('dbname', '')}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _live_name(name: str) -> str | None:
    """The live file a rotated file's name comes from (``audit.jsonl.20261207T093000Z.1`` ->
    ``audit.jsonl``, the names audit/sinks/file.py gives), or None for another name."""
    m = _ROTATED.fullmatch(name)
    return m[1] if m else None


def _rotation_order(p: Path) -> tuple[str, str, int]:
    """Sort key of rotated files: live name, time stamp, then the clash counter as a number
    (``.9`` before ``.10``, whether padded or not)."""
    m = _ROTATED.fullmatch(p.name)
    if m is None:
        return (p.name, "", 0)
    stamp, _, n = p.name[len(m[1]) + 1:].partition(".")
    return (m[1], stamp, int(n) if n.isdigit() else 0)


def _siblings(path: Path, names: Iterable[str]) -> list[Path]:
    """`path`'s rotated files among `names`, oldest first."""
    return sorted((path.parent / n for n in names if _live_name(n) == path.name), key=_rotation_order)


def _file_sets_of_directory(directory: Path) -> tuple[FileSet, ...]:
    """One set per live file name (rotated files are grouped by it, whether the live file is
    still there or not)."""
    try:
        names = sorted(e.name for e in os.scandir(directory) if e.is_file() and not e.name.startswith("."))
    except OSError as exc:
        raise SourceError(f"cannot read {directory}: {exc.strerror or exc}") from None
    names = [n for n in names if _json_lines(directory / n)]
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(_live_name(n) or n, []).append(n)
    sets = []
    for live, members in groups.items():
        rotated = sorted((directory / n for n in members if n != live), key=_rotation_order)
        sets.append(FileSet(directory / live, (*rotated, *([directory / live] if live in members else []))))
    if not sets:
        raise SourceError(f"{directory}: no audit files in this directory")
    return tuple(sets)


def _json_lines(path: Path) -> bool:
    """Whether a file of a directory looks like a trail: empty (a live file just rotated) or
    starting with a JSON object (keys, READMEs and the like beside the files are skipped)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256).lstrip()
    except OSError:
        return True  # reading it will say why
    return not head or head.startswith(b"{")


def open_source(text: str, *, table: str = DEFAULT_TABLE) -> Source:
    """The source a SOURCE argument names (module doc); SourceError when it cannot be read."""
    if text == "-":
        return Stdin()
    if text.startswith(("postgresql://", "postgres://")):
        return Table(text, _table_name(table), _redacted(text))
    path = Path(text)
    if path.is_dir():
        return Files(text, _file_sets_of_directory(path))
    try:
        names = [e.name for e in os.scandir(path.parent) if e.is_file()]
    except OSError:
        names = []
    siblings = _siblings(path, names)
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        if siblings:  # the live file is gone (moved after the gateway stopped): its rotated files
            return Files(text, (FileSet(path, tuple(siblings)),))
        raise SourceError(f"cannot read {text}: no such file") from None
    except OSError as exc:
        raise SourceError(f"cannot read {text}: {exc.strerror or exc}") from None
    files = (path,) if _live_name(path.name) is not None else (*siblings, path)
    return Files(text, (FileSet(path, files),))


# ---------------------------------------------------------------------------------------------
# Files


def _file_lines(paths: Iterable[Path], gateway: str, *, decoded: bool) -> Iterator[Line]:
    for path in paths:
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
        with f:
            yield from _stream_lines(f, str(path), gateway, decoded=decoded)


def _stream_lines(f: BinaryIO, origin: str, gateway: str, *, decoded: bool, start: int = 0) -> Iterator[Line]:
    try:
        for number, raw in enumerate(f, start + 1):
            if not raw.endswith(b"\n"):
                raw += b"\n"
            yield Line(raw=raw, origin=origin, number=number, gateway=gateway,
                       record=decode(raw) if decoded else None)
    except OSError as exc:
        raise SourceError(f"cannot read {origin}: {exc.strerror or exc}") from None


def _gateway_of(files: Iterable[Path], default: str) -> str:
    """The gateway named by a file set's first record (a file holds one gateway's chain)."""
    for path in files:
        with contextlib.suppress(OSError), open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    record = decode(raw)
                    return record.gateway if record is not None and record.gateway else default
    return default


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@contextlib.contextmanager
def _pg_errors(source: Table) -> Iterator[None]:
    try:
        yield
    except psycopg.errors.UndefinedTable:
        raise SourceError(f"{source.name}: no table {'.'.join(source.table)}") from None
    except psycopg.Error as exc:
        raise SourceError(f"{source.name}: {_first_line(exc)}") from None


def _connect(source: Table) -> psycopg.Connection[TupleRow]:
    with _pg_errors(source):
        return psycopg.connect(source.conninfo, connect_timeout=10, application_name="sqlward audit")


def _gateways(conn: psycopg.Connection[TupleRow], source: Table, only: str | None) -> list[str]:
    """The table's gateways in order, by a loose index scan over the primary key."""
    t = sql.Identifier(*source.table)
    query = sql.SQL(
        "WITH RECURSIVE g(gateway) AS ("
        " (SELECT gateway FROM {t} ORDER BY gateway LIMIT 1)"
        " UNION ALL"
        " SELECT (SELECT gateway FROM {t} WHERE gateway > g.gateway ORDER BY gateway LIMIT 1)"
        " FROM g WHERE g.gateway IS NOT NULL"
        ") SELECT gateway FROM g WHERE gateway IS NOT NULL"
    ).format(t=t)
    names = [str(row[0]) for row in conn.execute(query)]
    return [n for n in names if only is None or n == only]


def _rows(
    conn: psycopg.Connection[TupleRow], source: Table, gateway: str, *,
    start_at: float | None = None, since: float | None = None, until: float | None = None,
    events: tuple[str, ...] = (), after_seq: int | None = None, descending: bool = False,
    decoded: bool = False,
) -> Iterator[Line]:
    """One gateway's rows in seq order through a server-side cursor. `start_at`: from the first
    row at or after that time, contiguously; `since`/`until`/`events`: only rows that match."""
    t = sql.Identifier(*source.table)
    where: list[sql.Composable] = [sql.SQL("gateway = %s")]
    params: list[object] = [gateway]
    if start_at is not None:
        where.append(sql.SQL("seq >= (SELECT min(seq) FROM {t} WHERE gateway = %s AND time >= %s)").format(t=t))
        params += [gateway, _utc(start_at)]
    if since is not None:
        where.append(sql.SQL("time >= %s"))
        params.append(_utc(since))
    if until is not None:
        where.append(sql.SQL("time <= %s"))
        params.append(_utc(until))
    if events:
        where.append(sql.SQL("event = ANY(%s)"))
        params.append(list(events))
    if after_seq is not None:
        where.append(sql.SQL("seq > %s"))
        params.append(after_seq)
    query = sql.SQL("SELECT seq, line, event, time FROM {t} WHERE {w} ORDER BY seq {d}").format(
        t=t, w=sql.SQL(" AND ").join(where), d=sql.SQL("DESC" if descending else "ASC"))
    origin = f"table {'.'.join(source.table)}"
    with _pg_errors(source), conn.cursor(name=f"sqlward_audit_{id(where):x}") as cur:
        cur.itersize = _ITERSIZE
        cur.execute(query, params)
        for seq, text, event, when in cur:
            raw = str(text).encode() + b"\n"
            record = decode(raw)
            mismatch = _row_mismatch(record, int(seq), gateway, str(event), when)
            if mismatch:
                # The columns search filters on must say what the verified line says: a row whose
                # event, time or key was edited is reported where verify reads it.
                raw = msgspec.json.encode({"row_edited": f"seq {seq}: the row's {mismatch} does not match its line"}) + b"\n"
                record = None
            yield Line(raw=raw, origin=origin, number=int(seq), gateway=gateway, record=record if decoded else None)


def _row_mismatch(record: Record | None, seq: int, gateway: str, event: str, when: datetime.datetime) -> str:
    """Which column of a sink row disagrees with its line ("" when none)."""
    if record is None or record.chain is None:
        return ""  # verify reports the line itself
    if record.chain.seq != seq:
        return "seq"
    if record.gateway and record.gateway != gateway:
        return "gateway"
    if record.event != event:
        return "event"
    if record.time is not None and abs(when.timestamp() - record.time) > 0.001:
        return "time"
    return ""


def _max_seq(conn: psycopg.Connection[TupleRow], source: Table, gateway: str) -> int:
    query = sql.SQL("SELECT max(seq) FROM {t} WHERE gateway = %s").format(t=sql.Identifier(*source.table))
    row = conn.execute(query, [gateway]).fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


# ---------------------------------------------------------------------------------------------
# Readers


def chains(source: Source, *, gateway: str | None = None, since: float | None = None) -> Iterator[ChainLines]:
    """Each chain of `source` (module doc); `gateway`: only that one. With `since`, each chain
    starts at its first record at or after `since` (lines are then decoded: `Line.record`)."""
    decoded = since is not None
    if isinstance(source, Stdin):
        lines = _stream_lines(sys.stdin.buffer, "-", "-", decoded=decoded)
        yield ChainLines(name="-", gateway="-", lines=_from(lines, since))
        return
    if isinstance(source, Files):
        for fs in source.sets:
            name = _gateway_of(fs.files, str(fs.live))
            if gateway is not None and name != gateway:
                continue
            yield ChainLines(name=str(fs.live), gateway=name, lines=_from(_file_lines(fs.files, name, decoded=decoded), since))
        return
    conn = _connect(source)
    with conn, _pg_errors(source):
        for name in _gateways(conn, source, gateway):
            yield ChainLines(name=name, gateway=name, lines=_rows(conn, source, name, start_at=since, decoded=decoded))


def _from(lines: Iterator[Line], since: float | None) -> Iterator[Line]:
    if since is None:
        yield from lines
        return
    started = False
    for line in lines:
        if not started:
            r = line.record
            if r is None or r.time is None or r.time < since:
                continue
            started = True
        yield line


def _key(line: Line) -> tuple[float, str, int]:
    r = line.record
    return (r.time if r is not None and r.time is not None else 0.0, line.gateway, line.number)


def _matching(lines: Iterable[Line], flt: Filter) -> Iterator[Line]:
    return (line for line in lines if line.record is not None and flt.matches(line.record))


def search(source: Source, flt: Filter) -> Iterator[Line]:
    """The lines whose records match `flt`, each chain in order, the chains merged by time."""
    if isinstance(source, Stdin):
        yield from _matching(_stream_lines(sys.stdin.buffer, "-", "-", decoded=True), flt)
        return
    if isinstance(source, Files):
        yield from heapq.merge(
            *(_matching(_file_lines(fs.files, str(fs.live), decoded=True), flt) for fs in source.sets), key=_key)
        return
    conn = _connect(source)
    with conn, _pg_errors(source):
        streams = [
            _matching(_rows(conn, source, g, since=flt.since, until=flt.until, events=flt.events, decoded=True), flt)
            for g in _gateways(conn, source, flt.gateway)
        ]
        yield from heapq.merge(*streams, key=_key)


def tail(source: Source, flt: Filter, n: int, *, follow: bool = False, poll: float = 1.0) -> Iterator[Line]:
    """The last `n` lines matching `flt` (in time order), then with `follow` every new matching
    line as it is written, until the caller stops (module doc)."""
    if isinstance(source, Stdin):
        yield from _last(_matching(_stream_lines(sys.stdin.buffer, "-", "-", decoded=True), flt), n)
        return  # standard input has nothing to follow once it has ended
    if isinstance(source, Files):
        yield from _tail_files(source, flt, n, follow, poll)
        return
    yield from _tail_table(source, flt, n, follow, poll)


def _last(lines: Iterable[Line], n: int) -> list[Line]:
    return list(deque(lines, maxlen=n)) if n > 0 else []


class _Follower:
    """The live file of a file set, read on as it grows (module doc). `lines()` returns the
    complete lines appended since the last call; when the path names another file (rotation),
    the old one is drained first, then the new one is read from its start; a file that shrank
    (truncated) is read again from its start."""

    def __init__(self, path: Path, gateway: str) -> None:
        self.path = path
        self.gateway = gateway
        self.file: BinaryIO | None = None
        self.ident: tuple[int, int] | None = None
        self.number = 0
        self.partial = b""
        self._open()

    def _open(self) -> None:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return  # between the rename and the new file: try again later
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        st = os.fstat(f.fileno())
        self.file, self.ident, self.number, self.partial = f, (st.st_dev, st.st_ino), 0, b""

    def _read(self, final: bool = False) -> list[Line]:
        if self.file is None:
            return []
        data = self.partial + self.file.read()
        *complete, self.partial = data.split(b"\n")
        if final and self.partial:
            complete.append(self.partial)
            self.partial = b""
        out = []
        for raw in complete:
            self.number += 1
            raw += b"\n"
            out.append(Line(raw=raw, origin=str(self.path), number=self.number, gateway=self.gateway, record=decode(raw)))
        return out

    def lines(self) -> list[Line]:
        out = self._read()
        if out:
            return out
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self.file is None:
            self._open()
            return self._read()
        if (st.st_dev, st.st_ino) != self.ident:
            out = self._read(final=True)  # drain the rotated file: the writer may have added to it
            self.file.close()
            self.file = None
            self._open()
            return out + self._read()
        if st.st_size < self.file.tell():
            self.file.seek(0)
            self.number, self.partial = 0, b""
            return self._read()
        return []

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _tail_files(source: Files, flt: Filter, n: int, follow: bool, poll: float) -> Iterator[Line]:
    followers = [_Follower(fs.live, str(fs.live)) for fs in source.sets]
    try:
        earlier = []
        for fs, live in zip(source.sets, followers):
            older = tuple(f for f in fs.files if f != fs.live) if n > 0 else ()  # -n 0: only what comes
            rotated = _file_lines(older, str(fs.live), decoded=True)
            earlier.append(_last(_matching(itertools.chain(rotated, live.lines()), flt), n))
        yield from _last(heapq.merge(*earlier, key=_key), n)
        while follow:
            new = sorted((line for f in followers for line in _matching(f.lines(), flt)), key=_key)
            yield from new
            if not new:
                time.sleep(poll)
    finally:
        for f in followers:
            f.close()


def _tail_table(source: Table, flt: Filter, n: int, follow: bool, poll: float) -> Iterator[Line]:
    conn = _connect(source)
    with conn, _pg_errors(source):
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # the marks and the tail agree
        marks: dict[str, int] = {}
        last: list[Line] = []
        with conn.transaction():
            for g in _gateways(conn, source, flt.gateway):
                marks[g] = _max_seq(conn, source, g)
                rows = _rows(conn, source, g, since=flt.since, until=flt.until, events=flt.events,
                             descending=True, decoded=True)
                last += reversed(list(_first(_matching(rows, flt), n)))
        yield from sorted(last, key=_key)[-n:] if n > 0 else []
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        while follow:
            new: list[Line] = []
            with conn.transaction():
                for g in _gateways(conn, source, flt.gateway):
                    for line in _rows(conn, source, g, after_seq=marks.get(g, 0), decoded=True):
                        marks[g] = line.number
                        if line.record is not None and flt.matches(line.record):
                            new.append(line)
            yield from sorted(new, key=_key)
            time.sleep(poll)


def _first(lines: Iterator[Line], n: int) -> Iterator[Line]:
    for i, line in enumerate(lines):
        if i >= n:
            return
        yield line


def gateways(source: Source) -> list[str]:
    """The chains a source holds, by gateway name (a file set's from its first record, or its
    live file's path when it has none; ``-`` for standard input)."""
    if isinstance(source, Stdin):
        return ["-"]
    if isinstance(source, Files):
        return [_gateway_of(fs.files, str(fs.live)) for fs in source.sets]
    conn = _connect(source)
    with conn, _pg_errors(source):
        return _gateways(conn, source, None)
