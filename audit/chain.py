"""The audit hash chain and its signed checkpoints, without I/O (issue 14, first part).

Each gateway process keeps one chain over every record it writes, in the order the sink writes
them. `Chain.link(line)` takes one encoded JSON line (``{...}\\n``, as `audit.recorder` makes
them) and returns it with two keys added in front of its closing brace:

    "chain":{"v":1,"seq":<n>,"prev":"<hex SHA-256 of the previous linked line's bytes>"}

so every record names its predecessor; the first record of a chain names 64 zeros, or the last
hash of the file it continues (a rotated file chains to the one before it). `Chain.checkpoint()`
makes a record of its own, `audit.checkpoint`, holding the sequence number and hash of the last
record, signed with the gateway's private key (Ed25519 by default; ECDSA P-256 for FIPS-bound
deployments), so a verifier needs only the public key. A checkpoint names its key (`key_id`, from
the public key) so a trail that spans a key rotation verifies with the old and new public keys.

`verify(lines, public_key)` walks a trail and returns a `Report`: the number of records and
checkpoints, and the first problem with its line number and why:

- a record whose `prev` is not the hash of the line before it, or whose `seq` is not the next:
  edited, removed, inserted or reordered records;
- a checkpoint whose signature does not verify, or that names another hash than the chain has:
  a re-chained forgery (hashes alone can be recomputed by anyone; the signature cannot be made
  without the private key);
- records after the last checkpoint: a tail that could have been cut (reported as `unsigned_tail`:
  the verifier cannot tell a cut from a trail that is still being written);
- records no checkpoint covered when the gateway restarted (`adopted`, at the lines of those
  `gateway.started` records): written before a crash, or added by someone while the gateway was
  down; the restarted gateway continues the chain after them and its next checkpoint covers them,
  but the gateway that wrote them never signed them.

`Report.vouched` is the strict answer: intact, at least one checkpoint, no unsigned tail and
nothing adopted. A checkpoint has one encoding only (canonical base64, and a low S for ECDSA), and
a blank line is not skipped: every byte of a trail is accounted for.

The record schema carries its version (`"v":1`) so later fields do not break verification of old
records: the hash covers the bytes as written, whatever keys they hold.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

__all__ = ["GENESIS", "Chain", "Report", "key_id", "verify"]

GENESIS = "0" * 64
# The order of the P-256 group (for low-S ECDSA signatures).
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
VERSION = 1
Algorithm = Literal["Ed25519", "ECDSA-P256-SHA256"]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

_decode = msgspec.json.Decoder().decode


def _algorithm(key: PrivateKey | PublicKey) -> Algorithm:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "Ed25519"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and isinstance(key.curve, ec.SECP256R1):
        return "ECDSA-P256-SHA256"
    raise ValueError("audit signing keys are Ed25519 or ECDSA P-256")


def key_id(public_key: PublicKey) -> str:
    """A public key's id in checkpoints: the first 16 hex digits of the SHA-256 of its DER
    SubjectPublicKeyInfo (`sqlward audit verify` picks the key by it after a key rotation)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def _signed_bytes(gateway: str, seq: int, digest: str, when: float, alg: str, kid: str) -> bytes:
    """What a checkpoint's signature covers: every field of the checkpoint but the signature
    itself (length-prefixed by the encoding: no ambiguity). Its chain link is checked against
    `seq` / `digest`, and its line must be exactly as `_checkpoint_body` writes it, so no byte
    of a checkpoint can change unseen, the last line of a trail included."""
    return msgspec.msgpack.encode(["sqlward-audit-checkpoint-2", gateway, seq, digest, when, alg, kid])


def _checkpoint_body(gateway: str, seq: int, digest: str, when: float, alg: str, kid: str, signature: str) -> bytes:
    return msgspec.json.encode({
        "time": when, "event": "audit.checkpoint", "gateway": gateway, "covers_seq": seq, "covers_hash": digest,
        "alg": alg, "key_id": kid, "signature": signature,
    }) + b"\n"


class Chain:
    """One gateway's chain (module doc). Not thread-safe: the sink's single writer owns it."""

    __slots__ = ("gateway", "seq", "prev", "_key", "_alg", "_key_id")

    def __init__(self, gateway: str, *, key: PrivateKey | None = None, seq: int = 0, prev: str = GENESIS) -> None:
        self.gateway = gateway
        self.seq = seq
        self.prev = prev
        self._key = key
        self._alg = _algorithm(key) if key is not None else None
        self._key_id: str | None = None

    def link(self, line: bytes) -> bytes:
        """`line` (a JSON object and a newline) with the chain keys added; advances the chain."""
        if not line.endswith(b"}\n"):
            raise ValueError("an audit line is one JSON object ending in a newline")
        self.seq += 1
        linked = b'%s,"chain":{"v":%d,"seq":%d,"prev":"%s"}}\n' % (line[:-2], VERSION, self.seq, self.prev.encode())
        self.prev = hashlib.sha256(linked).hexdigest()
        return linked

    def checkpoint(self, now: float | None = None) -> bytes:
        """A signed `audit.checkpoint` line over the chain as it is (itself linked into it)."""
        if self._key is None or self._alg is None:
            raise ValueError("no signing key: checkpoints need [audit] signing_key_file")
        if self._key_id is None:
            self._key_id = key_id(self._key.public_key())
        when = time.time() if now is None else now
        data = _signed_bytes(self.gateway, self.seq, self.prev, when, self._alg, self._key_id)
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            signature = self._key.sign(data)
        else:  # low S: the one encoding of the signature a verifier accepts
            r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
            signature = encode_dss_signature(r, min(s, _P256_ORDER - s))
        body = _checkpoint_body(
            self.gateway, self.seq, self.prev, when, self._alg, self._key_id, base64.b64encode(signature).decode("ascii"),
        )
        return self.link(body)


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What `verify` found. `ok` is False at the first broken link (`line`, `problem`)."""

    ok: bool
    records: int = 0
    checkpoints: int = 0
    last_checkpoint_seq: int | None = None
    unsigned_tail: int = 0  # records after the last checkpoint
    # Records that no checkpoint had covered when the gateway restarted and continued its chain
    # after them (a crash, or records added while it was down): the next checkpoint covers them,
    # but the gateway that wrote them never signed them. `restarts`: the lines of those restarts.
    adopted: int = 0
    restarts: tuple[int, ...] = ()
    line: int | None = None  # 1-based line of the first problem
    problem: str = ""

    @property
    def vouched(self) -> bool:
        """Intact and every record signed by the gateway that wrote it, before it stopped:
        at least one checkpoint, nothing after the last, nothing adopted at a restart."""
        return self.ok and self.checkpoints > 0 and not self.unsigned_tail and not self.adopted


def _verify_signature(public_key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        else:
            # One encoding only: DER as the signer wrote it, with a low S (r, n - s verifies too)
            r, s = decode_dss_signature(signature)
            if s > _P256_ORDER // 2 or encode_dss_signature(r, s) != signature:
                return False
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):  # ValueError: not a DER signature at all
        return False
    return True


def verify(
    lines: Iterable[bytes], public_key: PublicKey | Sequence[PublicKey], *, prev: str = GENESIS, seq: int = 0,
) -> Report:
    """Verify a trail's lines (module doc); `prev` / `seq`: where the chain stood before them
    (a window cut from a longer trail starts at its first record's `prev` and `seq` - 1).
    Several public keys: a trail that spans a key rotation (each checkpoint names its key)."""
    keys = [public_key] if not isinstance(public_key, Sequence) else list(public_key)
    by_id = {key_id(k): k for k in keys}
    records = checkpoints = adopted = 0
    restarts: list[int] = []
    last_cp: int | None = None
    tail = 0
    expected_prev = prev
    expected_seq = seq
    for number, line in enumerate(lines, 1):

        def broken(problem: str) -> Report:
            return Report(ok=False, records=records, checkpoints=checkpoints, last_checkpoint_seq=last_cp,
                          unsigned_tail=tail, adopted=adopted, restarts=tuple(restarts), line=number, problem=problem)

        if not line.strip():
            return broken("a line that is not a record (inserted)")

        try:
            record = _decode(line)
        except msgspec.DecodeError:
            return broken("not a JSON line (edited or truncated)")
        chain = record.get("chain") if isinstance(record, dict) else None
        if not isinstance(chain, dict) or chain.get("v") != VERSION:
            return broken("a record without a chain link (inserted, or written by something else)")
        if chain.get("seq") != expected_seq + 1:
            return broken(f"sequence {chain.get('seq')} where {expected_seq + 1} was due (a record removed, inserted or reordered)")
        if chain.get("prev") != expected_prev:
            return broken("its prev is not the hash of the record before it (a record edited, removed, inserted or reordered)")
        raw = line if line.endswith(b"\n") else line + b"\n"
        expected_prev = hashlib.sha256(raw).hexdigest()
        expected_seq += 1
        records += 1
        tail += 1
        if record.get("event") == "gateway.started" and tail > 1:
            # The gateway restarted after records no checkpoint covered: it continues after
            # them, but cannot vouch for them (module doc).
            adopted += tail - 1
            restarts.append(number)
        if record.get("event") == "audit.checkpoint":
            try:
                gateway, covers_seq, covers_hash = record["gateway"], record["covers_seq"], record["covers_hash"]
                when, alg, kid, sig_text = record["time"], record["alg"], record["key_id"], record["signature"]
                signature = base64.b64decode(sig_text, validate=True)
                if base64.b64encode(signature).decode("ascii") != sig_text:
                    raise ValueError("not canonical base64")
                data = _signed_bytes(gateway, covers_seq, covers_hash, when, alg, kid)
                canonical = Chain(gateway, seq=expected_seq - 1, prev=chain.get("prev", "")).link(
                    _checkpoint_body(gateway, covers_seq, covers_hash, when, alg, kid, sig_text)
                )
            except (KeyError, ValueError, TypeError):
                return broken("a malformed checkpoint")
            if covers_seq != expected_seq - 1 or covers_hash != chain.get("prev"):
                return broken("a checkpoint that does not cover the record before it")
            if canonical != raw:
                return broken("a checkpoint whose line is not as the gateway writes it (edited)")
            candidates = [by_id[kid]] if isinstance(kid, str) and kid in by_id else keys
            if not any(alg == _algorithm(k) and _verify_signature(k, signature, data) for k in candidates):
                return broken("a checkpoint whose signature does not verify with the public key(s) given (a forgery, or another key)")
            checkpoints += 1
            last_cp = record["covers_seq"]
            tail = 0
    return Report(
        ok=True, records=records, checkpoints=checkpoints, last_checkpoint_seq=last_cp, unsigned_tail=tail,
        adopted=adopted, restarts=tuple(restarts),
    )
