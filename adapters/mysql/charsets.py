"""The client character sets the gateway can read SQL in exactly as MariaDB / MySQL read it, and
how a session's client character set is learnt and followed (sans-IO); likewise the sql_modes
that change how the server lexes SQL text (see "sql_mode" below).

Why: the server lexes a statement's bytes in the connection's `character_set_client`. In a
multi-byte character set whose trailing bytes overlap ASCII (gbk, big5, sjis, cp932, gb18030, ...)
a lead byte can swallow the backslash or the quote that follows it, so the same bytes read as UTF-8
and as GBK are different statements: the policy would judge one and the server run the other. The
gateway therefore reads client SQL only in character sets it decodes exactly as the server does,
and refuses every other one:

- accepted (`CODECS`): utf8mb4, utf8mb3 (alias utf8) and binary (identifiers are taken as UTF-8 by
  the server; verified against MariaDB 10.11) read as UTF-8; latin1 as MariaDB's latin1, which is
  Windows-1252 plus the five code points Windows-1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90,
  0x9D map to U+0081 ... as on the server; `decode`); ascii as ASCII. Bytes that are invalid in the
  character set survive as lone surrogates (`surrogateescape`); in all of these the bytes that
  make the statement's structure (quotes, backslashes, semicolons, comment marks) are single ASCII
  bytes that never occur inside a multi-byte character, so the structure is the server's.
- refused: everything else, named in the ERR packet with what to use instead
  (`errors.CharsetRefused`, ER_UNKNOWN_CHARACTER_SET 1115 / 42000): at login (the handshake's
  collation id, refused before the upstream is reached; an id the gateway does not know is
  resolved by asking the upstream, which falls back to its default as it does for any client), in
  COM_CHANGE_USER, and in session (`client_charset_effect`).

In-session switches: `client_charset_effect(sql)` reads a request's SET statements (executable
comments unwrapped, so `/*!40101 SET NAMES gbk */` counts) for assignments that set the client
character set - `NAMES`, `CHARACTER SET`, `CHARSET`, `character_set_client` in any scope
(`SESSION`, `LOCAL`, `@@`, `@@session.`, `@@local.`), quoted or not, with `=` or `:=`, anywhere in
a comma-separated list, `SET STATEMENT ... FOR`. A literal name (or collation id) settles the new
character set: refused when it is not accepted, followed without asking the server otherwise. A
value the text does not settle (`DEFAULT`, a variable, an expression) and dynamic SQL (EXECUTE,
EXECUTE IMMEDIATE, PREPARE'd SET) are `unsettled`: the session asks the server for
`@@character_set_client` after the request ran, and when the server then reads an unaccepted
character set the session fails closed (every request refused, naming it, until a plain-ASCII
`SET NAMES <accepted>` or COM_RESET_CONNECTION puts it back). A switch followed by another
statement in the same request is refused (the rest of the request would be read in the new
character set while the gateway judged it in the old one).
"""

from __future__ import annotations

from typing import NamedTuple

from sqlward.policy.sqltext import Token, Unlexable, split_statements, tokenize

__all__ = [
    "ACCEPTED", "CODECS", "NO_MODE_EFFECT", "REFUSED_SQL_MODES", "SqlModeEffect", "lexing_sql_mode", "refused_sql_mode",
    "sql_mode_effect", "CharsetEffect", "charset_of_collation", "client_charset_effect", "codec_of", "decode",
    "refusal_message",
]

# Character set name -> the Python codec that reads it as the server does.
CODECS: dict[str, str] = {
    "utf8mb4": "utf-8",
    "utf8mb3": "utf-8",
    "utf8": "utf-8",
    "binary": "utf-8",
    "latin1": "mysql-latin1",
    "ascii": "ascii",
}
ACCEPTED = "utf8mb4, utf8mb3, latin1, ascii, binary"

# Collation id -> character set, as MariaDB 10.11 numbers them (information_schema.COLLATIONS);
# MySQL 8 numbers its utf8mb4 *_0900_* collations 255 .. 323 (MariaDB does not know them and reads
# such a client in its default character set: the session asks the server then).
_RANGES = """
1:big5 2:latin2 3:dec8 4:cp850 5:latin1 6:hp8 7:koi8r 8:latin1 9:latin2 10:swe7 11:ascii 12:ujis 13:sjis
14:cp1251 15:latin1 16:hebrew 18:tis620 19:euckr 20:latin7 21:latin2 22:koi8u 23:cp1251 24:gb2312 25:greek
26:cp1250 27:latin2 28:gbk 29:cp1257 30:latin5 31:latin1 32:armscii8 33:utf8mb3 34:cp1250 35:ucs2 36:cp866
37:keybcs2 38:macce 39:macroman 40:cp852 41:latin7 42:latin7 43:macce 44:cp1250 45:utf8mb4 46:utf8mb4
47:latin1 48:latin1 49:latin1 50:cp1251 51:cp1251 52:cp1251 53:macroman 54:utf16 55:utf16 56:utf16le
57:cp1256 58:cp1257 59:cp1257 60:utf32 61:utf32 62:utf16le 63:binary 64:armscii8 65:ascii 66:cp1250
67:cp1256 68:cp866 69:dec8 70:greek 71:hebrew 72:hp8 73:keybcs2 74:koi8r 75:koi8u 76:utf8mb3 77:latin2
78:latin5 79:latin7 80:cp850 81:cp852 82:swe7 83:utf8mb3 84:big5 85:euckr 86:gb2312 87:gbk 88:sjis
89:tis620 90:ucs2 91:ujis 92:geostd8 93:geostd8 94:latin1 95:cp932 96:cp932 97:eucjpms 98:eucjpms
99:cp1250 101-124:utf16 128-151:ucs2 159:ucs2 160-183:utf32 192-215:utf8mb3 223:utf8mb3 224-247:utf8mb4
248-250:gb18030 255-323:utf8mb4 576-578:utf8mb3 608-610:utf8mb4 640-642:ucs2 672-674:utf16
736-738:utf32 1025:big5 1027:dec8 1028:cp850 1030:hp8 1031:koi8r 1032:latin1 1033:latin2 1034:swe7
1035:ascii 1036:ujis 1037:sjis 1040:hebrew 1042:tis620 1043:euckr 1046:koi8u 1048:gb2312 1049:greek
1050:cp1250 1052:gbk 1054:latin5 1056:armscii8 1057:utf8mb3 1059:ucs2 1060:cp866 1061:keybcs2 1062:macce
1063:macroman 1064:cp852 1065:latin7 1067:macce 1069:utf8mb4 1070:utf8mb4 1071:latin1 1074:cp1251
1075:cp1251 1077:macroman 1078:utf16 1079:utf16 1080:utf16le 1081:cp1256 1082:cp1257 1083:cp1257
1084:utf32 1085:utf32 1086:utf16le 1088:armscii8 1089:ascii 1090:cp1250 1091:cp1256 1092:cp866 1093:dec8
1094:greek 1095:hebrew 1096:hp8 1097:keybcs2 1098:koi8r 1099:koi8u 1101:latin2 1102:latin5 1103:latin7
1104:cp850 1105:cp852 1106:swe7 1107:utf8mb3 1108:big5 1109:euckr 1110:gb2312 1111:gbk 1112:sjis
1113:tis620 1114:ucs2 1115:ujis 1116:geostd8 1117:geostd8 1119:cp932 1120:cp932 1121:eucjpms 1122:eucjpms
1125:utf16 1147:utf16 1152:ucs2 1174:ucs2 1184:utf32 1206:utf32 1216:utf8mb3 1238:utf8mb3 1248:utf8mb4
1270:utf8mb4
"""


def _collations() -> dict[int, str]:
    table: dict[int, str] = {}
    for item in _RANGES.split():
        ids, name = item.split(":")
        first, _, last = ids.partition("-")
        for i in range(int(first), int(last or first) + 1):
            table[i] = name
    return table


_COLLATIONS = _collations()
# MySQL 8 collation ids MariaDB does not know: the server reads such a client in its default.
MYSQL8_ONLY = frozenset(range(248, 251)) | frozenset(range(255, 324))


def charset_of_collation(collation_id: int) -> str | None:
    """The character set of a collation id, or None when the gateway does not know the id."""
    return _COLLATIONS.get(collation_id)


def codec_of(charset: str) -> str | None:
    """The Python codec that reads `charset` as the server does; None: refused."""
    return CODECS.get(charset.lower())


_LATIN1_HOLES = {0xDC81: "\x81", 0xDC8D: "\x8d", 0xDC8F: "\x8f", 0xDC90: "\x90", 0xDC9D: "\x9d"}


def decode(data: bytes, codec: str) -> str:
    """Client text as the server reads it (invalid bytes survive as lone surrogates)."""
    if codec == "mysql-latin1":
        text = data.decode("cp1252", "surrogateescape")
        if "\udc81" in text or "\udc8d" in text or "\udc8f" in text or "\udc90" in text or "\udc9d" in text:
            text = text.translate(_LATIN1_HOLES)
        return text
    return data.decode(codec, "surrogateescape")


def encode(text: str, codec: str) -> bytes:
    """The inverse of `decode` (names the gateway sends, e.g. COM_INIT_DB)."""
    if codec == "mysql-latin1":
        return "".join(c if c not in "\x81\x8d\x8f\x90\x9d" else chr(0xDC00 + ord(c)) for c in text).encode(
            "cp1252", "surrogateescape")
    return text.encode(codec, "surrogateescape")


def refusal_message(charset: str) -> str:
    return (
        f"the client character set '{charset}' cannot be read by sqlward as the server reads it "
        f"(multi-byte or unsupported); connect with utf8mb4 (accepted: {ACCEPTED})"
    )


# -- in-session switches ---------------------------------------------------------------------------


class CharsetEffect(NamedTuple):
    """What a request does to the client character set (see the module doc)."""

    # Character sets named literally by the request's switches, in order (lower case).
    named: tuple[str, ...] = ()
    # A switch whose value the text does not settle, or dynamic SQL that may run one.
    unsettled: bool = False
    # 1-based number of a statement that follows a switch in the same request (refused), or 0.
    after_switch: int = 0

    @property
    def switches(self) -> bool:
        return bool(self.named) or self.unsettled

    def refused(self) -> str | None:
        """The first named character set that is not accepted, if any."""
        for name in self.named:
            if codec_of(name) is None:
                return name
        return None


NO_EFFECT = CharsetEffect()

# Cheap prefilter: a request without any of these words cannot switch (lower-cased text).
_WORDS = ("names", "charset", "character", "execute")
_SCOPES = frozenset({"SESSION", "LOCAL", "GLOBAL", "PERSIST", "PERSIST_ONLY"})
_DYNAMIC = frozenset({"EXECUTE"})  # EXECUTE stmt / EXECUTE IMMEDIATE: may run a SET NAMES


def _word(tok: Token) -> str:
    if tok.kind == "word":
        return tok.text.upper()
    if tok.kind == "qid":  # `character_set_client`
        return tok.text[1:-1].replace("``", "`").upper()
    return ""


def _value_name(tokens: list[Token], i: int) -> tuple[str | None, bool]:
    """The character set named by the value at tokens[i]: (name, settled). A name or string
    literal settles it; a number is a collation id; anything else (DEFAULT, @var, expression)
    does not settle it."""
    if i >= len(tokens):
        return None, False
    tok = tokens[i]
    rest = tokens[i + 1 :]
    single = not rest or rest[0].text in (",",) or _word(rest[0]) in ("COLLATE", "FOR")
    if not single:
        return None, False
    if tok.kind == "word":
        word = tok.text.lower()
        if word.isdigit():
            name = charset_of_collation(int(word))
            return (name, True) if name is not None else (f"collation {word}", True)
        if tok.text.upper() == "DEFAULT":  # the server's default: not settled by the text
            return None, False
        return word, True
    if tok.kind == "qid":
        return tok.text[1:-1].replace("``", "`").lower(), True
    if tok.kind == "num":
        text = tok.text
        if text.isdigit():
            name = charset_of_collation(int(text))
            return (name, True) if name is not None else (f"collation {text}", True)
        return None, False
    if tok.kind == "str":
        text = tok.text
        if text[:1] in ("'", '"') and len(text) >= 2 and "\\" not in text:
            return text[1:-1].replace(text[0] * 2, text[0]).lower(), True
        return None, False
    return None, False


def _assignments(body: list[Token]) -> list[list[Token]]:
    """The comma-separated assignments that follow a SET keyword (`body`: the tokens after it,
    to the end of the statement), at parenthesis depth 0; for SET STATEMENT ... FOR, those
    before FOR."""
    items: list[list[Token]] = []
    current: list[Token] = []
    depth = 0
    statement_form = bool(body) and _word(body[0]) == "STATEMENT"
    if statement_form:
        body = body[1:]
    for tok in body:
        if tok.text == "(":
            depth += 1
        elif tok.text == ")":
            depth -= 1
        if depth == 0 and tok.text == ",":
            items.append(current)
            current = []
            continue
        if depth == 0 and statement_form and _word(tok) == "FOR":
            break
        current.append(tok)
    items.append(current)
    return items


def _assignment_effect(item: list[Token]) -> tuple[str | None, bool] | None:
    """None: not a client character set assignment; else (name, settled)."""
    words = [_word(t) for t in item]
    k = 0
    # scope prefixes: SESSION / LOCAL / GLOBAL, @@, @@session. / @@local. / @@global.
    while k < len(item):
        if words[k] in _SCOPES:
            k += 1
        elif item[k].text == "@" and k + 1 < len(item) and item[k + 1].text == "@":
            k += 2
        elif k + 1 < len(item) and words[k] in _SCOPES and item[k + 1].text == ".":
            k += 2
        elif item[k].text == "." and k > 0:
            k += 1
        else:
            break
    if k >= len(item):
        return None
    head = words[k]
    if head in ("NAMES", "CHARSET"):
        following = item[k + 1].text if k + 1 < len(item) else ""
        if following in ("=", ":", "."):  # a column or variable of that name (UPDATE t SET names = ...)
            return None
        return _value_name(item, k + 1)
    if head == "CHARACTER" and k + 1 < len(item) and words[k + 1] == "SET":
        return _value_name(item, k + 2)
    if head == "CHARACTER_SET_CLIENT":
        j = k + 1
        if j < len(item) and item[j].text == ":":
            j += 1
        if j < len(item) and item[j].text == "=":
            return _value_name(item, j + 1)
        return None, False
    return None


def client_charset_effect(sql: str) -> CharsetEffect:
    """What the request `sql` does to the client character set (see the module doc)."""
    low = sql.lower()
    if not any(w in low for w in _WORDS):
        return NO_EFFECT
    try:
        statements = split_statements(tokenize(sql, "mysql"))
    except Unlexable:
        # Nothing can be said of where its statements end: a switch the text does not settle,
        # which something may follow (refused: `SET NAMES gbk; SELECT '...` is unterminated as
        # the gateway reads it, and more statements as the server reads it in gbk).
        return CharsetEffect(unsettled=True, after_switch=1)
    named: list[str] = []
    unsettled = False
    after = 0
    switched = False
    for index, statement in enumerate(statements):
        if switched and not after:
            after = index + 1
        sig = [t for t in statement if t.kind not in ("ws", "comment")]
        if not sig:
            continue
        words = [_word(t) for t in sig]
        if words[0] in ("GRANT", "REVOKE"):  # EXECUTE is a privilege there
            continue
        # Every SET of the statement, not only a leading one: compound statements (BEGIN NOT
        # ATOMIC ... END, IF ... THEN, FOR ... DO) run a SET NAMES whose effect outlives them.
        for k, word in enumerate(words):
            if word in _DYNAMIC:
                unsettled = switched = True
            elif word == "SET" and (k == 0 or words[k - 1] != "CHARACTER"):
                for item in _assignments(sig[k + 1 :]):
                    effect = _assignment_effect(item)
                    if effect is None:
                        continue
                    name, settled = effect
                    switched = True
                    if name is not None:
                        named.append(name)
                    if not settled:
                        unsettled = True
    if not named and not unsettled:
        return NO_EFFECT
    return CharsetEffect(tuple(named), unsettled, after)


# -- sql_mode ----------------------------------------------------------------------------------
#
# The server's lexer also depends on the session's `sql_mode`: NO_BACKSLASH_ESCAPES makes `\` an
# ordinary character inside string literals, ANSI_QUOTES makes `"..."` an identifier. The
# gateway analyses SQL as the default mode reads it, so after `SET sql_mode = 'NO_BACKSLASH_ESCAPES'`
# the text `SELECT 'a\' ; DROP TABLE t; -- '` would be one SELECT to the gateway and three
# statements to the server. The gateway therefore refuses every mode that changes how the
# server reads SQL text: those two flags and the combination modes that include them (MariaDB
# 10.11: ANSI, ORACLE, MSSQL, DB2, POSTGRESQL, MAXDB all set ANSI_QUOTES). Any other mode
# (STRICT_TRANS_TABLES, TRADITIONAL, PIPES_AS_CONCAT, IGNORE_SPACE, ...) leaves the statement
# structure, string literals and identifiers as the gateway reads them and is accepted.
#
# `sql_mode_effect(sql)` reads a request's SET statements the way `client_charset_effect` does
# (every scope and spelling, lists, SET STATEMENT ... FOR, executable comments, compound
# blocks). A quoted string or a bare word settles the value, refused when it names a refused
# mode; anything else (DEFAULT, a variable, a number, an expression such as
# CONCAT(@@sql_mode, ...)) and dynamic SQL (EXECUTE) are `unsettled`: the session asks the server
# for `@@sql_mode` after the request ran and fails closed when it holds a refused mode. An
# unsettled switch followed by another statement, inside a compound statement or SET STATEMENT
# (the rest would be read in a mode the gateway does not know), or of the GLOBAL / PERSIST
# default (every new upstream session would start in it), is refused; so is text the gateway
# cannot lex that mentions sql_mode. The session also asks the server at login, after
# COM_RESET_CONNECTION / COM_CHANGE_USER and after every request that assigns sql_mode, and
# watches SERVER_STATUS_NO_BACKSLASH_ESCAPES in every status.

# Modes that change how the server lexes SQL text, and the combination modes that include one.
REFUSED_SQL_MODES = frozenset({
    "NO_BACKSLASH_ESCAPES", "ANSI_QUOTES", "ANSI", "ORACLE", "MSSQL", "DB2", "POSTGRESQL", "MAXDB",
})
# The flags the server reports in @@sql_mode (combination modes are expanded there).
LEXING_SQL_MODE_FLAGS = ("ANSI_QUOTES", "NO_BACKSLASH_ESCAPES")


def refused_sql_mode(value: str) -> str | None:
    """The first mode of a sql_mode value (comma-separated) that the gateway refuses, or None."""
    for part in value.split(","):
        name = part.strip().upper()
        if name in REFUSED_SQL_MODES:
            return name
    return None


def lexing_sql_mode(server_value: str) -> str | None:
    """The flag of the server's @@sql_mode that makes it read SQL unlike the gateway, or None."""
    parts = {p.strip().upper() for p in server_value.split(",")}
    for flag in LEXING_SQL_MODE_FLAGS:
        if flag in parts:
            return flag
    return None


class SqlModeEffect(NamedTuple):
    """What a request does to the session's sql_mode (see above)."""

    # sql_mode values named literally, in order (as written).
    named: tuple[str, ...] = ()
    # A value the text does not settle, or dynamic SQL that may set one.
    unsettled: bool = False
    # 1-based number of a statement that follows a switch in the same request, or 0.
    after_switch: int = 0
    # An unsettled value inside a compound statement or SET STATEMENT ... FOR.
    embedded: bool = False

    @property
    def switches(self) -> bool:
        return bool(self.named) or self.unsettled

    def refused(self) -> str | None:
        """The first refused mode a named value holds, if any."""
        for value in self.named:
            mode = refused_sql_mode(value)
            if mode is not None:
                return mode
        return None


NO_MODE_EFFECT = SqlModeEffect()
# Statements whose SET assigns columns, not variables.
_COLUMN_SETS = frozenset({"UPDATE", "INSERT", "REPLACE", "LOAD"})


_GLOBAL_SCOPES = frozenset({"GLOBAL", "PERSIST", "PERSIST_ONLY"})


def _sql_mode_assignment(item: list[Token]) -> tuple[str | None, bool, bool] | None:
    """None: not an assignment to sql_mode; else (value, settled, global scope)."""
    words = [_word(t) for t in item]
    k = 0
    scope_global = False
    while k < len(item):
        if words[k] in _SCOPES:
            scope_global = scope_global or words[k] in _GLOBAL_SCOPES
            k += 1
        elif item[k].text == "@" and k + 1 < len(item) and item[k + 1].text == "@":
            k += 2
        elif item[k].text == "." and k > 0:
            k += 1
        else:
            break
    if k >= len(item) or words[k] != "SQL_MODE":
        return None
    j = k + 1
    if j < len(item) and item[j].text == ":":
        j += 1
    if j >= len(item) or item[j].text != "=":
        return None, False, scope_global
    values = item[j + 1 :]
    if len(values) != 1:  # an expression, adjacent literals, an introducer: not settled
        return None, False, scope_global
    tok = values[0]
    if tok.kind == "str":
        text = tok.text
        if text[:1] in ("'", '"') and len(text) >= 2 and "\\" not in text:
            return text[1:-1].replace(text[0] * 2, text[0]), True, scope_global
        return None, False, scope_global
    if tok.kind == "word" and not tok.text.isdigit() and tok.text.upper() != "DEFAULT":
        return tok.text, True, scope_global
    if tok.kind == "qid":
        return tok.text[1:-1].replace("``", "`"), True, scope_global
    return None, False, scope_global


def sql_mode_effect(sql: str) -> SqlModeEffect:
    """What the request `sql` does to the session's sql_mode (see above)."""
    low = sql.lower()
    if "sql_mode" not in low and "execute" not in low:
        return NO_MODE_EFFECT
    try:
        statements = split_statements(tokenize(sql, "mysql"))
    except Unlexable:
        # Nothing can be said of where its statements end: text that is unterminated as the
        # gateway reads it can be more statements in the mode its first one sets (refused).
        return SqlModeEffect(unsettled=True, embedded=True)
    named: list[str] = []
    unsettled = embedded = switched = False
    after = 0
    for index, statement in enumerate(statements):
        if switched and not after:
            after = index + 1
        sig = [t for t in statement if t.kind not in ("ws", "comment")]
        if not sig:
            continue
        words = [_word(t) for t in sig]
        if words[0] in ("GRANT", "REVOKE"):
            continue
        columns = words[0] in _COLUMN_SETS  # UPDATE t SET sql_mode = ...: a column of that name
        for k, word in enumerate(words):
            if word in _DYNAMIC:
                unsettled = switched = True
            elif word == "SET" and not columns and (k == 0 or words[k - 1] != "CHARACTER"):
                body = sig[k + 1 :]
                statement_form = bool(body) and _word(body[0]) == "STATEMENT"
                for item in _assignments(body):
                    effect = _sql_mode_assignment(item)
                    if effect is None:
                        continue
                    value, settled, scope_global = effect
                    switched = True
                    if value is not None:
                        named.append(value)
                    if not settled:
                        unsettled = True
                        # (a global default the text does not settle would reach every new
                        # upstream session, the gateway's own side connections included)
                        if k != 0 or statement_form or scope_global:
                            embedded = True
    if not named and not unsettled:
        return NO_MODE_EFFECT
    return SqlModeEffect(tuple(named), unsettled, after, embedded)
