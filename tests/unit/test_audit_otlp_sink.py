"""The OTLP logs audit sink (`audit/sinks/otlp.py`) against a real HTTP receiver.

`Receiver` is an `http.server` on 127.0.0.1 (port 0) in a thread that answers with the statuses
it is told, one per request, and decodes each accepted body with opentelemetry-proto.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trio
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_INFO, LogRecord

from sqlward.audit.chain import Chain
from sqlward.audit.sinks import SinkError
from sqlward.audit.sinks.otlp import OtlpLogsDestination
from sqlward.audit.spool import Spool, describe_error, remote_sink
from sqlward.gateway.config import AuditSinkConfig
from tests.support.certs import make_pki
from tests.support.pgcluster import free_port


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.statuses: list[int] = []  # answers to the next requests (then 200)
        self.reply = b""  # body of a 200
        self.requests: list[ExportLogsServiceRequest] = []  # accepted ones
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    if status == 200:
                        request = ExportLogsServiceRequest()
                        request.ParseFromString(body)
                        receiver.requests.append(request)
                reply = receiver.reply if status == 200 else b"unavailable"
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        scheme = "https" if isinstance(self.server.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}/v1/logs"

    def records(self) -> list[LogRecord]:
        with self.lock:
            return [r for req in self.requests for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]

    def bodies(self) -> list[bytes]:
        return [r.body.string_value.encode() + b"\n" for r in self.records()]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def attrs(kvs: list[KeyValue]) -> dict[str, str | int]:
    out: dict[str, str | int] = {}
    for kv in kvs:
        out[kv.key] = kv.value.int_value if kv.value.HasField("int_value") else kv.value.string_value
    return out


class Lines:
    def __init__(self, gateway: str = "g1") -> None:
        self.chain = Chain(gateway)
        self.gateway = gateway
        self.made: list[bytes] = []

    def make(self, n: int) -> list[bytes]:
        out = []
        for _ in range(n):
            i = len(self.made)
            line = self.chain.link(b'{"time":%d.5,"event":"statement.decided","gateway":"%s","text":"\xc3\xa9\xe2\x80\xa8 \\"%d\\""}\n' % (
                1_700_000_000 + i, self.gateway.encode(), i))
            self.made.append(line)
            out.append(line)
        return out


def test_records_arrive_exactly_in_order(receiver: Receiver) -> None:
    lines = Lines()

    async def main() -> None:
        dest = OtlpLogsDestination(receiver.url, {"Authorization": "Bearer t0ken"}, "", 5.0, "g1")
        await dest.deliver(lines.make(3))
        await dest.deliver(lines.make(2))
        assert await dest.last_link("g1") is None
        await dest.aclose()

    trio.run(main)
    assert receiver.bodies() == lines.made
    assert receiver.headers[0]["content-type"] == "application/x-protobuf"
    assert receiver.headers[0]["authorization"] == "Bearer t0ken"
    req = receiver.requests[0]
    assert attrs(list(req.resource_logs[0].resource.attributes)) == {"service.name": "sqlward", "service.instance.id": "g1"}
    assert req.resource_logs[0].scope_logs[0].scope.name == "sqlward.audit"
    records = receiver.records()
    first = records[0]
    assert first.time_unix_nano == 1_700_000_000_500_000_000
    assert first.severity_number == SEVERITY_NUMBER_INFO and first.severity_text == "INFO"
    assert attrs(list(first.attributes)) == {"sqlward.event": "statement.decided", "sqlward.chain.seq": 1, "sqlward.gateway": "g1"}
    assert [attrs(list(r.attributes))["sqlward.chain.seq"] for r in records] == [1, 2, 3, 4, 5]
    # the body is the line the chain hashed
    assert hashlib.sha256(records[-1].body.string_value.encode() + b"\n").hexdigest() == lines.chain.prev


def test_non_2xx_and_partial_success_raise(receiver: Receiver) -> None:
    lines = Lines()

    async def main() -> None:
        dest = OtlpLogsDestination(receiver.url, {}, "", 5.0, "g1")
        receiver.statuses = [503]
        with pytest.raises(SinkError, match=r"HTTP 503 from http://127.0.0.1:\d+/v1/logs$"):  # the reply is not repeated
            await dest.deliver(lines.make(1))
        rejected = ExportLogsServiceResponse()
        rejected.partial_success.rejected_log_records = 1
        rejected.partial_success.error_message = "too old"
        receiver.reply = rejected.SerializeToString()
        with pytest.raises(SinkError, match="rejected 1 of 1 records: too old"):
            await dest.deliver(lines.made[-1:])
        receiver.reply = b"<html>ok</html>"  # not OTLP, but 2xx: taken
        await dest.deliver(lines.made[-1:])
        await dest.aclose()

    trio.run(main)


def test_503_then_200_loses_nothing_through_the_spool(receiver: Receiver, tmp_path: Path) -> None:
    lines = Lines()

    async def main() -> None:
        cfg = AuditSinkConfig(kind="otlp", name="collector", endpoint=receiver.url, headers={"X-Key": "k"}, timeout_seconds=5)
        sink = remote_sink(cfg, gateway="g1", spool_dir=str(tmp_path / "collector"))
        assert isinstance(sink, Spool) and sink.name == "collector" and sink.kind == "otlp"
        assert sink.directory == str(tmp_path / "collector")
        assert await sink.last_link("g1") is None
        async with trio.open_nursery() as n:
            n.start_soon(sink.run)
            sink.accept(b"".join(lines.make(2)))
            await sink.durable(5)
            receiver.statuses = [503, 503]
            sink.accept(b"".join(lines.make(3)))
            with pytest.raises(SinkError, match="otlp sink 'collector': HTTP 503"):
                await sink.durable(5)
            sink.accept(b"".join(lines.make(1)))
            assert sink.status().backlog == 4
            with pytest.raises(SinkError, match="HTTP 503"):
                await sink.durable(5)  # the retry it asks for gets the second 503
            await sink.durable(5)  # then 200
            assert sink.status().ok and sink.status().backlog == 0
            n.cancel_scope.cancel()
        await sink.aclose(2)

    trio.run(main)
    assert receiver.bodies() == lines.made
    assert all(h["x-key"] == "k" for h in receiver.headers)


def test_connection_refused_is_the_reason(tmp_path: Path) -> None:
    lines = Lines()

    async def main() -> None:
        dest = OtlpLogsDestination(f"http://127.0.0.1:{free_port()}/v1/logs", {}, "", 2.0, "g1")
        sink = Spool("otlp", "otlp", False, dest, str(tmp_path), 1 << 20, "g1")
        async with trio.open_nursery() as n:
            n.start_soon(sink.run)
            sink.accept(b"".join(lines.make(1)))
            with pytest.raises(SinkError, match="otlp sink 'otlp': .*(refused|connect)"):
                await sink.durable(5)
            n.cancel_scope.cancel()
        await sink.aclose(0.1)

    trio.run(main)


def test_https_with_ca_file(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(pki.cert_file), str(pki.key_file))
    r = Receiver(tls)
    r.thread.start()
    lines = Lines()
    try:
        async def main() -> None:
            dest = OtlpLogsDestination(r.url, {}, str(pki.ca_file), 5.0, "g1")
            await dest.deliver(lines.make(2))
            await dest.aclose()
            untrusted = OtlpLogsDestination(r.url, {}, "", 5.0, "g1")  # the system CAs do not know it
            with pytest.raises(Exception) as failed:
                await untrusted.deliver(lines.made)
            assert "certificate verify failed" in describe_error(failed.value)
            await untrusted.aclose()

        trio.run(main)
    finally:
        r.server.shutdown()
        r.server.server_close()
    assert r.bodies() == lines.made


def test_bad_endpoint_is_refused() -> None:
    with pytest.raises(SinkError, match="not an http"):
        OtlpLogsDestination("collector:4318", {}, "", 5.0, "g1")


def test_messages_never_show_the_endpoints_credentials_or_query() -> None:
    from sqlward.audit.sinks import shown_url

    assert shown_url("http://ingest-user:S3CRETPASS@collector:4318/v1/logs?api_key=QUERYTOKEN123") == "http://collector:4318/v1/logs"
    assert shown_url("https://[::1]/v1/logs#x") == "https://[::1]/v1/logs"
    # A URL whose path is the credential (a chat incoming webhook): host and port only.
    assert shown_url("https://hooks.example.com/services/T0/B0/SECRETPATH", path=False) == "https://hooks.example.com"
    assert shown_url("http://host:99999999/x") == "<unparsable URL>"
