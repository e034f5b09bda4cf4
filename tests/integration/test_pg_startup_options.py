"""Issue 12 (item 1, PostgreSQL): a client's startup packet sets only what is safe.

Every spelling of a setting that changes who the upstream thinks we are (`role`,
`session_authorization`) or the gateway's own identity label (`sqlward.identity`) is first shown
to work on the real server (a direct connection with the same startup parameters changes
current_user / the label), then refused by the gateway with a FATAL naming it; so is every
switch other than -c / --. The settings of the allow-list are forwarded in the server's order and
arrive upstream with the values the server would have given them; the gateway's label wins.
A property test checks that the gateway's reading of `options` (`startup.split_options` +
`read_switches`) agrees with the server's for random option strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqlward.adapters.postgres.startup import StartupSyntaxError, read_switches, split_options
from tests.support import pgwire
from tests.support.gateway import SECRETS, GatewayProcess, target

from .conftest import PGHOST, PGPORT, _admin_dsn

DB = "pgh12_startup"
ROLE = "pgh12_role"


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"DROP ROLE IF EXISTS {ROLE}")
        c.execute(f"CREATE ROLE {ROLE} NOLOGIN")
        c.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(_admin_dsn(DB), autocommit=True) as c:
        c.execute("CREATE SCHEMA pgh12_s")
    yield DB
    with psycopg.connect(_admin_dsn(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        c.execute(f"DROP ROLE IF EXISTS {ROLE}")


@pytest.fixture(scope="module")
def gw(db: str) -> Iterator[GatewayProcess]:
    dsn = f"postgresql://postgres@{PGHOST}:{PGPORT}/{db}?sslmode=disable"
    with GatewayProcess(targets=[target("app", dsn, "development")], name="pgh12-startup") as g:
        yield g


PROBE = (
    "select current_user, session_user, current_setting('sqlward.identity', true), "
    "current_setting('application_name')"
)

# (startup parameters, what the server does with them: "role" = current_user becomes ROLE,
# "label" = sqlward.identity becomes 'sqlward:mallory'; "inert": PostgreSQL 15 accepts the
# setting and then overrides it with the login user, refused all the same)
ATTACKS: list[tuple[dict[str, str], str]] = [
    ({"options": "-c role=pgh12_role"}, "role"),
    ({"options": "-crole=pgh12_role"}, "role"),
    ({"options": "-c ROLE=pgh12_role"}, "role"),
    ({"options": "--role=pgh12_role"}, "role"),
    ({"options": "--Role=pgh12_role"}, "role"),
    ({"options": "-c\trole=pgh12_role"}, "role"),
    ({"options": "-c ro\\le=pgh12_role"}, "role"),
    ({"options": "-c application_name=x -c role=pgh12_role"}, "role"),
    ({"options": "--session-authorization=pgh12_role"}, "inert"),
    ({"options": "-csession-authorization=pgh12_role"}, "inert"),
    ({"options": "-c SESSION_AUTHORIZATION=pgh12_role"}, "inert"),
    ({"options": "-c se\\ssion_authorization=pgh12_role"}, "inert"),
    ({"role": "pgh12_role"}, "role"),
    ({"ROLE": "pgh12_role"}, "role"),
    ({"Session_Authorization": "pgh12_role"}, "inert"),
    ({"sqlward.identity": "sqlward:mallory"}, "label"),
    ({"SQLWARD.IDENTITY": "sqlward:mallory"}, "label"),
    ({"options": "-c sqlward.identity=sqlward:mallory"}, "label"),
    ({"options": "--SQLWARD.identity=sqlward:mallory"}, "label"),
    ({"options": "-c sqlward.ide\\ntity=sqlward:mallory"}, "label"),
]


def _direct(params: dict[str, str]) -> tuple:
    with pgwire.open_session(PGHOST, PGPORT, "postgres", None, DB, params=params) as c:
        rows = [m for m in c.simple(PROBE) if m.type == "D"]
        return tuple(v.decode() if v is not None else None for v in rows[0].values)


@pytest.mark.parametrize("params,effect", ATTACKS, ids=[repr(p) for p, _ in ATTACKS])
def test_identity_changing_startup_settings_are_refused_in_every_spelling(
    gw: GatewayProcess, params: dict[str, str], effect: str,
) -> None:
    # The spelling is real: the server itself applies it.
    current, session, label, _ = _direct(params)
    if effect == "role":
        assert ROLE in (current, session), (current, session)
    elif effect == "label":
        assert label == "sqlward:mallory", label
    # Through the gateway: refused with a FATAL naming the parameter, never forwarded.
    since = gw.audit_offset()
    try:
        conn = pgwire.open_session(gw.host, gw.port, "alice", SECRETS["alice"], "app", params=params)
    except pgwire.PgError as exc:
        assert exc.severity == "FATAL" and exc.sqlstate == "42501", exc
        assert "not allowed through sqlward" in exc.error.text, exc
        name = next(iter(params)) if "options" not in params else params["options"]
        assert any(word.replace("\\", "") in exc.error.text for word in ("role", "ROLE", "Role", "session", "SESSION",
                   "Session", "sqlward", "SQLWARD", "ro\\le", "se\\ssion")), (name, exc.error.text)
    else:
        with conn:
            got = tuple(v.decode() if v is not None else None for v in
                        [m for m in conn.simple(PROBE) if m.type == "D"][0].values)
        pytest.fail(f"startup parameters {params} were forwarded: upstream sees {got}")
    refused = [e for e in gw.audit_events(since) if e["event"] == "connection.refused"]
    assert refused and "not allowed" in refused[-1]["reason"]


@pytest.mark.parametrize("options", ["-F", "-e", "-B 100", "-S 1MB", "-W 1", "-d 5", "-Fc application_name=x", "-o x"])
def test_switches_other_than_settings_are_refused(gw: GatewayProcess, options: str) -> None:
    with pytest.raises(pgwire.PgError) as caught:
        pgwire.open_session(gw.host, gw.port, "alice", SECRETS["alice"], "app", params={"options": options})
    assert caught.value.severity == "FATAL" and caught.value.sqlstate in ("42501", "42601"), caught.value


@pytest.mark.parametrize("options", ["foo", "-c", "-c role", "--application_name", "-c a=b --  -c c=d", "\\"])
def test_malformed_options_are_refused_like_the_server_refuses_them(gw: GatewayProcess, options: str) -> None:
    with pytest.raises(pgwire.PgError) as direct:
        pgwire.open_session(PGHOST, PGPORT, "postgres", None, DB, params={"options": options})
    assert direct.value.severity == "FATAL"
    with pytest.raises(pgwire.PgError) as caught:
        pgwire.open_session(gw.host, gw.port, "alice", SECRETS["alice"], "app", params={"options": options})
    assert caught.value.severity == "FATAL" and caught.value.sqlstate in ("42601", "42501"), caught.value


SETTINGS_SQL = (
    "select current_setting('search_path'), current_setting('statement_timeout'), "
    "current_setting('lock_timeout'), current_setting('DateStyle'), current_setting('TimeZone'), "
    "current_setting('extra_float_digits'), current_setting('application_name'), "
    "current_setting('sqlward.identity'), current_user::text, current_setting('idle_in_transaction_session_timeout')"
)


def test_allowed_settings_arrive_as_the_server_reads_them(gw: GatewayProcess) -> None:
    params = {
        "options": "-c search_path=pgh12_s,public -cstatement_timeout=1234 --lock-timeout=555 "
                   "-c DateStyle=German -c application_name=from\\ options "
                   "-c idle_in_transaction_session_timeout=7s -c sqlward.reason=INC\\ 77",
        "TimeZone": "UTC",
        "extra_float_digits": "3",
        "DateStyle": "ISO, DMY",  # keys come after options: this one wins
    }
    expected_direct = _settings_direct(params)
    since = gw.audit_offset()
    with pgwire.open_session(gw.host, gw.port, "alice", SECRETS["alice"], "app", params=params) as c:
        assert c.parameters["application_name"] == "from options"  # the client sees its own name
        row = [m for m in c.simple(SETTINGS_SQL) if m.type == "D"][0].values
        got = [v.decode() for v in row]
    assert got[:6] == expected_direct[:6], (got, expected_direct)
    assert got[5] == "3" and got[3] == "ISO, DMY" and got[0] == "pgh12_s,public"
    assert got[6] == "sqlward:alice from options"
    assert got[7] == "sqlward:alice" and got[8] == "postgres" and got[9] == "7s"
    auth = [e for e in gw.audit_events(since) if e["event"] == "connection.authenticated"]
    assert auth and auth[-1]["who"]["reason"] == "INC 77"
    assert auth[-1]["application_name"] == "from options"


def _settings_direct(params: dict[str, str]) -> list[str]:
    direct = dict(params)
    direct["options"] = direct["options"].replace("-c sqlward.reason=INC\\ 77", "")
    with pgwire.open_session(PGHOST, PGPORT, "postgres", None, DB, params=direct) as c:
        row = [m for m in c.simple(SETTINGS_SQL.replace("current_setting('sqlward.identity')", "''"))
               if m.type == "D"][0].values
        return [v.decode() for v in row]


def test_the_gateways_label_wins_over_a_forwarded_application_name(gw: GatewayProcess) -> None:
    with psycopg.connect(gw.dsn("alice", SECRETS["alice"], "app"), application_name="sqlward:root",
                         options="-c application_name=sqlward:admin") as c:
        name, label = c.execute("select current_setting('application_name'), current_setting('sqlward.identity')").fetchone()
    assert name == "sqlward:alice sqlward:root" and label == "sqlward:alice"


# -- the parser agrees with the server -----------------------------------------------------------

_NAMES = ["pgh12.a", "PGH12.A", "pgh12.b-c", "pgh12.b_c", "pgh12.d"]
_VALUE_CHARS = st.sampled_from(list("ab=-c \t\\x9"))


@st.composite
def _option_strings(draw: st.DrawFn) -> str:
    pieces: list[str] = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["c-sep", "c-join", "long", "bare", "dashdash", "noeq", "lone-dash", "c-end", "escaped-sep"]))
        name = draw(st.sampled_from(_NAMES))
        value = "".join(draw(st.lists(_VALUE_CHARS, max_size=6)))
        escaped = draw(st.booleans())
        if escaped:
            value = "".join("\\" + ch if ch in " \t\\" else ch for ch in value)
        if kind == "c-sep":
            pieces.append(f"-c {name}={value}")
        elif kind == "c-join":
            pieces.append(f"-c{name}={value}")
        elif kind == "long":
            pieces.append(f"--{name}={value}")
        elif kind == "bare":
            pieces.append(f"{name}={value}")
        elif kind == "dashdash":
            pieces.append("--")
        elif kind == "lone-dash":
            pieces.append("-")
        elif kind == "c-end":
            pieces.append("-c")
        elif kind == "escaped-sep":
            pieces.append(f"-c\\ {name}={value}")
        else:
            pieces.append(f"-c {name}")
    sep = draw(st.sampled_from([" ", "  ", "\t", "\n "]))
    return sep.join(pieces)


def _parser_view(options: str) -> dict[str, str] | None:
    try:
        switches = read_switches(split_options(options))
    except StartupSyntaxError:
        return None
    out: dict[str, str] = {}
    for _, name, value in switches:
        if not _GUC_NAME.fullmatch(name):  # the server knows no such setting (the policy refuses it too)
            return None
        if name.lower() in _READ_BACK:
            out[name.lower()] = value
    return out


_READ_BACK = ("pgh12.a", "pgh12.b_c", "pgh12.d")


_GUC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)+")


def _server_view(options: str) -> dict[str, str] | None:
    try:
        conn = psycopg.connect(_admin_dsn(DB), options=options, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError:
        return None
    with conn:
        out: dict[str, str] = {}
        for name in _READ_BACK:
            value = conn.execute("select current_setting(%s, true)", (name,)).fetchone()[0]
            if value is not None:
                out[name] = value
        return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=_option_strings())
def test_the_gateways_option_parser_agrees_with_the_server(db: str, options: str) -> None:
    assert _parser_view(options) == _server_view(options), options


# -- what the gateway forwards is what the server would have read ---------------------------------

_SETTINGS = [
    ("application_name", ["x", "a b", "tab\there", "back\\slash", "-c role=pgh12_role"]),
    ("search_path", ["pgh12_s", "pgh12_s, public", '"$user"']),
    ("statement_timeout", ["5", "7s"]),
    ("DateStyle", ["German", "ISO, DMY"]),
    ("ROLE", ["pgh12_role"]),
    ("sqlward.identity", ["sqlward:mallory"]),
]
_SHOW = ("application_name", "search_path", "statement_timeout", "DateStyle")


@st.composite
def _startups(draw: st.DrawFn) -> dict[str, str]:
    words: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        name, values = draw(st.sampled_from(_SETTINGS))
        value = draw(st.sampled_from(values))
        escaped = "".join("\\" + ch if ch in " \t\\" else ch for ch in value)
        form = draw(st.sampled_from(["-c {n}={v}", "-c{n}={v}", "--{n}={v}"]))
        words.append(form.format(n=name.replace("_", draw(st.sampled_from(["_", "-"]))) if form.startswith("--") else name, v=escaped))
    params = {"options": " ".join(words)} if words else {}
    if draw(st.booleans()):
        name, values = draw(st.sampled_from(_SETTINGS))
        params[draw(st.sampled_from([name, name.upper()]))] = draw(st.sampled_from(values))
    return params


def _effective(params: dict[str, str]) -> tuple:
    with pgwire.open_session(PGHOST, PGPORT, "postgres", None, DB, params=params) as c:
        sql = "select current_user, " + ", ".join(f"current_setting('{n}')" for n in _SHOW)
        return tuple(v.decode() for v in [m for m in c.simple(sql) if m.type == "D"][0].values)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=_startups())
def test_what_is_forwarded_is_what_the_server_would_have_read(db: str, params: dict[str, str]) -> None:
    from sqlward.adapters.postgres.startup import StartupRefused, read_startup, upstream_params

    try:
        accepted = read_startup(tuple(params.items()))
    except StartupRefused as exc:
        assert any(n in exc.name.lower() for n in ("role", "sqlward")), exc.name
        return
    forwarded = dict(upstream_params(accepted, application_name=None, identity_label=None))
    assert _effective(forwarded) == _effective(params), (params, forwarded)
    assert _effective(forwarded)[0] == "postgres"
