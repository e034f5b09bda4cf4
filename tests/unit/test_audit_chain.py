"""audit.chain: every record names its predecessor's hash, checkpoints are signed, and the
verifier finds the first broken link (issue 14, first part: the chain and its verifier, not yet
wired into the writer)."""

from __future__ import annotations

import json
import msgspec

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings, strategies as st

from sqlward.audit.chain import GENESIS, Chain, key_id, verify

KEY = ed25519.Ed25519PrivateKey.generate()


def trail(n: int = 6, *, key: object = KEY, every: int = 3) -> list[bytes]:
    chain = Chain("gw-1", key=key)  # type: ignore[arg-type]
    out = []
    for i in range(1, n + 1):
        out.append(chain.link(b'{"event":"statement.decided","request_id":%d,"sql":"SELECT %d"}\n' % (i, i)))
        if i % every == 0:
            out.append(chain.checkpoint(now=1765000000.0))
    return out


def test_an_untouched_trail_verifies() -> None:
    report = verify(trail(), KEY.public_key())
    assert report.ok and report.records == 8 and report.checkpoints == 2 and report.unsigned_tail == 0
    first = json.loads(trail()[0])
    assert first["chain"] == {"v": 1, "seq": 1, "prev": GENESIS}


def test_ecdsa_p256_keys_sign_and_verify_too() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert verify(trail(key=key), key.public_key()).ok
    assert not verify(trail(key=key), KEY.public_key()).ok  # another key


@pytest.mark.parametrize(("change", "line", "why"), [
    (lambda t: t[:1] + [t[1].replace(b"SELECT 2", b"SELECT 9")] + t[2:], 3, "prev is not the hash"),
    (lambda t: t[:1] + t[2:], 2, "sequence 3 where 2 was due"),
    (lambda t: t[:1] + [t[1], t[1]] + t[2:], 3, "sequence 2 where 3 was due"),
    (lambda t: [t[1], t[0]] + t[2:], 1, "sequence 2 where 1 was due"),
    (lambda t: t[:2] + [b'{"event":"statement.decided","sql":"DROP"}\n'] + t[2:], 3, "without a chain link"),
])
def test_edits_removals_insertions_and_reorders_name_the_first_broken_line(change, line: int, why: str) -> None:
    report = verify(change(trail()), KEY.public_key())
    assert not report.ok and report.line == line and why in report.problem, report


def test_a_rechained_forgery_without_the_key_fails_at_the_checkpoint() -> None:
    """An attacker edits record 2 and recomputes every later hash (anyone can): the chain holds,
    but the next checkpoint's signature covers the old hash and cannot be remade."""
    original = trail()
    forger = Chain("gw-1")
    forged = []
    for raw in original:
        record = json.loads(raw)
        record.pop("chain")
        if record.get("request_id") == 2:
            record["sql"] = "SELECT 'nothing to see'"
        if record.get("event") == "audit.checkpoint":
            record["covers_seq"], record["covers_hash"] = forger.seq, forger.prev
        forged.append(forger.link(json.dumps(record, separators=(",", ":")).encode() + b"\n"))
    report = verify(forged, KEY.public_key())
    assert not report.ok and report.line == 4 and "signature does not verify" in report.problem


def test_records_after_the_last_checkpoint_are_reported_as_an_unsigned_tail() -> None:
    t = trail(7)  # checkpoints after 3 and 6: record 7 is not covered
    report = verify(t, KEY.public_key())
    assert report.ok and report.unsigned_tail == 1 and report.last_checkpoint_seq == 7


def test_a_window_verifies_from_where_the_chain_stood() -> None:
    t = trail(9)
    start = json.loads(t[4])["chain"]
    report = verify(t[4:], KEY.public_key(), prev=start["prev"], seq=start["seq"] - 1)
    assert report.ok and report.records == len(t) - 4


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_changed_byte_is_found(data: st.DataObject) -> None:
    t = trail()
    signed = max(n for n, line in enumerate(t) if b'"audit.checkpoint"' in line)  # the tail after it is reported unsigned
    i = data.draw(st.integers(0, signed))
    j = data.draw(st.integers(0, len(t[i]) - 2))  # not the newline
    b = data.draw(st.integers(0, 255).filter(lambda v: v != t[i][j]))
    changed = list(t)
    changed[i] = t[i][:j] + bytes([b]) + t[i][j + 1:]
    assert not verify(changed, KEY.public_key()).ok


def test_sqlward_audit_verify(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from sqlward.gateway import cli

    key_file = tmp_path / "audit.pub"
    key_file.write_bytes(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    good = tmp_path / "audit.jsonl"
    good.write_bytes(b"".join(trail(7)))
    assert cli.main(["audit", "verify", str(good), "--public-key", str(key_file)]) == 3  # intact, a record unsigned
    assert "intact but not all signed (exit 3), 9 records, 2 signed checkpoints; 1 records after the last checkpoint" in capsys.readouterr().out
    bad = tmp_path / "edited.jsonl"
    t = trail(7)
    bad.write_bytes(b"".join(t[:4] + [t[4].replace(b"SELECT 4", b"SELECT 5")] + t[5:]))
    assert cli.main(["audit", "verify", str(bad), "--public-key", str(key_file)]) == 1
    assert "BROKEN at line 6" in capsys.readouterr().out
    assert cli.main(["audit", "verify", str(good), "--public-key", str(good)]) == 2
    assert "cannot use" in capsys.readouterr().err


def test_a_trail_across_a_key_rotation_verifies_with_both_public_keys() -> None:
    old, new = ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())
    first = Chain("gw", key=old)
    lines = [first.link(b'{"event":"x","n":%d}\n' % n) for n in range(3)] + [first.checkpoint()]
    second = Chain("gw", key=new, seq=first.seq, prev=first.prev)  # restarted with the new key
    lines += [second.link(b'{"event":"x","n":%d}\n' % n) for n in range(3, 6)] + [second.checkpoint()]
    assert verify(lines, [old.public_key(), new.public_key()]).ok
    assert verify(lines, [new.public_key(), old.public_key()]).ok
    only_old = verify(lines, old.public_key())
    assert not only_old.ok and only_old.line == 8
    assert msgspec.json.decode(lines[3])["key_id"] == key_id(old.public_key())


@pytest.mark.parametrize("field", [b'"time":', b'"key_id":"', b'"alg":"', b'"gateway":"'])
def test_no_field_of_the_last_checkpoint_can_be_edited(field: bytes) -> None:
    chain = Chain("gw", key=KEY)
    lines = [chain.link(b'{"event":"x","n":%d}\n' % n) for n in range(3)] + [chain.checkpoint(now=1765000000.25)]
    assert verify(lines, KEY.public_key()).ok
    last = lines[-1]
    at = last.index(field) + len(field)
    edited = last[:at] + (b"9" if last[at:at + 1] != b"9" else b"8") + last[at + 1:]
    report = verify(lines[:-1] + [edited], KEY.public_key())
    assert not report.ok and report.line == 4, report
    spaced = last.replace(b'"event":', b'"event": ', 1)  # the same JSON, other bytes
    assert not verify(lines[:-1] + [spaced], KEY.public_key()).ok


def test_every_byte_counts_blank_lines_and_other_signature_encodings() -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    chain = Chain("gw", key=KEY)
    lines = [chain.link(b'{"event":"x","n":%d}\n' % n) for n in range(3)] + [chain.checkpoint(now=1.5)]
    assert not verify(lines[:2] + [b"\n"] + lines[2:], KEY.public_key()).ok
    record = msgspec.json.decode(lines[-1])
    sig = record["signature"]
    padded = sig.rstrip("=") + "=" * (len(sig) - len(sig.rstrip("=")))  # same text: sanity
    assert padded == sig
    other = base64.b64encode(base64.b64decode(sig)).decode()
    assert other == sig
    # ECDSA: (r, n - s) verifies with the library, but is not the encoding the gateway writes
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    c2 = Chain("gw", key=ecdsa)
    lines2 = [c2.link(b'{"event":"x"}\n'), c2.checkpoint(now=2.5)]
    assert verify(lines2, ecdsa.public_key()).ok
    rec = msgspec.json.decode(lines2[-1])
    r, s = decode_dss_signature(base64.b64decode(rec["signature"]))
    assert s <= 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551 // 2  # written low
    high = base64.b64encode(encode_dss_signature(r, 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551 - s)).decode()
    twin = lines2[-1].replace(rec["signature"].encode(), high.encode())
    assert not verify([lines2[0], twin], ecdsa.public_key()).ok
