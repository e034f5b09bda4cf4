"""Where the audit trail goes: the contracts between `audit.trail.Trail` and its sinks.

The trail (`audit/trail.py`) links every batch of records into the gateway's hash chain at one
point, in order, and hands the linked bytes to each configured sink. A sink is one of:

- local (`audit/sinks/file.py`, `audit/sinks/stdout.py`): `accept` appends to a file or stream
  at once; `durable` waits for an fsync that covers it (group commit);
- remote (`audit/sinks/postgres.py`, `audit/sinks/otlp.py`): a `Destination` behind a
  `audit.spool.Spool`: `accept` appends to the spool on local disk at once; the spool's shipper
  delivers in order, and `durable` waits until the destination has taken everything accepted.

Every sink keeps every record it accepted, in order: a record is never dropped to make room
(the chain would break); a sink that cannot take more says so in `ready()`, and the trail refuses
new records (fail closed) before it links them.
"""

from __future__ import annotations

import urllib.parse
from typing import Protocol

import msgspec

__all__ = [
    "Destination", "LineHead", "SinkError", "SinkStatus", "TrailSink", "decode_head", "read_linked", "shown_url",
]


class _Link(msgspec.Struct, frozen=True):
    seq: int


class LineHead(msgspec.Struct, frozen=True):
    """The keys of a linked audit line that sinks index it by (the rest is ignored)."""

    chain: _Link
    time: float | None = None
    event: str = ""
    gateway: str = ""


# Raises msgspec.DecodeError (or ValidationError) for a line without a chain link.
decode_head = msgspec.json.Decoder(LineHead).decode


def read_linked(raw: bytes) -> tuple[LineHead, str]:
    """One linked line (with its newline) as a destination stores it: its head and its text
    without the newline; SinkError when it is not one."""
    if not raw.endswith(b"\n"):
        raise SinkError("an audit line without its newline")
    body = raw[:-1]
    try:
        return decode_head(body), body.decode("utf-8")
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SinkError(f"not a linked audit line: {exc}") from exc


class SinkError(Exception):
    """A sink could not take, keep or deliver records; the message says which and why."""


class SinkStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What `/readyz` and the metrics show of one sink."""

    name: str
    kind: str  # "file", "stdout", "postgres", "otlp"
    required: bool
    ok: bool
    problem: str = ""  # why not ok
    backlog: int = 0  # records accepted and not yet durable at their destination
    backlog_bytes: int = 0


class TrailSink(Protocol):
    """One sink of the trail (module doc). All methods are called from the gateway's trio
    thread; `accept` and `ready` never yield (the chain's order is the order of `accept`)."""

    name: str
    kind: str
    required: bool

    def ready(self) -> str | None:
        """None when the sink can take records now; else why not (a failed earlier batch that
        still cannot be written, a spool over its bound). May retry what it holds."""
        ...

    def accept(self, data: bytes) -> None:
        """Take complete linked lines, in chain order, at once (a local append). Raises
        SinkError when they could not be taken; the sink then keeps them and writes them
        before anything newer (so its copy of the chain has no gap)."""
        ...

    async def durable(self, timeout: float) -> None:
        """Return once everything accepted before the call is durable (fsync'd, committed);
        SinkError when that fails or does not happen within `timeout` seconds."""
        ...

    def status(self) -> SinkStatus: ...

    async def last_link(self, gateway: str) -> tuple[int, str] | None:
        """Where this sink's copy of `gateway`'s chain ends: (seq, SHA-256 hex of its last
        line), or None when it holds none (or cannot tell). Read once, at start."""
        ...

    async def run(self) -> None:
        """Background work (the syncer, the shipper) until cancelled."""
        ...

    async def aclose(self, timeout: float) -> None:
        """Make what was accepted durable (deliver, or leave it in the spool) within
        `timeout` seconds, then release everything."""
        ...


class Destination(Protocol):
    """A remote end behind a spool (`audit.spool.Spool`)."""

    name: str

    async def deliver(self, lines: list[bytes]) -> None:
        """Store these linked lines (each ending in a newline), in order, all or none; a batch
        delivered again after a crash is taken without duplicates. Raises on failure."""
        ...

    async def last_link(self, gateway: str) -> tuple[int, str] | None:
        """As `TrailSink.last_link`, read from the destination (None when it cannot tell)."""
        ...

    async def aclose(self) -> None: ...


def shown_url(url: str, *, path: bool = True) -> str:
    """`url` as logs and summaries may show it: scheme, host, port and (with `path`) the path;
    never a user, password or query (where credentials and tokens ride). Without `path` for a
    URL whose path is itself the credential (a chat incoming webhook)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path if path else ''}"
