"""A real OTLP/HTTP receiver for tests: what an OpenTelemetry Collector's otlphttp receiver does,
minus the pipeline.

How it works: `OtlpReceiver` runs a stdlib `ThreadingHTTPServer` on 127.0.0.1 (port 0: a free
one) in a thread of its own. POST /v1/traces, /v1/metrics and /v1/logs bodies (protobuf,
gzip-decoded when sent so) are parsed with opentelemetry-proto's ExportTraceServiceRequest,
ExportMetricsServiceRequest and ExportLogsServiceRequest and kept in `traces`, `metrics` and
`logs`, in arrival order; the answer is an empty Export*ServiceResponse, 200. `fail_next(n,
status)` makes the next n requests fail with `status` (503 by default: the exporters retry
it) without keeping their bodies. `wait_for(predicate, timeout)` polls until the predicate
over the receiver holds. Use it as a context manager; `endpoint` is the base URL to put in
`[telemetry] endpoint`.

Helpers flatten what tests look at: `spans()` (every span with its resource attributes),
`attributes(kv_list)` (an OTLP KeyValue list as a dict of Python values).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ["OtlpReceiver", "attributes", "value"]


def value(v: AnyValue) -> object:
    """An OTLP AnyValue as a Python value (arrays as tuples)."""
    which = v.WhichOneof("value")
    if which == "array_value":
        return tuple(value(x) for x in v.array_value.values)
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if which is None:
        return None
    return getattr(v, which)


def attributes(kvs: Iterable[KeyValue]) -> dict[str, object]:
    return {kv.key: value(kv.value) for kv in kvs}


class OtlpReceiver:
    """See the module doc."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.logs: list[ExportLogsServiceRequest] = []
        self.requests: list[tuple[str, int]] = []  # (path, status answered), every request
        self._fail: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                return None

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                status, answer = receiver._take(self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    def _take(self, path: str, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            if self._fail:
                status = self._fail.pop(0)
                self.requests.append((path, status))
                return status, b""
            if path == "/v1/traces":
                request = ExportTraceServiceRequest.FromString(body)
                self.traces.append(request)
                answer = ExportTraceServiceResponse().SerializeToString()
            elif path == "/v1/metrics":
                metrics = ExportMetricsServiceRequest.FromString(body)
                self.metrics.append(metrics)
                answer = ExportMetricsServiceResponse().SerializeToString()
            elif path == "/v1/logs":
                logs = ExportLogsServiceRequest.FromString(body)
                self.logs.append(logs)
                answer = ExportLogsServiceResponse().SerializeToString()
            else:
                self.requests.append((path, 404))
                return 404, b""
            self.requests.append((path, 200))
            return 200, answer

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next `n` requests with `status` (their bodies are not kept)."""
        with self._lock:
            self._fail.extend([status] * n)

    def spans(self) -> list[tuple[dict[str, object], Span]]:
        """Every span received so far, with its resource's attributes."""
        with self._lock:
            out = []
            for request in self.traces:
                for rs in request.resource_spans:
                    resource = attributes(rs.resource.attributes)
                    for ss in rs.scope_spans:
                        out.extend((resource, span) for span in ss.spans)
            return out

    def metric_names(self) -> set[str]:
        with self._lock:
            return {
                m.name for request in self.metrics for rm in request.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics
            }

    def wait_for(self, predicate: Callable[[OtlpReceiver], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return predicate(self)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
