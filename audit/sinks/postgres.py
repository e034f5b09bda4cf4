"""The PostgreSQL audit sink: the trail in a table that every replica of the gateway shares.

`PostgresDestination` is the `audit.sinks.Destination` behind a spool (`audit.spool.Spool`;
`audit.spool.remote_sink` builds both from an `[[audit.sinks]]` table with kind = "postgres"). How it works:

- One connection (sync psycopg 3), used only in a worker thread (`trio.to_thread.run_sync`), one
  call at a time; the trio thread never blocks on the database. A failed call drops the
  connection, and the next call connects again (the spool retries with backoff). Each call is
  bounded: `connect_timeout`, `statement_timeout` and `tcp_user_timeout` come from `timeout`
  (they, `client_encoding` and `application_name` override the same settings in the DSN).
- On first use the table is created when it is missing (a role that may only insert finds it
  made by an administrator: docs/audit-sinks-remote.md):

      CREATE TABLE <table> (gateway text NOT NULL, seq bigint NOT NULL,
                            time timestamptz NOT NULL, event text NOT NULL, line text NOT NULL,
                            PRIMARY KEY (gateway, seq));
      CREATE INDEX <table>_time_idx ON <table> (time);

  `line` is the linked JSON line exactly as written, without its newline (a verifier hashes
  `line || '\\n'`); `gateway`, `seq` (the chain's), `time` (the record's Unix seconds; a record
  without one, such as a checkpoint, takes the time of the record before it in the batch, else
  the insert's) and `event` are read from each line for searching. The connection uses
  client_encoding UTF8 and refuses a database whose encoding is not UTF8 (a conversion could
  change the bytes, and the hashes with them).
- `deliver(lines)` inserts a batch in one transaction with one statement over arrays
  (`INSERT ... SELECT FROM unnest(...) ON CONFLICT (gateway, seq) DO NOTHING RETURNING seq`). A
  row that was not inserted is a batch sent again after a crash, and must hold the same line:
  when it holds another, the transaction is rolled back and `ConflictError` says so (two gateways
  configured with the same name, or an edited row). That error repeats on every retry, so the
  spool stops delivering and reports it, and the records stay in the spool.
- `last_link(gateway)` reads the row with the highest seq of that gateway: (seq, SHA-256 of
  `line || '\\n'`).
"""

from __future__ import annotations

import hashlib

import msgspec
import psycopg
import trio
from psycopg import sql
from psycopg.rows import TupleRow

from sqlward.audit.sinks import SinkError, read_linked
from sqlward.audit.spool import RemoteSinkSettings

__all__ = ["ConflictError", "PostgresDestination", "make_destination"]


class ConflictError(SinkError):
    """A row already holds this (gateway, seq) with another line."""




def _int(value: object) -> int:
    if not isinstance(value, int):
        raise SinkError(f"postgres sink: expected an integer from the table, got {type(value).__name__}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise SinkError(f"postgres sink: expected text from the table, got {type(value).__name__}")
    return value


class _Rows(msgspec.Struct, frozen=True):
    gateways: list[str]
    seqs: list[int]
    times: list[float | None]
    events: list[str]
    lines: list[str]


def rows_of(lines: list[bytes], gateway: str) -> _Rows:
    """The columns of each linked line (module doc); `gateway` when a line names none."""
    rows = _Rows([], [], [], [], [])
    last_time: float | None = None
    for raw in lines:
        head, text = read_linked(raw)
        if head.time is not None:
            last_time = head.time
        rows.gateways.append(head.gateway or gateway)
        rows.seqs.append(head.chain.seq)
        rows.times.append(last_time)
        rows.events.append(head.event)
        rows.lines.append(text)
    return rows


def _table_name(table: str) -> tuple[sql.Identifier, sql.Identifier, str]:
    """(table, index, regclass text) for `table` or `schema.table`."""
    parts = table.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise SinkError(f"postgres sink: table {table!r} is not `name` or `schema.name`")
    index = parts[-1] + "_time_idx"
    ident = sql.Identifier(*parts)
    index_ident = sql.Identifier(index)
    return ident, index_ident, ".".join('"' + p.replace('"', '""') + '"' for p in parts)


class PostgresDestination:
    """Audit lines into a PostgreSQL table (module doc); a `Destination`."""

    def __init__(self, dsn: str, password: str, table: str, gateway: str, timeout: float, *, name: str = "postgres") -> None:
        self.name = name
        self._dsn = dsn
        self._password = password
        self._table, self._index, self._regclass = _table_name(table)
        self._gateway = gateway
        self._timeout = timeout
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._lock = trio.Lock()

    # -- in the worker thread ----------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[TupleRow]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        ms = max(1, int(self._timeout * 1000))
        kwargs: dict[str, str] = {
            "connect_timeout": str(max(1, int(self._timeout + 0.999))),
            "client_encoding": "UTF8",
            "tcp_user_timeout": str(ms),
            "keepalives": "1",
            "keepalives_idle": "10",
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
            "application_name": "sqlward-audit",
        }
        if self._password:
            kwargs["password"] = self._password
        conn = psycopg.connect(self._dsn, autocommit=True, **kwargs)
        try:
            row = conn.execute("SELECT current_setting('server_encoding'), to_regclass(%s) IS NOT NULL",
                               (self._regclass,)).fetchone()
            if row is None or row[0] != "UTF8":
                raise SinkError(f"the database encoding is {row[0] if row else '?'}, not UTF8: "
                                "audit lines could change on the way in (and their hashes break)")
            if not row[1]:
                with conn.transaction():
                    conn.execute(sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (gateway text NOT NULL, seq bigint NOT NULL, "
                        "time timestamptz NOT NULL, event text NOT NULL, line text NOT NULL, "
                        "PRIMARY KEY (gateway, seq))").format(self._table))
                    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (time)").format(self._index, self._table))
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _deliver(self, lines: list[bytes]) -> None:
        rows = rows_of(lines, self._gateway)
        try:
            conn = self._connect()
            with conn.transaction():
                inserted = conn.execute(sql.SQL(
                    "INSERT INTO {} (gateway, seq, time, event, line) "
                    "SELECT g, s, coalesce(to_timestamp(t), now()), e, l "
                    "FROM unnest(%s::text[], %s::bigint[], %s::float8[], %s::text[], %s::text[]) AS u(g, s, t, e, l) "
                    "ON CONFLICT (gateway, seq) DO NOTHING RETURNING gateway, seq").format(self._table),
                    (rows.gateways, rows.seqs, rows.times, rows.events, rows.lines)).fetchall()
                if len(inserted) != len(rows.seqs):
                    self._check_resent(conn, rows, {(_str(g), _int(s)) for g, s in inserted})
        except (psycopg.Error, OSError, SinkError):
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self._drop()
            raise

    def _check_resent(self, conn: psycopg.Connection[TupleRow], rows: _Rows, inserted: set[tuple[str, int]]) -> None:
        """The rows not inserted must hold the same lines (module doc); else roll back."""
        wanted = {(g, s): line for g, s, line in zip(rows.gateways, rows.seqs, rows.lines) if (g, s) not in inserted}
        keys = list(wanted)
        stored = conn.execute(sql.SQL(
            "SELECT t.gateway, t.seq, t.line FROM {} t "
            "JOIN unnest(%s::text[], %s::bigint[]) AS k(g, s) ON t.gateway = k.g AND t.seq = k.s").format(self._table),
            ([g for g, _ in keys], [s for _, s in keys])).fetchall()
        held = {(_str(g), _int(s)): _str(line) for g, s, line in stored}
        for key, line in wanted.items():
            if held.get(key) != line:
                raise ConflictError(
                    f"the table already holds gateway {key[0]!r} seq {key[1]} with another record "
                    "(two gateways with the same name, or an edited row); nothing of this batch was stored")

    def _last_link(self, gateway: str) -> tuple[int, str] | None:
        try:
            conn = self._connect()
            row = conn.execute(sql.SQL("SELECT seq, line FROM {} WHERE gateway = %s ORDER BY seq DESC LIMIT 1")
                               .format(self._table), (gateway,)).fetchone()
        except (psycopg.Error, OSError):
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self._drop()
            raise
        if row is None:
            return None
        seq, line = row
        return _int(seq), hashlib.sha256(_str(line).encode("utf-8") + b"\n").hexdigest()

    # -- the Destination ---------------------------------------------------------------------

    async def deliver(self, lines: list[bytes]) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._deliver, lines)

    async def last_link(self, gateway: str) -> tuple[int, str] | None:
        async with self._lock:
            return await trio.to_thread.run_sync(self._last_link, gateway)

    async def aclose(self) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._drop)


def make_destination(cfg: RemoteSinkSettings, *, gateway: str) -> PostgresDestination:
    """The destination of an `[[audit.sinks]]` table with kind = "postgres" (the password read
    from `password_file`, its last line break dropped); `audit.spool.remote_sink` puts it behind
    a spool."""
    if cfg.kind != "postgres":
        raise ValueError(f"not a postgres sink: {cfg.kind}")
    name = cfg.name or "postgres"
    password = ""
    if cfg.password_file:
        try:
            with open(cfg.password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except OSError as exc:
            raise SinkError(f"postgres sink {name!r}: cannot read password_file {cfg.password_file!r}: {exc.strerror}") from exc
    return PostgresDestination(cfg.dsn, password, cfg.table, gateway, cfg.timeout_seconds, name=name)
