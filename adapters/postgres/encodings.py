"""PostgreSQL client encodings -> Python codecs, for reading statement text as the server will.

The server interprets a Query or Parse in the session's `client_encoding` (reported by
ParameterStatus at startup and after every change). The policy must read the same characters, or
a multi-byte character could hide a quote or backslash from the lexer. Encodings Python has no
codec for (EUC_TW, MULE_INTERNAL) only use bytes >= 0x80 inside multi-byte characters, so
reading them as Latin-1 keeps every ASCII byte (quotes, keywords) where the server sees it.
Undecodable bytes become surrogate escapes (see `printable` for the audit trail).

Every entry is checked against the server (tests/integration/test_pg_reading.py: every byte
0x01-0x7F and every pair of a byte >= 0x80 and an ASCII byte, decoded here and by the server's
`convert_from`): the ASCII characters must come out the same. Python's shift_jis_2004 codec reads
the single bytes 0x5C and 0x7E as YEN SIGN and OVERLINE where the server reads backslash and
tilde, so SHIFT_JIS_2004 is decoded with those two put back (no multi-byte character decodes to
either in that codec). An encoding the map does not know is refused (`problem`): at startup with
a FATAL, in session (ParameterStatus) by refusing every request until it is switched back.
"""

from __future__ import annotations

import codecs
from typing import Callable


_PG_TO_PYTHON = {
    "UTF8": "utf-8", "UNICODE": "utf-8", "SQL_ASCII": "latin-1",
    "LATIN1": "latin-1", "LATIN2": "iso8859-2", "LATIN3": "iso8859-3", "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9", "LATIN6": "iso8859-10", "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14", "LATIN9": "iso8859-15", "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6", "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866", "WIN874": "cp874", "WIN1250": "cp1250", "WIN1251": "cp1251",
    "WIN1252": "cp1252", "WIN1253": "cp1253", "WIN1254": "cp1254", "WIN1255": "cp1255",
    "WIN1256": "cp1256", "WIN1257": "cp1257", "WIN1258": "cp1258",
    "KOI8R": "koi8-r", "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp", "EUC_CN": "gb2312", "EUC_KR": "euc_kr", "EUC_JIS_2004": "euc_jis_2004",
    "SJIS": "cp932", "SHIFT_JIS_2004": "shift_jis_2004", "BIG5": "cp950", "GBK": "gbk",
    "GB18030": "gb18030", "UHC": "cp949", "JOHAB": "johab",
    "EUC_TW": "latin-1", "MULE_INTERNAL": "latin-1",
}


def _key(pg_encoding: str) -> str:
    return pg_encoding.upper().replace("-", "").replace(" ", "")


def problem(pg_encoding: str) -> str | None:
    """Why statement text in `pg_encoding` cannot be read as the server reads it (None: it can)."""
    if _key(pg_encoding) in _PG_TO_PYTHON:
        return None
    return (
        f'client_encoding "{pg_encoding}" is not supported by sqlward (it cannot read SQL text in it '
        "as the server does); use UTF8"
    )


_SJIS2004_ASCII = str.maketrans({"\u00a5": "\\", "\u203e": "~"})


def decoder_for(pg_encoding: str) -> Callable[[bytes], str]:
    """A function decoding statement bytes sent in `pg_encoding` (UTF-8 when unknown: check
    `problem` first)."""
    name = _PG_TO_PYTHON.get(_key(pg_encoding), "utf-8")
    if name == "utf-8":
        def decode_utf8(data: bytes) -> str:
            return data.decode("utf-8", "surrogateescape")
        return decode_utf8
    codec = codecs.lookup(name)
    if name == "shift_jis_2004":
        def decode_sjis2004(data: bytes) -> str:
            return codec.decode(data, "surrogateescape")[0].translate(_SJIS2004_ASCII)
        return decode_sjis2004

    def decode(data: bytes) -> str:
        return codec.decode(data, "surrogateescape")[0]

    return decode
