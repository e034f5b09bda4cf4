"""The audit trail: the one place records are chained, signed and handed to every sink.

`Trail` is the `audit.recorder.Sink` of a running gateway. How it works:

- `write(batch)` is synchronous inside (it never yields), so batches are chained in the order
  sessions flush them. First every required sink is asked whether it can take records (`ready`);
  when one cannot, the batch is refused before it is chained (fail closed: `SinkError`, which
  the recorder turns into `AuditUnavailable` and the session into a refusal), unless `[audit]
  failure = "open"` (development), where that sink misses the batch and the loss is logged and
  counted. Then each line is linked into the chain (`audit.chain.Chain`: sequence number and the
  hash of the line before), a signed checkpoint is added after every `checkpoint_every` records,
  and the linked batch goes to every sink with one `accept` each (a local append: the file, or a
  remote sink's spool). A sink that fails during `accept` keeps the batch and writes it first
  later, so every sink's copy of the chain stays whole.
- `commit()` (durability "sync") waits until every required sink has the records durably: the
  file fsync'd (group commit), a remote sink's destination committed, within
  `sync_timeout_seconds`. The adapters commit at the points where a client is about to see a
  statement's result; the decision written before the statement ran is made durable by the same
  fsync, which starts while the statement runs. With "buffered", `commit` returns at once: the
  file has the records in the kernel (they survive the process being killed), remote sinks get
  them from the spool.
- Checkpoints also come every `checkpoint_seconds` while records are unsigned (`run`), before a
  file rotates (each rotated file ends on a signature) and at shutdown (`aclose`).
- The chain continues across restarts: when the trail is made, each file sink reports where its
  chain ends (its last line); `start` asks the remote sinks too, and the furthest is continued.

The signing key is a PEM private key (Ed25519 by default, ECDSA P-256); `signing_key` loads it,
or makes an Ed25519 key (and its `.pub`) on first start when none is configured.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sqlward.audit.chain import VERSION, Chain, PrivateKey
from sqlward.audit.sinks import SinkError, SinkStatus, TrailSink
from sqlward.audit.sinks.file import FileSink

log = logging.getLogger("sqlward.audit")

__all__ = ["DEFAULT_KEY_NAME", "Trail", "signing_key"]

DEFAULT_KEY_NAME = "audit-signing-key.pem"
_sha256 = hashlib.sha256


def signing_key(path: str, *, default_dir: str) -> tuple[PrivateKey, str]:
    """The checkpoint signing key and the file it came from: `path`, or (when empty) the default
    key in `default_dir`, made on first use (Ed25519, mode 0600, with `<file>.pub` beside it)."""
    if not path:
        path = os.path.join(default_dir, DEFAULT_KEY_NAME)
        if not os.path.exists(path):
            key = ed25519.Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            with open(path + ".pub", "wb") as f:
                f.write(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
            log.warning("made a new audit signing key %s (verifiers need %s.pub)", path, path)
    with open(path, "rb") as f:
        try:
            key = serialization.load_pem_private_key(f.read(), password=None)
        except TypeError:  # encrypted: the gateway reads its key unattended
            raise ValueError(f"{path}: an encrypted key (store it unencrypted, mode 0600)") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey) and not (
        isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        raise ValueError(f"{path}: expected an Ed25519 or ECDSA P-256 private key")
    return key, path


class Trail:
    """The chain and the sinks of one gateway process (module doc)."""

    def __init__(
        self, gateway: str, sinks: Sequence[TrailSink], *, key: PrivateKey, durability: str = "sync",
        failure: str = "closed", checkpoint_every: int = 1000, checkpoint_seconds: float = 10.0,
        sync_timeout: float = 5.0,
    ) -> None:
        self.gateway = gateway
        self.sinks = tuple(sinks)
        self._files = tuple(s for s in self.sinks if isinstance(s, FileSink))
        self._required = tuple(s for s in self.sinks if s.required)
        self._required_remote = tuple(s for s in self._required if not isinstance(s, FileSink))
        self._sync = durability == "sync"
        self._open = failure == "open"
        self._every = checkpoint_every
        self._seconds = checkpoint_seconds
        self._timeout = sync_timeout
        self.chain = Chain(gateway, key=key)
        self._unsigned = 0  # records since the last checkpoint
        self._signed_at = time.monotonic()
        self.dropped: dict[str, int] = {s.name: 0 for s in self.sinks}  # records a sink missed (failure = "open")
        # The only sink, when it is a required file (the default set-up): `append`'s short path.
        only = self.sinks[0] if len(self.sinks) == 1 else None
        self._fast = only if isinstance(only, FileSink) and only.required and not self._open and VERSION == 1 else None
        links = [link for f in self._files if (link := f.last_link_now()) is not None]
        if links:
            self._continue(max(links))

    def _continue(self, link: tuple[int, str]) -> None:
        seq, prev = link
        if seq > self.chain.seq:
            self.chain.seq, self.chain.prev = seq, prev
            self._unsigned = 1  # what came last before the restart may be unsigned
            log.info("audit chain continues at seq %d", seq + 1)

    async def start(self) -> None:
        """Continue from the furthest chain any sink holds (remote sinks are asked here)."""
        for sink in self.sinks:
            if isinstance(sink, FileSink):
                continue
            try:
                link = await sink.last_link(self.gateway)
            except Exception as exc:  # unreachable now: its spool delivers later
                log.warning("audit sink %s: cannot read where its chain ends: %s", sink.name, exc)
                continue
            if link is not None:
                if link[0] < self.chain.seq:
                    log.warning("audit sink %s ends at seq %d, behind the chain (seq %d): it has a gap", sink.name, link[0], self.chain.seq)
                self._continue(link)

    # -- the recorder's Sink -------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        self.append(data)

    async def commit(self, *, before_run: bool = False) -> None:
        """Durable in every required sink (durability "sync"); `before_run`: in the required
        remote sinks only (a statement about to run: the file's fsync waits for its result)."""
        if not self._sync:
            return
        for sink in self._required_remote if before_run else self._required:
            try:
                await sink.durable(self._timeout)
            except SinkError as exc:
                if not self._open:
                    raise
                log.error("audit sink %s: not durable (failure = open): %s", sink.name, exc)

    def close(self) -> None:
        for sink in self._files:
            sink.close()

    # -- chaining ------------------------------------------------------------------------------

    def append(self, data: bytes, *, checkpoint: bool = False) -> None:
        """Chain `data` (complete JSON lines) and hand it to every sink; never yields."""
        if self._fast and not checkpoint:
            # The common case, kept short: one file sink that is well and not due to rotate,
            # no checkpoint due.
            sink = self._fast
            lines = data.count(b"\n")
            if self._unsigned + lines < self._every and sink.steady(len(data)):
                chain = self.chain
                if lines == 1 and data[-1:] == b"\n":
                    if data[-2:] != b"}\n":
                        raise SinkError("an audit line is one JSON object ending in a newline")
                    seq = chain.seq + 1
                    linked = b'%s,"chain":{"v":1,"seq":%d,"prev":"%s"}}\n' % (data[:-2], seq, chain.prev.encode())
                    sink.write_linked(linked)  # SinkError: nothing kept, the chain unchanged
                    chain.seq, chain.prev = seq, _sha256(linked).hexdigest()
                    self._unsigned += 1
                    return
                if data[-1:] != b"\n":
                    raise SinkError("an audit line is one JSON object ending in a newline")
                undo = (chain.seq, chain.prev, self._unsigned)
                linked = self._link(data)
                try:
                    sink.write_linked(linked)
                except SinkError:
                    chain.seq, chain.prev, self._unsigned = undo
                    raise
                return
        takers: list[TrailSink] = []
        for sink in self.sinks:
            why = sink.ready()
            if why is None and self._sync and sink.required and not isinstance(sink, FileSink):
                # A destination known to be failing (its last delivery failed) would fail the
                # commit after the statement ran: refuse before it runs instead.
                status = sink.status()
                if not status.ok:
                    why = status.problem
            if why is None:
                takers.append(sink)
            elif sink.required and not self._open:
                raise SinkError(f"audit sink {sink.name} cannot take records: {why}")
            else:
                self._drop(sink, data.count(b"\n") + checkpoint, why)
        undo = (self.chain.seq, self.chain.prev, self._unsigned)
        due = [f for f in self._files if f in takers and f.rotation_due(len(data))]
        if due:
            self._hand_over(self.chain.checkpoint(), takers)
            self._unsigned, self._signed_at = 0, time.monotonic()
            undo = (self.chain.seq, self.chain.prev, self._unsigned)
            for f in due:
                f.rotate()
        linked = self._link(data) if data else b""
        if checkpoint or self._unsigned >= self._every:
            linked += self.chain.checkpoint()
            self._unsigned, self._signed_at = 0, time.monotonic()
        if linked:
            self._hand_over(linked, takers, undo)

    def _link(self, data: bytes) -> bytes:
        chain = self.chain
        seq, prev = chain.seq, chain.prev
        out: list[bytes] = []
        sha = hashlib.sha256
        start = 0
        end = data.find(b"\n")
        while end >= 0:
            if data[end - 1:end] != b"}":
                raise SinkError("an audit line is one JSON object ending in a newline")
            seq += 1
            linked = b'%s,"chain":{"v":%d,"seq":%d,"prev":"%s"}}\n' % (data[start:end - 1], VERSION, seq, prev.encode())
            prev = sha(linked).hexdigest()
            out.append(linked)
            start = end + 1
            end = data.find(b"\n", start)
        self._unsigned += seq - chain.seq
        chain.seq, chain.prev = seq, prev
        return b"".join(out)

    def _hand_over(self, linked: bytes, takers: list[TrailSink], undo: tuple[int, str, int] | None = None) -> None:
        """`accept` by every taker. When none took the batch and every one that failed is a
        file (whose kept batch can be withdrawn), the chain steps back to `undo` and the batch
        is not part of the trail: the caller's records are refused and stay out of it, as the
        statement they describe stays out of the database. Otherwise the failed sinks keep the
        batch and write it first later."""
        failed: list[tuple[TrailSink, str]] = []
        for sink in takers:
            try:
                sink.accept(linked)
            except SinkError as exc:
                failed.append((sink, str(exc)))
        if not failed:
            return
        if undo is not None and len(failed) == len(takers) and all(isinstance(s, FileSink) for s, _ in failed):
            for sink, _ in failed:
                assert isinstance(sink, FileSink)
                sink.withdraw()
            self.chain.seq, self.chain.prev, self._unsigned = undo
            if any(sink.required for sink, _ in failed) and not self._open:
                raise SinkError("; ".join(f"audit sink {s.name}: {why}" for s, why in failed))
            for sink, why in failed:  # failure = "open", or optional sinks only: the records are lost
                self._drop(sink, linked.count(b"\n"), why)
            return
        refused = [f"audit sink {s.name}: {why}" for s, why in failed if s.required and not self._open]
        for sink, why in failed:
            log.error("audit sink %s: %s (kept, written again later)", sink.name, why)
        if refused:
            raise SinkError("; ".join(refused))

    def _drop(self, sink: TrailSink, records: int, why: str) -> None:
        self.dropped[sink.name] += records
        log.error("audit sink %s missed %d record(s): %s", sink.name, records, why)

    # -- background and shutdown ---------------------------------------------------------------

    async def run(self) -> None:
        """The sinks' background work and the checkpoint timer, until cancelled."""
        async with trio.open_nursery() as nursery:
            for sink in self.sinks:
                nursery.start_soon(sink.run)
            while True:
                await trio.sleep(min(self._seconds, 1.0))
                if self._unsigned and time.monotonic() - self._signed_at >= self._seconds:
                    try:
                        self.append(b"", checkpoint=True)
                    except SinkError as exc:
                        log.error("audit checkpoint not written: %s", exc)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Sign what is unsigned, make it durable, close every sink (within `timeout`)."""
        with trio.move_on_after(timeout):
            if self._unsigned:
                try:
                    self.append(b"", checkpoint=True)
                except SinkError as exc:
                    log.error("audit checkpoint at shutdown not written: %s", exc)
            for sink in self.sinks:
                try:
                    await sink.aclose(timeout)
                except Exception as exc:
                    log.error("audit sink %s did not close cleanly: %s", sink.name, exc)

    def status(self) -> list[SinkStatus]:
        return [sink.status() for sink in self.sinks]
