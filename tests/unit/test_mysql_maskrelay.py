"""Unit tests for adapters.mysql.maskrelay.MaskingRelay: server responses are built as wire bytes
(with the codecs of adapters.mysql.messages / packets), fed to the relay, and what comes out is
parsed back with an independent parser here: packets must carry consecutive sequence ids, masked
values must be replaced, everything else must stay byte-identical."""

from __future__ import annotations

import pytest

from sqlward.adapters.mysql import messages
from sqlward.adapters.mysql.constants import Capability, FieldType, ServerStatus
from sqlward.adapters.mysql.maskrelay import MaskingRelay
from sqlward.adapters.mysql.packets import MAX_PACKET_CHUNK, ProtocolViolation, encode_packets, lenenc_bytes_or_null, lenenc_int
from sqlward.adapters.mysql.response import Shape
from sqlward.masking.context import MaskContext, RequestMask
from sqlward.masking.model import MaskSpec
from sqlward.masking.plan import MaskPlan

CAPS = int(
    Capability.LONG_PASSWORD | Capability.LONG_FLAG | Capability.PROTOCOL_41 | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION | Capability.MULTI_RESULTS | Capability.PS_MULTI_RESULTS | Capability.PLUGIN_AUTH
)
CAPS_DE = CAPS | int(Capability.DEPRECATE_EOF)
AUTOCOMMIT = int(ServerStatus.AUTOCOMMIT)
REDACT = MaskSpec(function="redact", rule_id="pii-email")
LABEL = "email (pii-email: redact)"
ERR_TEXT = "Incorrect integer value: 'alice@example.com' for column 'id' at row 1"


def _ctx(*, redact_errors: bool = True, plan: MaskPlan = MaskPlan(), by_name=None) -> MaskContext:
    return MaskContext(
        request=RequestMask(plan=plan, redact_errors=redact_errors),
        by_name={("shop.customers", "email"): REDACT} if by_name is None else by_name,
    )


# --------------------------------------------------------------------------------------------
# Building responses


def _coldef(name: str, ctype: int = FieldType.VAR_STRING, *, org_name: str | None = None, org_table: str = "customers",
            schema: str = "shop", charset: int = 45, flags: int = 0, caps: int = CAPS) -> bytes:
    return messages.encode(
        messages.ColumnDefinition41(
            schema=schema, table="c", org_table=org_table, name=name, org_name=name if org_name is None else org_name,
            character_set=charset, column_length=255, column_type=int(ctype), flags=flags,
        ),
        caps,
    )


def _text_row(*values: bytes | None) -> bytes:
    return b"".join(lenenc_bytes_or_null(v) for v in values)


def _end(deprecate_eof: bool, status: int = AUTOCOMMIT) -> bytes:
    return messages.eof_packet(CAPS_DE if deprecate_eof else CAPS, status_flags=status)


def _resultset(cols: list[bytes], rows: list[bytes], *, deprecate_eof: bool = False, status: int = AUTOCOMMIT) -> list[bytes]:
    """Payloads of one result set: column count, definitions, [EOF], rows, EOF / 0xFE OK."""
    head = [lenenc_int(len(cols)), *cols]
    if not deprecate_eof:
        head.append(_end(False))
    return head + rows + [_end(deprecate_eof, status)]


def _frame(payloads: list[bytes], seq: int = 1) -> bytes:
    out = []
    for p in payloads:
        data, seq = encode_packets(p, seq)
        out.append(data)
    return b"".join(out)


def _wire(data: bytes, first_seq: int = 1) -> list[tuple[int, int]]:
    """(sequence id, length) of each wire packet; asserts the ids are consecutive (mod 256)."""
    out, pos, expect = [], 0, first_seq
    while pos < len(data):
        assert len(data) - pos >= 4, "truncated header"
        length = int.from_bytes(data[pos : pos + 3], "little")
        seq = data[pos + 3]
        assert seq == expect & 0xFF, f"packet {len(out)} has sequence id {seq}, expected {expect & 0xFF}"
        assert pos + 4 + length <= len(data), "truncated packet"
        out.append((seq, length))
        pos += 4 + length
        expect += 1
    return out


def _payloads(data: bytes, first_seq: int = 1) -> list[bytes]:
    """Logical payloads (0xFFFFFF chunks joined) after checking the wire packets."""
    _wire(data, first_seq)
    out, parts, pos = [], [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "little")
        parts.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
        if length < MAX_PACKET_CHUNK:
            out.append(b"".join(parts))
            parts = []
    assert not parts, "split payload without its last chunk"
    return out


def _relay(ctx: MaskContext | None, *, binary: bool = False, deprecate_eof: bool = False,
           shape: Shape = Shape.RESULTSET, rows=None) -> MaskingRelay:
    return MaskingRelay(ctx, shape=shape, binary=binary, deprecate_eof=deprecate_eof,
                        capabilities=CAPS_DE if deprecate_eof else CAPS, rows=rows)


def _run(relay: MaskingRelay, data: bytes, step: int | None = None) -> bytes:
    buf, out = bytearray(), []
    for i in range(0, len(data), step or len(data)):
        buf += data[i : i + (step or len(data))]
        out.append(relay.feed(buf))
    assert not buf, "the relay left bytes of the response unconsumed"
    return b"".join(out)


CUSTOMER_COLS = [_coldef("id", FieldType.LONG, charset=63), _coldef("email"), _coldef("name")]
CUSTOMER_ROWS = [
    _text_row(b"1", b"alice@example.com", b"Alice"),
    _text_row(b"2", None, b"Bob"),
    _text_row(b"3", b"carol@example.net", None),
]
MASKED_ROWS = [
    _text_row(b"1", b"****", b"Alice"),
    _text_row(b"2", None, b"Bob"),
    _text_row(b"3", b"****", None),
]


# --------------------------------------------------------------------------------------------
# Text protocol


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_text_resultset_masks_wire_origin_column(deprecate_eof: bool) -> None:
    payloads = _resultset(CUSTOMER_COLS, CUSTOMER_ROWS, deprecate_eof=deprecate_eof)
    relay = _relay(_ctx(), deprecate_eof=deprecate_eof)
    out = _run(relay, _frame(payloads))
    got = _payloads(out)
    n_head = len(payloads) - len(CUSTOMER_ROWS) - 1
    assert got[:n_head] == payloads[:n_head]  # column count, definitions, EOF untouched
    assert got[n_head:-1] == MASKED_ROWS
    assert got[-1] == payloads[-1]
    assert relay.done
    assert relay.masked == {LABEL: 2}  # the NULL is not counted
    assert not relay.error_hidden
    assert b"alice" not in out and b"carol" not in out


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_text_resultset_byte_at_a_time_gives_same_output(deprecate_eof: bool) -> None:
    data = _frame(_resultset(CUSTOMER_COLS, CUSTOMER_ROWS, deprecate_eof=deprecate_eof))
    whole = _run(_relay(_ctx(), deprecate_eof=deprecate_eof), data)
    relay = _relay(_ctx(), deprecate_eof=deprecate_eof)
    assert _run(relay, data, step=1) == whole
    assert relay.done
    assert relay.masked == {LABEL: 2}


def test_wire_origin_match_is_case_insensitive_and_ignores_alias() -> None:
    cols = [_coldef("contact", org_name="EMAIL", org_table="Customers", schema="SHOP")]
    payloads = _resultset(cols, [_text_row(b"alice@example.com")])
    relay = _relay(_ctx())
    assert _payloads(_run(relay, _frame(payloads)))[3] == _text_row(b"****")
    assert relay.masked == {"contact (pii-email: redact)": 1}


def test_same_column_name_of_other_table_is_not_masked() -> None:
    cols = [_coldef("email", org_table="suppliers"), _coldef("email", schema="other")]
    data = _frame(_resultset(cols, [_text_row(b"a@x.example", b"b@y.example")]))
    relay = _relay(_ctx())
    assert _run(relay, data) == data
    assert relay.masked == {}


def test_plan_masks_computed_column_without_wire_origin() -> None:
    cols = [_coldef("lower(email)", org_name="", org_table="", schema=""), _coldef("id", FieldType.LONG, charset=63)]
    payloads = _resultset(cols, [_text_row(b"alice@example.com", b"1")])
    relay = _relay(_ctx(plan=MaskPlan(columns=(REDACT, None))))
    assert _payloads(_run(relay, _frame(payloads)))[4] == _text_row(b"****", b"1")
    assert relay.masked == {"lower(email) (pii-email: redact)": 1}


def test_nothing_to_mask_passes_bytes_unchanged() -> None:
    cols = [_coldef("id", FieldType.LONG, org_table="orders", charset=63), _coldef("total", FieldType.NEWDECIMAL, org_table="orders")]
    data = _frame(_resultset(cols, [_text_row(b"1", b"9.99"), _text_row(b"2", None)]))
    relay = _relay(_ctx())
    assert _run(relay, data) == data
    assert relay.done and relay.masked == {}


def test_ctx_none_passes_everything_byte_identical() -> None:
    data = _frame(_resultset(CUSTOMER_COLS, CUSTOMER_ROWS))
    relay = _relay(None)
    assert _run(relay, data) == data
    assert relay.done and relay.masked == {} and not relay.error_hidden
    for other in ([messages.err_packet(1366, "HY000", ERR_TEXT)], [messages.ok_packet(CAPS, affected_rows=3)]):
        relay = _relay(None)
        assert _run(relay, _frame(other)) == _frame(other)
        assert relay.done and not relay.error_hidden


def test_multiple_result_sets_each_masked() -> None:
    first = _resultset(CUSTOMER_COLS, CUSTOMER_ROWS[:1], status=AUTOCOMMIT | int(ServerStatus.MORE_RESULTS_EXISTS))
    order_cols = [_coldef("id", FieldType.LONG, org_table="orders", charset=63), _coldef("email", org_table="orders")]
    second = _resultset(order_cols, [_text_row(b"9", b"kept@example.com")], status=AUTOCOMMIT | int(ServerStatus.MORE_RESULTS_EXISTS))
    third = _resultset(CUSTOMER_COLS, CUSTOMER_ROWS[2:])
    relay = _relay(_ctx())
    buf = bytearray(_frame(first))
    out = relay.feed(buf)
    assert not relay.done
    buf += _frame(second + third, seq=1 + len(first))
    out += relay.feed(buf)
    assert relay.done
    got = _payloads(out)
    assert got[5] == MASKED_ROWS[0]
    assert got[len(first) + 4] == _text_row(b"9", b"kept@example.com")
    assert got[-2] == MASKED_ROWS[2]
    assert relay.masked == {LABEL: 2}


# --------------------------------------------------------------------------------------------
# ERR packets


def test_err_packet_rewritten_when_errors_are_redacted() -> None:
    original = messages.err_packet(1366, "HY000", ERR_TEXT)
    relay = _relay(_ctx(redact_errors=True))
    got = _payloads(_run(relay, _frame([original])))
    assert len(got) == 1 and got[0] != original
    err = messages.decode_err(got[0])
    assert isinstance(err, messages.ErrPacket)
    assert err.errno == 1366
    assert err.sqlstate == "HY000"
    assert "alice" not in err.message and "1366" in err.message
    assert relay.error_hidden and relay.done


def test_err_packet_kept_when_errors_are_not_redacted() -> None:
    data = _frame([messages.err_packet(1366, "HY000", ERR_TEXT)])
    relay = _relay(_ctx(redact_errors=False))
    assert _run(relay, data) == data
    assert not relay.error_hidden and relay.done


def test_err_packet_in_the_middle_of_rows_is_rewritten() -> None:
    payloads = [lenenc_int(3), *CUSTOMER_COLS, _end(False), CUSTOMER_ROWS[0],
                messages.err_packet(1317, "70100", "Query execution was interrupted near 'alice@example.com'")]
    relay = _relay(_ctx())
    got = _payloads(_run(relay, _frame(payloads)))
    assert got[5] == MASKED_ROWS[0]
    err = messages.decode_err(got[6])
    assert isinstance(err, messages.ErrPacket) and err.errno == 1317 and err.sqlstate == "70100"
    assert "alice" not in err.message
    assert relay.error_hidden and relay.done
    assert relay.masked == {LABEL: 1}


def test_progress_report_is_not_an_error() -> None:
    progress = b"\xff\xff\xff" + bytes([1, 1]) + (500).to_bytes(3, "little") + lenenc_bytes_or_null(b"copy")
    data = _frame([progress, messages.ok_packet(CAPS)])
    relay = _relay(_ctx())
    assert _run(relay, data) == data
    assert not relay.error_hidden and relay.done


def test_local_infile_request_cannot_be_relayed() -> None:
    with pytest.raises(ProtocolViolation):
        _run(_relay(_ctx()), _frame([b"\xfb/etc/passwd"]))


def test_malformed_masked_row_fails_closed() -> None:
    payloads = [lenenc_int(3), *CUSTOMER_COLS, _end(False), b"\x011\x20alice"]  # email value truncated
    with pytest.raises(ProtocolViolation):
        _run(_relay(_ctx()), _frame(payloads))


# --------------------------------------------------------------------------------------------
# Rows of 0xFFFFFF bytes or more: the packet count changes and later sequence ids shift


@pytest.mark.parametrize(
    "email_len, note_len",
    [
        (MAX_PACKET_CHUNK + 100, 5),  # masked row shrinks from two packets to one
        (MAX_PACKET_CHUNK - 5, 0),  # row of exactly 0xFFFFFF bytes (+ empty packet) shrinks to one packet
        (2, MAX_PACKET_CHUNK - 9),  # row grows to exactly 0xFFFFFF bytes: needs an extra empty packet
    ],
)
def test_large_row_changes_packet_count_and_later_sequence_ids(email_len: int, note_len: int) -> None:
    cols = [_coldef("note", org_table="notes"), _coldef("email")]
    big = _text_row(b"n" * note_len, b"e" * email_len)
    masked = _text_row(b"n" * note_len, b"****")
    small = [_text_row(b"x", b"bob@example.com")] * 300  # enough packets after it for ids to wrap
    payloads = _resultset(cols, [big, *small])
    data = _frame(payloads)
    relay = _relay(_ctx())
    out = _run(relay, data)
    expected = _resultset(cols, [masked] + [_text_row(b"x", b"****")] * 300)
    assert _payloads(out) == expected  # also checks the ids are consecutive across the change
    in_packets, out_packets = len(_wire(data)), len(_wire(out))
    expected_delta = (len(masked) // MAX_PACKET_CHUNK) - (len(big) // MAX_PACKET_CHUNK)
    assert expected_delta != 0
    assert out_packets - in_packets == expected_delta
    assert _wire(out)[-1][0] == (_wire(data)[-1][0] + expected_delta) & 0xFF
    assert relay.done
    assert relay.masked == {LABEL: 301}


def test_large_unmasked_row_passes_unchanged() -> None:
    cols = [_coldef("note", org_table="notes"), _coldef("email")]
    data = _frame(_resultset(cols, [_text_row(b"n" * (MAX_PACKET_CHUNK + 10), None), _text_row(b"y", None)]))
    relay = _relay(_ctx())
    assert _run(relay, data) == data
    assert relay.masked == {}


# --------------------------------------------------------------------------------------------
# Binary protocol (COM_STMT_EXECUTE / COM_STMT_FETCH)

BIN_COLS = [
    _coldef("id", FieldType.LONG, charset=63),
    _coldef("email", FieldType.VARCHAR),
    _coldef("zip", FieldType.LONG, charset=63),
    _coldef("pin", FieldType.LONG, charset=63),
]
BIN_MASKS = {
    ("shop.customers", "email"): REDACT,
    ("shop.customers", "zip"): MaskSpec(function="redact", rule_id="pii-zip"),
    ("shop.customers", "pin"): MaskSpec(function="null", rule_id="pii-pin"),
}


def _int4(v: int) -> bytes:
    return v.to_bytes(4, "little", signed=True)


def _bin_row(bitmap: int, *values: bytes) -> bytes:
    """0x00, NULL bitmap ((4 + 9) // 8 = 1 byte, column i is bit i + 2), values."""
    return b"\x00" + bytes([bitmap]) + b"".join(values)


BIN_ROWS = [
    _bin_row(0x00, _int4(42), lenenc_bytes_or_null(b"alice@example.com"), _int4(12345), _int4(9876)),
    _bin_row(0x08, _int4(7), _int4(54321), _int4(1111)),  # email NULL (bit 3)
    _bin_row(0x38, _int4(8)),  # email, zip, pin NULL (bits 3, 4, 5)
]
BIN_MASKED = [
    _bin_row(0x20, _int4(42), lenenc_bytes_or_null(b"****"), _int4(0)),  # pin masked to NULL (bit 5)
    _bin_row(0x28, _int4(7), _int4(0)),
    BIN_ROWS[2],
]


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_binary_rows_masked(deprecate_eof: bool) -> None:
    payloads = _resultset(BIN_COLS, BIN_ROWS, deprecate_eof=deprecate_eof)
    relay = _relay(_ctx(by_name=BIN_MASKS), binary=True, deprecate_eof=deprecate_eof)
    out = _run(relay, _frame(payloads))
    got = _payloads(out)
    first_row = len(payloads) - len(BIN_ROWS) - 1
    assert got[:first_row] == payloads[:first_row]
    assert got[first_row:-1] == BIN_MASKED
    assert got[-1] == payloads[-1]
    assert relay.done
    assert relay.masked == {LABEL: 1, "zip (pii-zip: redact)": 2, "pin (pii-pin: null)": 2}


def test_binary_rows_byte_at_a_time_gives_same_output() -> None:
    data = _frame(_resultset(BIN_COLS, BIN_ROWS))
    whole = _run(_relay(_ctx(by_name=BIN_MASKS), binary=True), data)
    assert _run(_relay(_ctx(by_name=BIN_MASKS), binary=True), data, step=1) == whole


def test_binary_rows_without_masks_unchanged() -> None:
    data = _frame(_resultset(BIN_COLS, BIN_ROWS))
    relay = _relay(_ctx(by_name={}), binary=True)
    assert _run(relay, data) == data


def test_binary_cursor_rows_masked_by_fetch_relay() -> None:
    cursor = AUTOCOMMIT | int(ServerStatus.CURSOR_EXISTS)
    execute = [lenenc_int(len(BIN_COLS)), *BIN_COLS, messages.eof_packet(CAPS, status_flags=cursor)]
    relay = _relay(_ctx(by_name=BIN_MASKS), binary=True)
    assert _run(relay, _frame(execute)) == _frame(execute)  # metadata only
    assert relay.done
    assert relay.cursor_rows is not None
    fetch_end = messages.eof_packet(CAPS, status_flags=cursor | int(ServerStatus.LAST_ROW_SENT))
    fetch = _relay(_ctx(by_name=BIN_MASKS), binary=True, shape=Shape.FETCH, rows=relay.cursor_rows)
    got = _payloads(_run(fetch, _frame([*BIN_ROWS[:2], fetch_end])))
    assert got == [*BIN_MASKED[:2], fetch_end]
    assert fetch.done
    assert fetch.masked == {LABEL: 1, "zip (pii-zip: redact)": 2, "pin (pii-pin: null)": 2}


# --------------------------------------------------------------------------------------------
# SHOW WARNINGS / SHOW ERRORS under masking (issue 11: no masked value in a message)

from sqlward.adapters.mysql.maskrelay import HIDDEN_MESSAGE, is_diagnostics_result  # noqa: E402

WARN_TEXT = b"Truncated incorrect INTEGER value: 'alice@example.com'"
WARN_COLS = [
    _coldef("Level", org_table="", schema=""),
    _coldef("Code", FieldType.LONG, org_table="", schema="", charset=63, flags=0x20),
    _coldef("Message", org_table="", schema=""),
]
WARN_ROWS = [_text_row(b"Warning", b"1292", WARN_TEXT), _text_row(b"Note", b"1003", b"a note")]
HIDDEN_ROWS = [
    _text_row(b"Warning", b"1292", HIDDEN_MESSAGE.encode()), _text_row(b"Note", b"1003", HIDDEN_MESSAGE.encode()),
]


def test_is_diagnostics_result() -> None:
    assert is_diagnostics_result(["Level", "Code", "Message"])
    assert is_diagnostics_result(["level", "CODE", "message"])
    assert not is_diagnostics_result(["Level", "Code"])
    assert not is_diagnostics_result(["Level", "Code", "Message", "x"])
    assert len(HIDDEN_MESSAGE) < 512  # fits SHOW WARNINGS' VARCHAR(512)


@pytest.mark.parametrize("ctx", [None, "nothing", "masked"])
@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_show_warnings_message_hidden_level_and_code_kept(ctx: str | None, deprecate_eof: bool) -> None:
    context = None if ctx is None else _ctx(by_name={} if ctx == "nothing" else None)
    payloads = _resultset(WARN_COLS, WARN_ROWS, deprecate_eof=deprecate_eof)
    relay = MaskingRelay(context, shape=Shape.RESULTSET, binary=False, deprecate_eof=deprecate_eof,
                         capabilities=CAPS_DE if deprecate_eof else CAPS, hide_messages=True)
    out = _run(relay, _frame(payloads), step=3)
    got = _payloads(out)
    n = len(payloads) - len(WARN_ROWS) - 1
    assert got[:n] == payloads[:n] and got[-1] == payloads[-1]
    assert got[n:-1] == HIDDEN_ROWS
    assert WARN_TEXT not in out


def test_show_warnings_shown_when_nothing_masked_was_read() -> None:
    data = _frame(_resultset(WARN_COLS, WARN_ROWS))
    relay = MaskingRelay(_ctx(by_name={}), shape=Shape.RESULTSET, binary=False, deprecate_eof=False, capabilities=CAPS)
    assert _run(relay, data) == data


def test_show_warnings_after_another_result_of_a_multi_statement() -> None:
    """`SELECT 1; SHOW WARNINGS`: the second result set is the one rewritten."""
    more = AUTOCOMMIT | int(ServerStatus.MORE_RESULTS_EXISTS)
    first = _resultset([_coldef("1", FieldType.LONGLONG, org_table="", schema="", charset=63)], [_text_row(b"1")],
                       status=more)
    second = _resultset(WARN_COLS, WARN_ROWS)
    relay = MaskingRelay(None, shape=Shape.RESULTSET, binary=False, deprecate_eof=False, capabilities=CAPS,
                         hide_messages=True)
    got = _payloads(_run(relay, _frame(first + second)))
    assert got[: len(first)] == first
    assert got[len(first) + 5 : -1] == HIDDEN_ROWS


def test_prepared_show_warnings_binary_rows_hidden() -> None:
    rows = [_bin_row(0x00, lenenc_bytes_or_null(b"Warning"), _int4(1292), lenenc_bytes_or_null(WARN_TEXT))]
    payloads = _resultset(WARN_COLS, rows)
    relay = MaskingRelay(None, shape=Shape.RESULTSET, binary=True, deprecate_eof=False, capabilities=CAPS,
                         hide_messages=True)
    out = _run(relay, _frame(payloads))
    assert _payloads(out)[-2] == _bin_row(
        0x00, lenenc_bytes_or_null(b"Warning"), _int4(1292), lenenc_bytes_or_null(HIDDEN_MESSAGE.encode())
    )
    assert WARN_TEXT not in out


def test_err_packet_hidden_on_request_even_without_plan_flag() -> None:
    """`hide_errors` (the session's reading: a content classifier covers the values read)
    overrides the plan's redact_errors."""
    err = messages.err_packet(1105, "HY000", ERR_TEXT)
    relay = MaskingRelay(_ctx(redact_errors=False), shape=Shape.RESULTSET, binary=False, deprecate_eof=False,
                         capabilities=CAPS, hide_errors=True)
    out = _run(relay, _frame([err]))
    assert b"alice@example.com" not in out and relay.error_hidden
