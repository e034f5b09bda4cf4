"""The sans-IO PostgreSQL relay state (adapters/postgres/relay.py), driven with byte tables.

As h11's reader tests do, every exchange is run three ways and must give the same result: the
client's and the upstream's bytes fed whole, fed one byte at a time, and fed with trailing data
(the start of a further message, which must stay buffered and never be forwarded). The pipeline
is stood in for by `Judge`, which answers each request in turn and counts request ids as a
session's context does; the marker of an injected refusal and the clock are made deterministic.

Every message below is written by hand from the protocol documentation
(https://www.postgresql.org/docs/current/protocol-message-formats.html): Byte1(type),
Int32(length of what follows, itself included), body. Only the length is computed (`m`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from sqlward.adapters.base import StatementRequest, Verdict
from sqlward.adapters.postgres.errors import MessageTooLarge, ProtocolViolation
from sqlward.adapters.postgres.relay import _PROBE_MESSAGES, ClientSide, RelayState, UpstreamSide
from sqlward.adapters.postgres.searchpath import PROBE_SQL
from sqlward.audit.events import StatementCompleted
from sqlward.masking.context import MaskContext, RequestMask
from sqlward.masking.model import MaskSpec
from sqlward.masking.plan import MaskPlan
from sqlward.policy import rule_ids
from sqlward.policy.model import Decision
from sqlward.policy.searchpath import SearchPath

# What requests carry when the relay state is built without a tracker: the default path.
PATH = SearchPath()


def m(mtype: bytes, body: bytes = b"") -> bytes:
    return mtype + struct.pack("!I", len(body) + 4) + body


# -- frontend messages -----------------------------------------------------------------------
SYNC = m(b"S")
FLUSH = m(b"H")
TERMINATE = m(b"X")
BIND = m(b"B", b"\0\0\0\0\0\0\0\0")  # unnamed portal, unnamed statement, no formats/params/results
BIND_S1 = m(b"B", b"\0s1\0\0\0\0\0\0\0")  # unnamed portal of statement "s1"
DESCRIBE_PORTAL = m(b"D", b"P\0")
EXECUTE = m(b"E", b"\0\0\0\0\0")  # unnamed portal, all rows
EXECUTE_2 = m(b"E", b"\0\0\0\0\2")  # unnamed portal, at most 2 rows


def query(sql: bytes) -> bytes:
    return m(b"Q", sql + b"\0")


def parse(name: bytes, sql: bytes) -> bytes:
    return m(b"P", name + b"\0" + sql + b"\0\0\0")


# -- backend messages ------------------------------------------------------------------------
PARSE_COMPLETE = m(b"1")
BIND_COMPLETE = m(b"2")
NO_DATA = m(b"n")
EMPTY_QUERY = m(b"I")
SUSPENDED = m(b"s")
READY_IDLE = m(b"Z", b"I")
READY_IN_TX = m(b"Z", b"T")
READY_FAILED = m(b"Z", b"E")
# One column "n", int4 (OID 23), text format.
ROWDESC_N = m(b"T", b"\0\1n\0\0\0\0\0\0\0\0\0\0\x17\0\4\xff\xff\xff\xff\0\0")
ROW_1 = m(b"D", b"\0\1\0\0\0\1" b"1")
ROW_2 = m(b"D", b"\0\1\0\0\0\1" b"2")


def complete(tag: bytes) -> bytes:
    return m(b"C", tag + b"\0")


def server_error(code: bytes, text: bytes) -> bytes:
    return m(b"E", b"SERROR\0VERROR\0C" + code + b"\0M" + text + b"\0\0")


ALLOW = Decision(action="allow")
DROP_REFUSED = Decision(action="deny", rule_id="no-drop", message="DROP is not allowed")
GATEWAY_DROP_ERROR = m(
    b"E", b'SERROR\0VERROR\0C42501\0MDROP is not allowed (rule "no-drop")\0Dsqlward rule: no-drop\0\0'
)
EXPIRED = Decision(action="deny", rule_id=rule_ids.TOKEN_EXPIRED, message="the token of alice expired")
GATEWAY_EXPIRED_ERROR = m(
    b"E", b'SERROR\0VERROR\0C42501\0Mthe token of alice expired (rule "token-expired")\0Dsqlward rule: token-expired\0\0'
)
FUNCTION_REFUSED = Decision(action="deny", rule_id=rule_ids.FUNCTION_CALL, message="FunctionCall is not allowed")
GATEWAY_FUNCTION_ERROR = m(
    b"E",
    b'SERROR\0VERROR\0C42501\0MFunctionCall is not allowed (rule "function-call")\0Dsqlward rule: function-call\0\0',
)


def syntax_error_at(marker: bytes) -> bytes:
    """What PostgreSQL answers to an injected `sqlward_refused_...` statement."""
    return server_error(b"42601", b'syntax error at or near "' + marker + b'"')


# -- the stand-in pipeline and the three ways of feeding ------------------------------------------

Rule = Callable[[StatementRequest], Decision | None]


@dataclass
class Judge:
    """Answers each request in turn (allow unless `rule` says otherwise)."""

    rule: Rule = lambda request: None
    masked: bool = False
    mask: MaskContext | None = None
    requests: list[StatementRequest] = field(default_factory=list)
    # The session's search_path after a request, when it changes it (Verdict.search_path).
    moves: Callable[[StatementRequest], SearchPath | None] = lambda request: None

    def __call__(self, request: StatementRequest) -> Verdict:
        self.requests.append(request)
        decision = self.rule(request) or Decision(action="allow")
        return Verdict(
            request_id=len(self.requests), decision=decision, masked=self.masked,
            mask=self.mask if decision.action == "allow" else None, search_path=self.moves(request),
        )


@dataclass
class Result:
    to_upstream: bytes
    to_client: bytes
    events: list[StatementCompleted]
    requests: list[StatementRequest]
    state: RelayState
    client: ClientSide
    upstream: UpstreamSide


def _split(data: bytes, how: str) -> list[bytes]:
    if how == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    return [data] if data else []


CLIENT_TRAILER = b"Q\0\0\0\x0dSEL"  # a Query whose end has not arrived
UPSTREAM_TRAILER = b"N\0\0"  # not even a whole header


def _run(
    how: str, steps: list[tuple[str, bytes]], judge: Judge, *, versions: list[int], sql_comment: bytes,
    max_message_size: int,
) -> Result:
    state = RelayState(policy_version=lambda: versions[0], clock=lambda: 0.0)
    client = ClientSide(state, max_message_size=max_message_size, sql_comment=sql_comment, marker=lambda: "feed")
    upstream = UpstreamSide(state)
    to_upstream, to_client, events = b"", b"", []
    last = {"c": max((i for i, (who, _) in enumerate(steps) if who == "c"), default=-1),
            "u": max((i for i, (who, _) in enumerate(steps) if who == "u"), default=-1)}
    for i, (who, data) in enumerate(steps):
        if who == "v":  # the policy is reloaded: its version changes
            versions[0] += 1
            continue
        if who == "p":  # the driver's turn before the next client chunk: ask for the path if due
            if state.path.wants_probe(state.idle):
                to_upstream += state.start_probe()
            continue
        if how == "trailing" and i == last[who]:
            data += CLIENT_TRAILER if who == "c" else UPSTREAM_TRAILER
        for chunk in _split(data, how):
            if who == "c":
                request = client.feed(chunk)
                while request is not None:
                    request = client.resume(judge(request))
                to_upstream += client.take_output()
            else:
                out, new = upstream.feed(chunk)
                to_client += out
                events.extend(new)
    if how == "trailing":
        if last["c"] >= 0 and not client.terminated:
            assert client.buffered == len(CLIENT_TRAILER), "a partial client message was consumed"
        if last["u"] >= 0:
            assert upstream.buffered == len(UPSTREAM_TRAILER), "a partial backend message was consumed"
    else:
        assert client.buffered == 0 or client.terminated
        assert upstream.buffered == 0
    return Result(to_upstream, to_client, events, judge.requests, state, client, upstream)


def exchange(
    *steps: tuple[str, bytes], judge: Callable[[], Judge] = Judge, sql_comment: bytes = b"",
    max_message_size: int = 1 << 20,
) -> Result:
    """Run `steps` (("c", client bytes), ("u", upstream bytes), ("v", b"") for a policy reload,
    ("p", b"") for the driver's search_path probe when due) fed whole, one byte at a time and with
    trailing data; all three must agree."""
    results = [
        _run(how, list(steps), judge(), versions=[1], sql_comment=sql_comment,
             max_message_size=max_message_size)
        for how in ("whole", "bytewise", "trailing")
    ]
    first = results[0]
    for other in results[1:]:
        assert other.to_upstream == first.to_upstream
        assert other.to_client == first.to_client
        assert other.events == first.events
        assert other.requests == first.requests
    return first


def done(request_id: int, *tags: str, rows: int | None = None, ref: int | None = None, error: str | None = None,
         sqlstate: str | None = None, masked: dict[str, int] | None = None) -> StatementCompleted:
    return StatementCompleted(
        request_id=request_id, prepared_ref=ref, tags=tags, rows=rows, duration_ms=0.0, error=error,
        sqlstate=sqlstate, masked=masked or {},
    )


def refuse_drop(request: StatementRequest) -> Decision | None:
    return DROP_REFUSED if "DROP" in request.sql else None


# -- simple protocol ---------------------------------------------------------------------------


def test_simple_query() -> None:
    r = exchange(
        ("c", query(b"SELECT 1")),
        ("u", ROWDESC_N + ROW_1 + complete(b"SELECT 1") + READY_IDLE),
    )
    assert r.to_upstream == query(b"SELECT 1")
    assert r.requests == [StatementRequest(sql="SELECT 1", dialect="postgres", search_path=PATH)]
    assert r.to_client == ROWDESC_N + ROW_1 + complete(b"SELECT 1") + READY_IDLE
    assert r.events == [done(1, "SELECT 1", rows=1)]
    assert r.state.tx_status == "I" and not r.state.pending


def test_multi_statement_query_counts_every_tag() -> None:
    r = exchange(
        ("c", query(b"BEGIN; INSERT INTO t VALUES (1), (2); SELECT 1")),
        ("u", complete(b"BEGIN") + complete(b"INSERT 0 2") + ROWDESC_N + ROW_1 + complete(b"SELECT 1") + READY_IN_TX),
    )
    assert r.events == [done(1, "BEGIN", "INSERT 0 2", "SELECT 1", rows=3)]
    assert r.state.tx_status == "T"


def test_empty_query() -> None:
    r = exchange(("c", query(b"")), ("u", EMPTY_QUERY + READY_IDLE))
    assert r.to_client == EMPTY_QUERY + READY_IDLE
    assert r.events == [done(1)]


def test_queries_pipelined_in_one_chunk() -> None:
    r = exchange(
        ("c", query(b"SELECT 1") + query(b"SELECT 2")),
        ("u", ROWDESC_N + ROW_1 + complete(b"SELECT 1") + READY_IDLE + ROWDESC_N + ROW_2 + complete(b"SELECT 1") + READY_IDLE),
    )
    assert r.to_upstream == query(b"SELECT 1") + query(b"SELECT 2")
    assert [q.sql for q in r.requests] == ["SELECT 1", "SELECT 2"]
    assert r.events == [done(1, "SELECT 1", rows=1), done(2, "SELECT 1", rows=1)]


def test_sql_comment_is_put_in_front_of_each_query() -> None:
    comment = b"/* sqlward_identity='alice' */ "
    r = exchange(("c", query(b"SELECT 1")), sql_comment=comment)
    assert r.to_upstream == m(b"Q", b"/* sqlward_identity='alice' */ SELECT 1\0")
    assert r.requests[0].sql == "SELECT 1"  # the policy judges what the client sent


def test_server_error_completes_the_query() -> None:
    r = exchange(
        ("c", query(b"SELECT 1/0")),
        ("u", server_error(b"22012", b"division by zero") + READY_IDLE),
    )
    assert r.to_client == server_error(b"22012", b"division by zero") + READY_IDLE
    assert r.events == [done(1, error="division by zero", sqlstate="22012")]


def test_refused_query_is_replaced_and_the_error_swapped() -> None:
    marker = b"sqlward_refused_1_feed"
    r = exchange(
        ("c", query(b"DROP TABLE t")),
        ("u", syntax_error_at(marker) + READY_IDLE),
        judge=lambda: Judge(refuse_drop),
    )
    assert r.to_upstream == query(marker)  # the server never sees the refused text
    assert r.to_client == GATEWAY_DROP_ERROR + READY_IDLE
    assert r.events == []  # a refusal's record is its statement.decided
    assert not r.state.refusals  # forgotten once its ReadyForQuery went by


def test_two_refused_queries_in_one_chunk() -> None:
    first, second = b"sqlward_refused_1_feed", b"sqlward_refused_2_feed"
    r = exchange(
        ("c", query(b"DROP TABLE a") + query(b"DROP TABLE b")),
        ("u", syntax_error_at(first) + READY_IDLE + syntax_error_at(second) + READY_IDLE),
        judge=lambda: Judge(refuse_drop),
    )
    assert r.to_upstream == query(first) + query(second)
    assert r.to_client == GATEWAY_DROP_ERROR + READY_IDLE + GATEWAY_DROP_ERROR + READY_IDLE


def test_refusal_inside_a_transaction_block_keeps_the_servers_status() -> None:
    marker = b"sqlward_refused_2_feed"
    r = exchange(
        ("c", query(b"BEGIN")),
        ("u", complete(b"BEGIN") + READY_IN_TX),
        ("c", query(b"DROP TABLE t")),
        ("u", syntax_error_at(marker) + READY_FAILED),
        judge=lambda: Judge(refuse_drop),
    )
    assert r.to_client == complete(b"BEGIN") + READY_IN_TX + GATEWAY_DROP_ERROR + READY_FAILED
    assert r.state.tx_status == "E"


def test_an_error_that_only_quotes_a_marker_text_is_not_swapped_after_its_sync() -> None:
    """Markers are forgotten once their ReadyForQuery passed: a later error that happens to
    contain the text is the server's own."""
    marker = b"sqlward_refused_1_feed"
    r = exchange(
        ("c", query(b"DROP TABLE t")),
        ("u", syntax_error_at(marker) + READY_IDLE),
        ("c", query(b"SELECT 'sqlward_refused_1_feed'::int")),
        ("u", server_error(b"22P02", b'invalid input syntax for type integer: "' + marker + b'"') + READY_IDLE),
        judge=lambda: Judge(refuse_drop),
    )
    assert r.to_client.endswith(server_error(b"22P02", b'invalid input syntax for type integer: "' + marker + b'"') + READY_IDLE)


def test_copy_in() -> None:
    copy_in = m(b"G", b"\0\0\1\0\0")  # text, one column
    r = exchange(
        ("c", query(b"COPY t FROM STDIN")),
        ("u", copy_in),
        ("c", m(b"d", b"1\n") + m(b"d", b"2\n") + m(b"c")),
        ("u", complete(b"COPY 2") + READY_IDLE),
    )
    assert r.to_upstream == query(b"COPY t FROM STDIN") + m(b"d", b"1\n") + m(b"d", b"2\n") + m(b"c")
    # CopyData is never judged; CopyDone (where the server commits) is recorded before it goes on
    assert [(q.kind, q.command) for q in r.requests] == [("statement", ""), ("execute", "CopyDone")]
    assert r.to_client == copy_in + complete(b"COPY 2") + READY_IDLE
    assert r.events == [done(1, "COPY 2", rows=2)]


def test_copy_out_streams_copy_data() -> None:
    copy_out = m(b"H", b"\0\0\1\0\0")
    big = m(b"d", b"x" * 5000 + b"\n")
    r = exchange(
        ("c", query(b"COPY t TO STDOUT")),
        ("u", copy_out + big + m(b"c") + complete(b"COPY 1") + READY_IDLE),
    )
    assert r.to_client == copy_out + big + m(b"c") + complete(b"COPY 1") + READY_IDLE
    assert r.events == [done(1, "COPY 1", rows=1)]


def test_copy_data_larger_than_the_message_limit_is_refused() -> None:
    """Issue 12: CopyData obeys the message limit like any message (it was exempt before)."""
    data = m(b"d", b"y" * 300)
    with pytest.raises(MessageTooLarge):
        exchange(("c", query(b"COPY t FROM STDIN")), ("u", m(b"G", b"\0\0\1\0\0")), ("c", data + m(b"c")),
                 max_message_size=100)


def test_notices_notifications_and_parameter_status_pass_at_any_time() -> None:
    notice = m(b"N", b"SNOTICE\0VNOTICE\0C00000\0Mhello\0\0")
    notification = m(b"A", b"\0\0\0\x2achan\0payload\0")
    status = m(b"S", b"TimeZone\0UTC\0")
    r = exchange(
        ("c", query(b"SELECT 1")),
        ("u", notice + ROWDESC_N + notification + ROW_1 + status + complete(b"SELECT 1") + READY_IDLE),
    )
    assert r.to_client == notice + ROWDESC_N + notification + ROW_1 + status + complete(b"SELECT 1") + READY_IDLE


def test_client_encoding_follows_parameter_status() -> None:
    """After the server reports client_encoding LATIN1, Query text is read as Latin-1."""
    r = exchange(
        ("u", m(b"S", b"client_encoding\0LATIN1\0")),
        ("c", query(b"SELECT '\xe9'")),
    )
    assert r.requests[0].sql == "SELECT '\u00e9'"


def test_function_call_refused_as_a_query() -> None:
    marker = b"sqlward_refused_1_feed"
    call = m(b"F", b"\0\0\x04\x19\0\0\0\0\0\0")  # function OID 1049, no arguments, text result
    r = exchange(
        ("c", call),
        ("u", syntax_error_at(marker) + READY_IDLE),
        judge=lambda: Judge(lambda request: FUNCTION_REFUSED),
    )
    assert r.requests == [StatementRequest(sql="", dialect="postgres", kind="command", command="FunctionCall")]
    assert r.to_upstream == query(marker)
    assert r.to_client == GATEWAY_FUNCTION_ERROR + READY_IDLE
    assert r.events == []


def test_terminate_ends_the_scan() -> None:
    r = exchange(("c", query(b"SELECT 1") + TERMINATE + query(b"SELECT 2")))
    assert r.to_upstream == query(b"SELECT 1") + TERMINATE
    assert r.client.terminated
    assert [q.sql for q in r.requests] == ["SELECT 1"]


# -- extended protocol -------------------------------------------------------------------------


def test_unnamed_pipeline() -> None:
    r = exchange(
        ("c", parse(b"", b"SELECT 1") + BIND + DESCRIBE_PORTAL + EXECUTE + SYNC),
        ("u", PARSE_COMPLETE + BIND_COMPLETE + ROWDESC_N + ROW_1 + complete(b"SELECT 1") + READY_IDLE),
    )
    assert r.to_upstream == parse(b"", b"SELECT 1") + BIND + DESCRIBE_PORTAL + EXECUTE + SYNC
    assert r.requests == [
        StatementRequest(sql="SELECT 1", dialect="postgres", statement_name="", search_path=PATH, prepare=True),
        StatementRequest(sql="", dialect="postgres", kind="execute", statement_name=""),
    ]
    assert r.to_client == PARSE_COMPLETE + BIND_COMPLETE + ROWDESC_N + ROW_1 + complete(b"SELECT 1") + READY_IDLE
    assert r.events == [done(2, "SELECT 1", rows=1, ref=1)]
    assert not r.state.pending


def test_named_statement_executed_twice() -> None:
    r = exchange(
        ("c", parse(b"s1", b"SELECT 1") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", BIND_S1 + EXECUTE + SYNC + BIND_S1 + EXECUTE + SYNC),
        ("u", (BIND_COMPLETE + ROW_1 + complete(b"SELECT 1") + READY_IDLE) * 2),
    )
    assert [q.kind for q in r.requests] == ["statement", "execute", "execute"]
    assert r.requests[0].statement_name == "s1"
    assert r.events == [done(2, "SELECT 1", rows=1, ref=1), done(3, "SELECT 1", rows=1, ref=1)]


def test_portal_suspended() -> None:
    r = exchange(
        ("c", parse(b"", b"SELECT * FROM generate_series(1, 3)") + BIND + EXECUTE_2 + FLUSH),
        ("u", PARSE_COMPLETE + BIND_COMPLETE + ROW_1 + ROW_2 + SUSPENDED),
        ("c", EXECUTE + SYNC),
        ("u", ROW_1 + complete(b"SELECT 1") + READY_IDLE),
    )
    assert r.to_upstream.endswith(EXECUTE_2 + FLUSH + EXECUTE + SYNC)
    assert r.events == [done(2, "(suspended)", ref=1), done(3, "SELECT 1", rows=1, ref=1)]


def test_empty_statement_in_a_pipeline() -> None:
    r = exchange(
        ("c", parse(b"", b"") + BIND + EXECUTE + SYNC),
        ("u", PARSE_COMPLETE + BIND_COMPLETE + EMPTY_QUERY + READY_IDLE),
    )
    assert r.events == [done(2, ref=1)]


def test_execute_error_and_the_skipped_rest_of_the_pipeline() -> None:
    """The server skips what follows an error up to Sync: those Executes never complete."""
    r = exchange(
        ("c", parse(b"", b"SELECT 1/0") + BIND + EXECUTE + parse(b"", b"SELECT 1") + BIND + EXECUTE + SYNC),
        ("u", PARSE_COMPLETE + BIND_COMPLETE + server_error(b"22012", b"division by zero") + READY_IDLE),
    )
    assert r.events == [done(2, ref=1, error="division by zero", sqlstate="22012")]
    assert not r.state.pending


def test_refused_parse_in_the_middle_of_a_pipeline_discards_to_sync() -> None:
    marker = b"sqlward_refused_3_feed"
    insert = parse(b"", b"INSERT INTO t VALUES (1)")
    r = exchange(
        ("c", insert + BIND + EXECUTE + parse(b"", b"DROP TABLE t") + BIND + DESCRIBE_PORTAL + EXECUTE + SYNC
         + query(b"SELECT 1")),
        ("u", PARSE_COMPLETE + BIND_COMPLETE + complete(b"INSERT 0 1") + syntax_error_at(marker) + READY_IDLE
         + ROWDESC_N + ROW_1 + complete(b"SELECT 1") + READY_IDLE),
        judge=lambda: Judge(refuse_drop),
    )
    # Bind, Describe and Execute after the refused Parse are dropped; the Sync goes through.
    assert r.to_upstream == insert + BIND + EXECUTE + parse(b"", marker) + SYNC + query(b"SELECT 1")
    assert [q.sql for q in r.requests] == ["INSERT INTO t VALUES (1)", "", "DROP TABLE t", "SELECT 1"]
    assert r.to_client == (
        PARSE_COMPLETE + BIND_COMPLETE + complete(b"INSERT 0 1") + GATEWAY_DROP_ERROR + READY_IDLE
        + ROWDESC_N + ROW_1 + complete(b"SELECT 1") + READY_IDLE
    )
    assert r.events == [done(2, "INSERT 0 1", rows=1, ref=1), done(4, "SELECT 1", rows=1)]


def test_a_refused_named_statement_is_forgotten() -> None:
    marker = b"sqlward_refused_1_feed"
    r = exchange(
        ("c", parse(b"s1", b"DROP TABLE t") + SYNC),
        ("u", syntax_error_at(marker) + READY_IDLE),
        ("c", BIND_S1 + EXECUTE + SYNC),
        judge=lambda: Judge(refuse_drop),
    )
    # The Bind of the forgotten name is refused by the gateway (it was never judged) and what
    # follows it is discarded to Sync.
    assert r.to_upstream == parse(b"", marker) + SYNC + parse(b"", b"sqlward_refused_0_feed") + SYNC
    assert [q.kind for q in r.requests] == ["statement"]


def test_refused_execute_discards_to_sync() -> None:
    """A prepared statement must not outlive the token: its Execute is refused."""
    marker = b"sqlward_refused_2_feed"
    r = exchange(
        ("c", parse(b"s1", b"SELECT 1") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", BIND_S1 + EXECUTE + DESCRIBE_PORTAL + SYNC),
        ("u", BIND_COMPLETE + syntax_error_at(marker) + READY_IDLE),
        judge=lambda: Judge(lambda request: EXPIRED if request.kind == "execute" else None),
    )
    assert r.to_upstream == parse(b"s1", b"SELECT 1") + SYNC + BIND_S1 + parse(b"", marker) + SYNC
    assert r.to_client == PARSE_COMPLETE + READY_IDLE + BIND_COMPLETE + GATEWAY_EXPIRED_ERROR + READY_IDLE
    assert r.events == []


def test_named_statement_decided_again_after_a_policy_reload() -> None:
    marker = b"sqlward_refused_2_feed"
    r = exchange(
        ("c", parse(b"s1", b"DELETE FROM t") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("v", b""),
        ("c", BIND_S1 + EXECUTE + SYNC),
        ("u", syntax_error_at(marker) + READY_IDLE),
        judge=lambda: Judge(lambda request, d=iter([None, DROP_REFUSED]): next(d)),
    )
    assert r.requests[1] == StatementRequest(sql="DELETE FROM t", dialect="postgres", statement_name="s1", search_path=PATH, parameters=(), formats=())
    assert r.to_upstream == parse(b"s1", b"DELETE FROM t") + SYNC + parse(b"", marker) + SYNC
    assert r.to_client == PARSE_COMPLETE + READY_IDLE + GATEWAY_DROP_ERROR + READY_IDLE


def test_statement_decided_again_only_once_per_policy_version() -> None:
    r = exchange(
        ("c", parse(b"s1", b"SELECT 1") + SYNC),
        ("v", b""),
        ("c", BIND_S1 + EXECUTE + SYNC + BIND_S1 + EXECUTE + SYNC),
    )
    assert [(q.kind, q.sql) for q in r.requests] == [
        ("statement", "SELECT 1"), ("statement", "SELECT 1"), ("execute", ""), ("execute", ""),
    ]


def test_close_forgets_a_statement() -> None:
    close_s1 = m(b"C", b"Ss1\0")
    r = exchange(
        ("c", parse(b"s1", b"SELECT 1") + SYNC + close_s1 + SYNC),
        ("v", b""),
        ("c", BIND_S1 + EXECUTE + SYNC),
    )
    # The name is no longer a decided statement: its Bind is refused, nothing runs.
    assert [q.kind for q in r.requests] == ["statement"]
    assert r.to_upstream.count(close_s1) == 1
    assert r.to_upstream.endswith(parse(b"", b"sqlward_refused_0_feed") + SYNC)


# -- masking -----------------------------------------------------------------------------------

REDACT = MaskSpec(function="redact", rule_id="pii")
# Two columns: id int4, email text (OID 25), both text format, from table OID 16400.
ROWDESC_ID_EMAIL = m(
    b"T",
    b"\0\2"
    b"id\0\0\0\x40\x10\0\1\0\0\0\x17\0\4\xff\xff\xff\xff\0\0"
    b"email\0\0\0\x40\x10\0\2\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
)
ROW_ALICE = m(b"D", b"\0\2\0\0\0\1" b"7" b"\0\0\0\x11" b"alice@example.com")
ROW_ALICE_MASKED = m(b"D", b"\0\2\0\0\0\1" b"7" b"\0\0\0\4" b"****")
ROW_NULL_EMAIL = m(b"D", b"\0\2\0\0\0\1" b"8" b"\xff\xff\xff\xff")


def masked_judge(redact_errors: bool = False) -> Judge:
    ctx = MaskContext(request=RequestMask(plan=MaskPlan(columns=(None, REDACT)), redact_errors=redact_errors))
    return Judge(masked=True, mask=ctx)


def test_masked_query_rows_are_rewritten() -> None:
    r = exchange(
        ("c", query(b"SELECT id, email FROM customers")),
        ("u", ROWDESC_ID_EMAIL + ROW_ALICE + ROW_NULL_EMAIL + ROW_ALICE + complete(b"SELECT 3") + READY_IDLE),
        judge=masked_judge,
    )
    assert r.to_client == (
        ROWDESC_ID_EMAIL + ROW_ALICE_MASKED + ROW_NULL_EMAIL + ROW_ALICE_MASKED + complete(b"SELECT 3") + READY_IDLE
    )
    assert b"alice@example.com" not in r.to_client
    assert r.events == [done(1, "SELECT 3", rows=3, masked={"email (pii: redact)": 2})]


def test_masked_execute_gets_a_describe_of_the_gateways_own() -> None:
    describe_unnamed = m(b"D", b"P\0")
    r = exchange(
        ("c", parse(b"", b"SELECT id, email FROM customers") + BIND + EXECUTE + SYNC),
        ("u", PARSE_COMPLETE + BIND_COMPLETE + ROWDESC_ID_EMAIL + ROW_ALICE + complete(b"SELECT 1") + READY_IDLE),
        judge=masked_judge,
    )
    assert r.to_upstream == parse(b"", b"SELECT id, email FROM customers") + BIND + describe_unnamed + EXECUTE + SYNC
    # The RowDescription answers the gateway's Describe: swallowed (the client did not ask).
    assert r.to_client == PARSE_COMPLETE + BIND_COMPLETE + ROW_ALICE_MASKED + complete(b"SELECT 1") + READY_IDLE
    assert r.events == [done(2, "SELECT 1", rows=1, ref=1, masked={"email (pii: redact)": 1})]


def test_masked_session_forwards_the_clients_own_describe() -> None:
    describe_unnamed = m(b"D", b"P\0")
    r = exchange(
        ("c", parse(b"", b"SELECT id, email FROM customers") + BIND + DESCRIBE_PORTAL + EXECUTE + SYNC),
        ("u", PARSE_COMPLETE + BIND_COMPLETE + ROWDESC_ID_EMAIL + ROWDESC_ID_EMAIL + ROW_ALICE
         + complete(b"SELECT 1") + READY_IDLE),
        judge=masked_judge,
    )
    assert r.to_upstream == (
        parse(b"", b"SELECT id, email FROM customers") + BIND + DESCRIBE_PORTAL + describe_unnamed + EXECUTE + SYNC
    )
    assert r.to_client == (
        PARSE_COMPLETE + BIND_COMPLETE + ROWDESC_ID_EMAIL + ROW_ALICE_MASKED + complete(b"SELECT 1") + READY_IDLE
    )


def test_masked_describe_of_a_named_portal_keeps_the_clients_bytes() -> None:
    bind_p = m(b"B", b"p\xe9\0\0\0\0\0\0\0\0")
    execute_p = m(b"E", b"p\xe9\0\0\0\0\0")
    r = exchange(("c", parse(b"", b"SELECT 1") + bind_p + execute_p + SYNC), judge=masked_judge)
    assert r.to_upstream == parse(b"", b"SELECT 1") + bind_p + m(b"D", b"Pp\xe9\0") + execute_p + SYNC


def test_masking_stays_on_after_a_verdict_without_the_mask_step() -> None:
    """A verdict that never got to the mask step (here an internal-error refusal) says
    masked=False: the rows of a statement decided before must still be masked."""
    ctx = MaskContext(request=RequestMask(plan=MaskPlan(columns=(None, REDACT))))
    broken = Decision(action="deny", rule_id=rule_ids.INTERNAL_ERROR, message="sqlward could not evaluate this statement")

    def make() -> Judge:
        answers = iter([(ALLOW, True, ctx), (broken, False, None), (ALLOW, False, None)])

        class Flip(Judge):
            def __call__(self, request: StatementRequest) -> Verdict:
                decision, masked, mask = next(answers)
                self.requests.append(request)
                return Verdict(request_id=len(self.requests), decision=decision, masked=masked, mask=mask)

        return Flip()

    r = exchange(
        ("c", parse(b"s1", b"SELECT id, email FROM customers") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", query(b"SELECT something_the_analyser_chokes_on")),
        ("u", syntax_error_at(b"sqlward_refused_2_feed") + READY_IDLE),
        ("c", BIND_S1 + EXECUTE + SYNC),
        ("u", BIND_COMPLETE + ROWDESC_ID_EMAIL + ROW_ALICE + complete(b"SELECT 1") + READY_IDLE),
        judge=make,
    )
    assert b"alice@example.com" not in r.to_client
    assert r.to_client.endswith(BIND_COMPLETE + ROW_ALICE_MASKED + complete(b"SELECT 1") + READY_IDLE)


def test_masked_statement_error_text_is_hidden() -> None:
    r = exchange(
        ("c", query(b"SELECT id FROM customers WHERE email::int = 1")),
        ("u", server_error(b"22P02", b'invalid input syntax for type integer: "alice@example.com"') + READY_IDLE),
        judge=lambda: masked_judge(redact_errors=True),
    )
    assert r.to_client == m(
        b"E",
        b"SERROR\0VERROR\0C22P02\0Mthe statement failed (SQLSTATE 22P02); sqlward hides the server's message "
        b"because the statement reads masked columns\0\0",
    ) + READY_IDLE
    assert r.events == [done(1, error="(hidden: the statement reads masked columns)", sqlstate="22P02")]


def test_masked_statement_notice_text_is_hidden() -> None:
    notice = m(b"N", b"SNOTICE\0VNOTICE\0C00000\0Mvalue is alice@example.com\0\0")
    r = exchange(
        ("c", query(b"SELECT id, email FROM customers")),
        ("u", notice + ROWDESC_ID_EMAIL + complete(b"SELECT 0") + READY_IDLE),
        judge=lambda: masked_judge(redact_errors=True),
    )
    assert b"alice@example.com" not in r.to_client
    assert r.to_client.startswith(m(
        b"N",
        b"SNOTICE\0VNOTICE\0C00000\0Ma notice was raised (SQLSTATE 00000); sqlward hides its message because "
        b"the statement reads masked columns\0\0",
    ))
    # A statement reading no masked table keeps its notices.
    r = exchange(
        ("c", query(b"SELECT 1")),
        ("u", notice + complete(b"SELECT 1") + READY_IDLE),
        judge=lambda: masked_judge(redact_errors=False),
    )
    assert r.to_client.startswith(notice)


def test_a_datarow_that_cannot_be_masked_is_never_forwarded() -> None:
    bad = m(b"D", b"\0\2\0\0\0\1" b"7")  # announces two columns, holds one
    state = RelayState(policy_version=lambda: 1, clock=lambda: 0.0)
    client = ClientSide(state, max_message_size=1 << 20)
    upstream = UpstreamSide(state)
    judge = masked_judge()
    request = client.feed(query(b"SELECT id, email FROM customers"))
    assert request is not None and client.resume(judge(request)) is None
    out, _ = upstream.feed(ROWDESC_ID_EMAIL)
    assert out == ROWDESC_ID_EMAIL
    with pytest.raises(ProtocolViolation, match="cannot be masked"):
        upstream.feed(ROW_ALICE + bad)


# -- streaming, limits and bad bytes ------------------------------------------------------------


def test_large_datarow_is_streamed_not_buffered() -> None:
    state = RelayState(policy_version=lambda: 1)
    upstream = UpstreamSide(state)
    row = m(b"D", b"\0\1\0\0\x27\x10" + b"z" * 10000)
    out1, _ = upstream.feed(row[:3000])
    assert out1 == row[:3000] and upstream.mid_message and upstream.buffered == 0
    out2, _ = upstream.feed(row[3000:] + READY_IDLE)
    assert out2 == row[3000:] + READY_IDLE and not upstream.mid_message


def test_messages_over_a_mebibyte_are_streamed_whatever_their_type() -> None:
    upstream = UpstreamSide(RelayState(policy_version=lambda: 1))
    notice = m(b"N", b"SNOTICE\0M" + b"n" * (1 << 21) + b"\0\0")
    out, _ = upstream.feed(notice[: 1 << 20])
    assert out == notice[: 1 << 20] and upstream.mid_message
    out, _ = upstream.feed(notice[1 << 20 :])
    assert out == notice[1 << 20 :] and not upstream.mid_message


def test_small_messages_wait_until_whole() -> None:
    upstream = UpstreamSide(RelayState(policy_version=lambda: 1))
    out, _ = upstream.feed(ROWDESC_N[:7])
    assert out == b"" and upstream.buffered == 7 and not upstream.mid_message


@pytest.mark.parametrize(
    ("data", "error", "text"),
    [
        (b"Q\0\0\0\x03", ProtocolViolation, "invalid message length 3"),
        (m(b"Q", b"x" * 101 + b"\0"), MessageTooLarge, "message of 102 bytes exceeds"),
        (m(b"P", b"x" * 200), MessageTooLarge, "exceeds this gateway's limit of 100 bytes"),
        (m(b"z"), ProtocolViolation, "invalid frontend message type 122"),
        (m(b"p", b"secret\0"), ProtocolViolation, "invalid frontend message type 112"),
        (m(b"Q", b"SELECT 1\0junk"), ProtocolViolation, "unexpected bytes after the end of a Query"),
        (m(b"Q", b"SELECT 1"), ProtocolViolation, "not NUL-terminated"),
        (m(b"P", b"s\0SELECT 1\0"), ProtocolViolation, "Parse message is truncated"),
        (m(b"E", b"portal"), ProtocolViolation, "not NUL-terminated"),
        (m(b"B", b"\0s1"), ProtocolViolation, "not NUL-terminated"),
    ],
)
def test_bad_client_bytes(data: bytes, error: type[Exception], text: str) -> None:
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        side = ClientSide(RelayState(policy_version=lambda: 1), max_message_size=100)
        with pytest.raises(error, match=text):
            for chunk in chunks:
                request = side.feed(chunk)
                while request is not None:
                    request = side.resume(Judge()(request))


def test_bad_bytes_while_discarding_are_still_refused() -> None:
    side = ClientSide(RelayState(policy_version=lambda: 1), max_message_size=100, marker=lambda: "feed")
    request = side.feed(parse(b"", b"DROP TABLE t"))
    assert request is not None
    assert side.resume(Judge(refuse_drop)(request)) is None
    with pytest.raises(ProtocolViolation, match="invalid frontend message type"):
        side.feed(m(b"z"))


def test_bad_upstream_length() -> None:
    upstream = UpstreamSide(RelayState(policy_version=lambda: 1))
    with pytest.raises(ProtocolViolation, match="invalid message length 2"):
        upstream.feed(b"Z\0\0\0\x02")


def test_resume_without_a_request_and_feed_while_asking() -> None:
    side = ClientSide(RelayState(policy_version=lambda: 1), max_message_size=100)
    with pytest.raises(RuntimeError):
        side.resume(Judge()(StatementRequest(sql="", dialect="postgres")))
    request = side.feed(query(b"SELECT 1"))
    assert request is not None
    with pytest.raises(RuntimeError):
        side.feed(b"")
    with pytest.raises(RuntimeError):
        side.take_output()


def test_relay_imports_no_io_library() -> None:
    import subprocess
    import sys

    code = "import sys, sqlward.adapters.postgres.relay; sys.exit('trio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- the session's search_path (issue 11) -------------------------------------------------------

VAULT = SearchPath(paths=(("pg_catalog", "vault"),), history=(("pg_catalog", "public"), ("pg_catalog", "vault")))
PROBE = _PROBE_MESSAGES
CLOSE_COMPLETE = m(b"3")


def probe_answer(user: bytes, path: bytes, ready: bytes = READY_IDLE) -> bytes:
    setting = path
    row = m(b"D", b"\0\3" + struct.pack("!i", len(user)) + user + struct.pack("!i", len(path)) + path
            + struct.pack("!i", len(setting)) + setting)
    return CLOSE_COMPLETE + PARSE_COMPLETE + BIND_COMPLETE + row + complete(b"SELECT 1") + CLOSE_COMPLETE * 2 + ready


def test_the_probe_is_extended_protocol_under_names_of_its_own() -> None:
    """A simple Query would destroy the client's unnamed statement; the probe names its own
    statement and portal, closes them, and ends with a Sync."""
    assert PROBE_SQL.encode() in PROBE and not PROBE.startswith(b"Q") and PROBE.endswith(SYNC)
    assert b"\0\0" not in PROBE.split(b"P", 1)[1][4:6]  # the Parse names a statement


def moves_on_set(request: StatementRequest) -> SearchPath | None:
    return VAULT if request.sql.startswith("SET") else None


def test_a_path_change_is_followed_by_the_servers_answer_which_the_client_never_sees() -> None:
    r = exchange(
        ("c", query(b"SET search_path TO vault")),
        ("p", b""),  # the SET is still in flight: no probe yet
        ("u", complete(b"SET") + READY_IDLE),
        ("p", b""),
        ("u", probe_answer(b"eve", b"pg_catalog,vault")),
        ("c", query(b"SELECT * FROM secrets")),
        judge=lambda: Judge(moves=moves_on_set),
    )
    assert r.to_upstream == query(b"SET search_path TO vault") + PROBE + query(b"SELECT * FROM secrets")
    assert r.to_client == complete(b"SET") + READY_IDLE  # nothing of the probe
    # Until the answer came, the candidates were the old and the new list; then the server's.
    assert r.requests[1].search_path == SearchPath(paths=(("pg_catalog", "vault"),), user="eve")
    assert not r.state.path.dirty
    assert [e.request_id for e in r.events] == [1]  # the probe is not audited


def test_requests_sent_before_the_answer_are_judged_with_every_candidate() -> None:
    r = exchange(
        ("c", query(b"SET search_path TO vault") + query(b"SELECT * FROM secrets")),
        judge=lambda: Judge(moves=moves_on_set),
    )
    assert r.requests[1].search_path is not None
    assert set(r.requests[1].search_path.paths) == {("pg_catalog", "public"), ("pg_catalog", "vault")}
    assert r.state.path.dirty


def test_no_probe_in_a_failed_transaction_nor_while_a_request_runs() -> None:
    r = exchange(
        ("c", query(b"BEGIN") + query(b"SET search_path TO vault")),
        ("u", complete(b"BEGIN") + READY_IN_TX),
        ("p", b""),  # the SET still runs
        ("u", server_error(b"42601", b"boom") + READY_FAILED),
        ("p", b""),  # failed transaction: the server would refuse the probe
        judge=lambda: Judge(moves=moves_on_set),
    )
    assert PROBE not in r.to_upstream
    assert r.state.path.dirty


def test_a_failed_probe_leaves_the_path_unknown_and_asks_again() -> None:
    r = exchange(
        ("c", query(b"SET search_path TO vault")),
        ("u", complete(b"SET") + READY_IDLE),
        ("p", b""),
        ("u", CLOSE_COMPLETE + server_error(b"57014", b"canceled") + READY_IDLE),
        ("p", b""),
        judge=lambda: Judge(moves=moves_on_set),
    )
    assert r.to_upstream.count(PROBE) == 2
    assert r.to_client == complete(b"SET") + READY_IDLE
    assert r.state.path.current.unknown and r.state.path.dirty


def test_the_end_of_a_transaction_that_moved_the_path_asks_again() -> None:
    r = exchange(
        ("c", query(b"BEGIN")),
        ("u", complete(b"BEGIN") + READY_IN_TX),
        ("c", query(b"SET LOCAL search_path TO vault")),
        ("u", complete(b"SET") + READY_IN_TX),
        ("p", b""),
        ("u", probe_answer(b"eve", b"pg_catalog,vault", READY_IN_TX)),
        ("c", query(b"COMMIT")),
        ("u", complete(b"COMMIT") + READY_IDLE),
        ("p", b""),
        ("u", probe_answer(b"eve", b"pg_catalog,public")),
        judge=lambda: Judge(moves=moves_on_set),
    )
    assert r.to_upstream.count(PROBE) == 2
    # Inside the transaction the probe remembers where its end may go back to.
    assert ("pg_catalog", "public") in r.requests[2].search_path.history
    assert r.state.path.current.paths == (("pg_catalog", "public"),)


def test_a_named_statement_is_decided_again_once_the_path_moved() -> None:
    r = exchange(
        ("c", parse(b"s1", b"SELECT * FROM secrets") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("c", query(b"SET search_path TO vault")),
        ("u", complete(b"SET") + READY_IDLE),
        ("p", b""),
        ("u", probe_answer(b"eve", b"pg_catalog,vault")),
        ("c", BIND_S1 + EXECUTE + SYNC),
        judge=lambda: Judge(moves=moves_on_set),
    )
    again = [q for q in r.requests if q.sql == "SELECT * FROM secrets"]
    assert len(again) == 2
    assert again[1].search_path == SearchPath(paths=(("pg_catalog", "vault"),), user="eve")


def test_a_statement_that_moves_the_path_moves_it_at_every_bind() -> None:
    r = exchange(
        ("c", parse(b"s1", b"SET search_path TO vault") + SYNC),
        ("u", PARSE_COMPLETE + READY_IDLE),
        ("p", b""),
        ("u", probe_answer(b"eve", b"pg_catalog,public")),
        ("c", BIND_S1 + EXECUTE + SYNC),
        judge=lambda: Judge(moves=moves_on_set),
    )
    assert r.state.path.dirty  # the Bind ran it again: the server is asked again when idle


def test_the_unnamed_statement_is_decided_again_when_the_path_moved_in_the_same_pipeline() -> None:
    """Parse "" (SELECT ...), a SET run through another statement, then Bind "": the server
    re-plans the unnamed statement under the new path, so the gateway decides it again."""
    set_stmt = parse(b"s2", b"SET search_path TO vault")
    bind_s2 = m(b"B", b"\0s2\0\0\0\0\0\0\0")
    r = exchange(
        ("c", parse(b"", b"SELECT * FROM secrets") + set_stmt + bind_s2 + EXECUTE + BIND + EXECUTE + SYNC),
        judge=lambda: Judge(moves=moves_on_set),
    )
    again = [q for q in r.requests if q.sql == "SELECT * FROM secrets"]
    assert len(again) == 2
    assert again[1].search_path is not None and ("pg_catalog", "vault") in again[1].search_path.paths


def test_no_probe_while_the_client_has_not_sent_its_sync() -> None:
    """A client in libpq pipeline mode (or one reading a suspended portal with Flush) has
    an open implicit transaction and unnamed portal: a Sync of the gateway's would end them."""
    r = exchange(
        ("c", query(b"SET search_path TO vault")),
        ("u", complete(b"SET") + READY_IDLE),
        ("c", parse(b"", b"SELECT 1") + BIND + m(b"E", b"\0\0\0\0\1") + m(b"H")),
        ("u", PARSE_COMPLETE + BIND_COMPLETE + m(b"D", b"\0\1\0\0\0\1" b"1") + SUSPENDED),
        ("p", b""),
        ("c", EXECUTE + SYNC),
        ("u", complete(b"SELECT 1") + READY_IDLE),
        ("p", b""),
        judge=lambda: Judge(moves=moves_on_set),
    )
    assert r.to_upstream.count(PROBE) == 1
    assert r.to_upstream.endswith(SYNC + PROBE)
