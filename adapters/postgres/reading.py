"""How the server reads SQL text, and the statements that would change it (no I/O).

The gateway's analysis reads statement text as PostgreSQL does with its defaults: UTF-8 or the
session's client_encoding (`encodings`), and `standard_conforming_strings = on` (in '...' a
backslash is an ordinary character; only E'...' knows backslash escapes). With
`standard_conforming_strings = off` the server reads `'a\\' , '` as one literal where the gateway
reads two, so a statement can hide another one inside what the gateway takes for a string. It is
the only setting of PostgreSQL 15 that changes how the lexer splits text (`backslash_quote` only
decides whether `\\'` in E'...' is an error, `escape_string_warning` only warns,
`lo_compat_privileges` is about large objects, `array_nulls` reads array values, not SQL text).

`tokens(sql)` is a small lexer of the server's text with `standard_conforming_strings = on`:
comments, '...' (with the continuation of adjacent literals over a newline), E'...' escapes,
U&'...' and U&"..." escapes (with UESCAPE), $tag$...$tag$, "..." identifiers (case kept) and
bare words (lower-cased). Every check here works on decoded tokens, so no spelling or quoting
hides a name.

`reading_change(sql)` says why a statement may set standard_conforming_strings to anything but
on (None: it cannot): SET / SET SESSION / SET LOCAL to a value other than on, set_config with a
setting name that is not a literal or names it with a value other than on, ALTER ROLE / DATABASE
/ SYSTEM ... SET, a function's SET clause, writes to pg_settings, and DO / function bodies with
dynamic SQL (EXECUTE of a computed string). The text of string literals is read as SQL too
(bodies of DO blocks and functions, EXECUTE strings), so a mention inside a literal counts.
`restores(sql)`: the statement is exactly one SET / RESET putting it back on (the only request a
session whose server reads text otherwise still lets through).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sqlward.adapters.text import hinted

SCS = "standard_conforming_strings"
_ON = frozenset("on true yes 1 default".split())  # DEFAULT: the value the session started with


class Token(NamedTuple):
    kind: str  # "word" (bare, lower-cased), "ident" ("..." / U&"..."), "str", "num", "op"
    value: str


_SPACE = " \t\n\r\f\v"
_WORD_START = re.compile(r"[A-Za-z_\u0080-\U0010ffff]")
_WORD = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]*")
_DOLLAR = re.compile(r"\$([A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_NUM = re.compile(r"[0-9.][0-9A-Za-z_.]*")
_UESCAPE = re.compile(r"\s*UESCAPE\s*'([^'])'", re.IGNORECASE)


def _quoted(sql: str, i: int, quote: str) -> tuple[str, int]:
    """Text of a quoted run starting after the opening quote at i-1 ('' / "" doubled)."""
    out = []
    n = len(sql)
    while i < n:
        c = sql[i]
        if c == quote:
            if i + 1 < n and sql[i + 1] == quote:
                out.append(quote)
                i += 2
                continue
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), n  # unterminated: the rest


def _continued(sql: str, i: int) -> int | None:
    """PostgreSQL joins 'a'<white space with a newline>'b': the position after the next quote."""
    j = i
    n = len(sql)
    newline = False
    while j < n and sql[j] in _SPACE:
        newline = newline or sql[j] in "\n\r"
        j += 1
    if newline and j < n and sql[j] == "'":
        return j + 1
    return None


def _e_escapes(raw: str) -> str:
    out = []
    i = 0
    n = len(raw)
    simple = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
    while i < n:
        c = raw[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        d = raw[i + 1]
        if d in simple:
            out.append(simple[d])
            i += 2
        elif d in "01234567":
            m = re.match(r"[0-7]{1,3}", raw[i + 1 :])
            assert m
            out.append(chr(int(m.group(0), 8) & 0xFF))
            i += 1 + len(m.group(0))
        elif d == "x" and re.match(r"[0-9A-Fa-f]", raw[i + 2 : i + 3]):
            m = re.match(r"[0-9A-Fa-f]{1,2}", raw[i + 2 :])
            assert m
            out.append(chr(int(m.group(0), 16)))
            i += 2 + len(m.group(0))
        elif d in "uU":
            width = 4 if d == "u" else 8
            digits = raw[i + 2 : i + 2 + width]
            if len(digits) == width and re.fullmatch(r"[0-9A-Fa-f]+", digits):
                try:
                    out.append(chr(int(digits, 16)))
                except (ValueError, OverflowError):
                    pass
                i += 2 + width
            else:
                out.append(d)
                i += 2
        else:
            out.append(d)
            i += 2
    return "".join(out)


def _u_escapes(raw: str, esc: str) -> str:
    out = []
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c != esc or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        if raw[i + 1] == esc:
            out.append(esc)
            i += 2
        elif raw[i + 1] == "+" and re.fullmatch(r"[0-9A-Fa-f]{6}", raw[i + 2 : i + 8]):
            try:
                out.append(chr(int(raw[i + 2 : i + 8], 16)))
            except ValueError:
                pass
            i += 8
        elif re.fullmatch(r"[0-9A-Fa-f]{4}", raw[i + 1 : i + 5]):
            out.append(chr(int(raw[i + 1 : i + 5], 16)))
            i += 5
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _string(sql: str, i: int, *, escapes: bool) -> tuple[str, int]:
    """A '...' literal (E'...' when `escapes`) from after its opening quote, with its
    continuations; returns the decoded text and the end."""
    parts = []
    while True:
        if escapes:
            raw = []
            n = len(sql)
            while i < n:
                c = sql[i]
                if c == "\\" and i + 1 < n:
                    raw.append(sql[i : i + 2])
                    i += 2
                    continue
                if c == "'":
                    if i + 1 < n and sql[i + 1] == "'":
                        raw.append("\\'")
                        i += 2
                        continue
                    i += 1
                    break
                raw.append(c)
                i += 1
            parts.append(_e_escapes("".join(raw)))
        else:
            text, i = _quoted(sql, i, "'")
            parts.append(text)
        nxt = _continued(sql, i)
        if nxt is None:
            return "".join(parts), i
        i = nxt


def tokens(sql: str) -> list[Token]:
    """The tokens of `sql` as the server reads it with standard_conforming_strings on."""
    out: list[Token] = []
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c in _SPACE:
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            depth = 0
            while i < n:
                if sql.startswith("/*", i):
                    depth += 1
                    i += 2
                elif sql.startswith("*/", i):
                    depth -= 1
                    i += 2
                    if depth == 0:
                        break
                else:
                    i += 1
        elif c == "'":
            text, i = _string(sql, i + 1, escapes=False)
            out.append(Token("str", text))
        elif c in "eE" and sql[i + 1 : i + 2] == "'":
            text, i = _string(sql, i + 2, escapes=True)
            out.append(Token("str", text))
        elif c in "bBxXnN" and sql[i + 1 : i + 2] == "'":
            text, i = _string(sql, i + 2, escapes=False)
            out.append(Token("str", text))
        elif c in "uU" and sql[i + 1 : i + 2] == "&" and sql[i + 2 : i + 3] in ("'", '"'):
            quote = sql[i + 2]
            if quote == "'":
                raw, i = _string(sql, i + 3, escapes=False)
            else:
                raw, i = _quoted(sql, i + 3, '"')
            esc = "\\"
            m = _UESCAPE.match(sql, i)
            if m is not None:
                esc = m.group(1)
                i = m.end()
            out.append(Token("str" if quote == "'" else "ident", _u_escapes(raw, esc)))
        elif c == '"':
            text, i = _quoted(sql, i + 1, '"')
            out.append(Token("ident", text))
        elif c == "$" and (m := _DOLLAR.match(sql, i)) is not None and (i == 0 or not re.match(r"[A-Za-z0-9_$]", sql[i - 1])):
            tag = m.group(0)
            j = sql.find(tag, m.end())
            if j < 0:
                out.append(Token("str", sql[m.end() :]))
                i = n
            else:
                out.append(Token("str", sql[m.end() : j]))
                i = j + len(tag)
        elif _WORD_START.match(c):
            m = _WORD.match(sql, i + 1)
            assert m is not None
            word = sql[i : m.end()]
            out.append(Token("word", word.lower()))  # the server folds ASCII letters
            i = m.end()
        elif c.isdigit() or (c == "." and sql[i + 1 : i + 2].isdigit()):
            m = _NUM.match(sql, i)
            assert m is not None
            out.append(Token("num", m.group(0)))
            i = m.end()
        else:
            out.append(Token("op", c))
            i += 1
    return out


def statements(toks: list[Token]) -> list[list[Token]]:
    """Tokens split at `;`."""
    out: list[list[Token]] = [[]]
    for t in toks:
        if t.kind == "op" and t.value == ";":
            out.append([])
        else:
            out[-1].append(t)
    return [s for s in out if s]


def is_name(t: Token, *names: str) -> bool:
    """A bare word or quoted identifier naming one of `names` (GUC names: case-insensitive)."""
    return t.kind in ("word", "ident") and t.value.lower() in names


def _calls(stmt: list[Token], function: str) -> list[int]:
    """Positions of the first argument of each call of `function` in `stmt`."""
    out = []
    for k, t in enumerate(stmt):
        if is_name(t, function) and k + 1 < len(stmt) and stmt[k + 1] == Token("op", "("):
            out.append(k + 2)
    return out


def _literal_arg(stmt: list[Token], k: int) -> str | None:
    """The string literal at `k` when it is a whole argument (followed by `,` or `)`)."""
    if k + 1 < len(stmt) and stmt[k].kind == "str" and stmt[k + 1].kind == "op" and stmt[k + 1].value in ",)":
        return stmt[k].value
    if k + 4 < len(stmt) and stmt[k].kind == "str" and stmt[k + 1:k + 3] == [Token("op", ":"), Token("op", ":")]:
        # 'x'::text
        if stmt[k + 3].kind in ("word", "ident") and stmt[k + 4].kind == "op" and stmt[k + 4].value in ",)":
            return stmt[k].value
    return None


def _after_arg(stmt: list[Token], k: int) -> int:
    """Position of the next argument after the one at `k`."""
    depth = 0
    while k < len(stmt):
        t = stmt[k]
        if t.kind == "op" and t.value in "([":
            depth += 1
        elif t.kind == "op" and t.value in ")]":
            if depth == 0:
                return len(stmt)
            depth -= 1
        elif t.kind == "op" and t.value == "," and depth == 0:
            return k + 1
        k += 1
    return k


WRITES = frozenset({
    "set", "set_config", "alter", "update", "insert", "merge", "create", "do", "execute", "call",
    "copy", "rule", "replace", "perform", "delete", "upsert",
})
# Functions that run SQL text they are given (a computed text cannot be read).
_SQL_RUNNERS = frozenset({"query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema"})
MAX_DEPTH = 4


def set_config_names(stmt: list[Token]) -> list[tuple[str | None, str | None]]:
    """(setting name, value) of each set_config call; None where it is not a literal."""
    out = []
    for k in _calls(stmt, "set_config"):
        name = _literal_arg(stmt, k)
        value = _literal_arg(stmt, _after_arg(stmt, k)) if name is not None else None
        out.append((name, value))
    return out


def dynamic_sql(stmt: list[Token], in_body: bool = True) -> bool:
    """EXECUTE (PL/pgSQL) of a string that is not one literal, or a function running computed
    SQL text: what it runs cannot be read."""
    for k, t in enumerate(stmt):
        if t.kind != "word":
            continue
        if in_body and t.value == "execute" and k + 1 < len(stmt):
            nxt = stmt[k + 1]
            literal = nxt.kind == "str" and (
                k + 2 >= len(stmt) or (stmt[k + 2].kind == "word" and stmt[k + 2].value in ("using", "into"))
            )
            # EXECUTE <prepared statement name> [(...)] at top level is not dynamic SQL.
            prepared = nxt.kind in ("word", "ident") and (k + 2 >= len(stmt) or stmt[k + 2] == Token("op", "("))
            if not literal and not (prepared and k == 0):
                return True
        if t.value in _SQL_RUNNERS and k + 1 < len(stmt) and stmt[k + 1] == Token("op", "("):
            if _literal_arg(stmt, k + 2) is None:
                return True
    return False


def has_body(stmt: list[Token]) -> bool:
    """DO, CREATE [OR REPLACE] FUNCTION / PROCEDURE (its string literals are code)."""
    if not stmt or stmt[0].kind != "word":
        return False
    if stmt[0].value == "do":
        return True
    head = [t.value for t in stmt[:6] if t.kind == "word"]
    return stmt[0].value == "create" and ("function" in head or "procedure" in head)


def _check(sql: str, depth: int, in_body: bool = False) -> str | None:
    toks = tokens(sql)
    for stmt in statements(toks):
        why = _check_statement(stmt, depth, in_body)
        if why is not None:
            return why
    return None


def _check_statement(stmt: list[Token], depth: int, in_body: bool = False) -> str | None:
    for name, value in set_config_names(stmt):
        if name is None:
            return "set_config with a setting name that is not a literal"
        if name.lower() == SCS and (value is None or value.strip().lower() not in _ON):
            return f"set_config('{SCS}', ...) to a value other than on"
    words = {t.value.lower() for t in stmt if t.kind in ("word", "ident")}
    if dynamic_sql(stmt, in_body):
        return "dynamic SQL (EXECUTE or query_to_xml of a computed string) that sqlward cannot read"
    if "pg_settings" in words and words & WRITES:
        return "a write to pg_settings"
    mention = SCS in words
    if mention and not _plain_read_or_on(stmt, words):
        return f"{SCS} set to something other than on"
    if depth < MAX_DEPTH:
        body = in_body or has_body(stmt)
        for t in stmt:
            if t.kind == "str" and len(t.value) > 3 and _hinted(t.value):
                why = _check(t.value, depth + 1, body)
                if why is not None:
                    return why
    return None


def _plain_read_or_on(stmt: list[Token], words: set[str]) -> bool:
    first = stmt[0].value.lower() if stmt[0].kind == "word" else ""
    if first in ("show", "reset"):
        return True
    if first == "set":
        k = 1
        if k < len(stmt) and is_name(stmt[k], "session", "local"):
            k += 1
        if k + 2 < len(stmt) + 0 and is_name(stmt[k], SCS) and (
            stmt[k + 1] == Token("op", "=") or is_name(stmt[k + 1], "to")
        ):
            value = stmt[k + 2 :]
            return len(value) == 1 and value[0].kind in ("word", "str", "num") and value[0].value.lower() in _ON
        return False
    return not (words & WRITES)


_HINTS = ("standard", "set_config", "execute", "pg_settings", "query_to_xml", "\\", "u&")


def _hinted(sql: str) -> bool:
    """Could the text hold anything `reading_change` refuses (a word it looks for, or an escape
    that could spell one)?"""
    return hinted(sql, _HINTS)


def reading_change(sql: str) -> str | None:
    """Why this PostgreSQL statement (request text) may set standard_conforming_strings to
    anything but on, or run SQL the check cannot read (None: it cannot). See the module doc."""
    if not _hinted(sql):
        return None
    return _check(sql, 0)


_RESTORES_SCS = re.compile(
    r"\s*(?:SET\s+(?:SESSION\s+)?standard_conforming_strings\s*(?:=|\bTO\b)\s*(?:on|true|'on'|default)"
    r"|RESET\s+(?:standard_conforming_strings|ALL))\s*;?\s*",
    re.IGNORECASE,
)
_RESTORES_ENCODING = re.compile(
    r"\s*(?:SET\s+(?:SESSION\s+)?(?:client_encoding\s*(?:=|\bTO\b)|NAMES\b)\s*(?:'[A-Za-z0-9_]+'|[A-Za-z0-9_]+)"
    r"|RESET\s+(?:client_encoding|ALL))\s*;?\s*",
    re.IGNORECASE,
)


def restores(sql: str, *, scs: bool = True) -> bool:
    """The request is exactly one statement putting standard_conforming_strings back on (`scs`)
    or switching client_encoding (read the same in any encoding and either setting: plain ASCII
    letters, no backslash)."""
    return (_RESTORES_SCS if scs else _RESTORES_ENCODING).fullmatch(sql) is not None


# Words or characters one of which a request that may switch client_encoding must contain
# (lower case); text outside ASCII is always read in full. Substring tests, not a regular
# expression: this runs for every request.
_ENCODING_HINTS = ("encoding", "names", "reset", "discard", "rollback", "abort", "commit", "end", "prepare", "\\", "u&", '"', "$")


def _encoding_hinted(sql: str) -> bool:
    return hinted(sql, _ENCODING_HINTS)
_TX_END = frozenset({"rollback", "abort", "commit", "end", "prepare"})


def may_switch_encoding(sql: str, touched: bool = False) -> bool:
    """Could running this request change the session's client_encoding (so that text sent after
    it is read by the server in another encoding)? SET / RESET / set_config of client_encoding
    in any spelling, SET NAMES, RESET ALL, DISCARD; once the session has switched encodings
    (`touched`), the end of a transaction too (it may undo a SET [LOCAL] client_encoding)."""
    if not _encoding_hinted(sql):
        return False
    toks = tokens(sql)
    for k, t in enumerate(toks):
        if t.kind in ("word", "ident", "str") and "client_encoding" in t.value.lower():
            return True
        if t.kind != "word":
            continue
        if t.value == "names" and k > 0 and toks[k - 1].kind == "word" and toks[k - 1].value in ("set", "session", "local"):
            return True
        if t.value == "discard" or (t.value == "all" and k > 0 and toks[k - 1].value == "reset"):
            return True
        if touched and t.value in _TX_END:
            return True
    return False
