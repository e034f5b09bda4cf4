"""The OTLP logs audit sink: each audit record as an OpenTelemetry log record (OTLP/HTTP).

`OtlpLogsDestination` is the `audit.sinks.Destination` behind a spool (`audit.spool.Spool`;
`audit.spool.remote_sink` builds both from an `[[audit.sinks]]` table with kind = "otlp"). How it works:

- `deliver(lines)` POSTs one `ExportLogsServiceRequest` (protobuf, `Content-Type:
  application/x-protobuf`) to the endpoint (`http://collector:4318/v1/logs`) with httpx on trio,
  the configured headers added (an API key). A batch is one resource (`service.name` = "sqlward",
  `service.instance.id` = the gateway) with one scope (`sqlward.audit`) and one `LogRecord` per
  line: body = the linked JSON line exactly, as a string, without its newline (a verifier hashes
  body + "\\n"); `time_unix_nano` = the record's `time` (a record without one, such as a
  checkpoint, takes the time of the record before it, else the time of sending);
  severity INFO; attributes `sqlward.event`, `sqlward.chain.seq`, `sqlward.gateway`.
- A status other than 2xx, a connection error or a timeout raises: the spool keeps the lines and
  retries. So does a 2xx whose `partial_success` says records were rejected (those would be lost
  otherwise); the whole batch is then sent again.
- Delivery is at least once: a batch re-sent after a crash, or after a response that was lost,
  arrives twice; a reader keeps one record per (`sqlward.gateway`, `sqlward.chain.seq`).
- OTLP is write-only: `last_link` is None (the trail continues from its other sinks).
- `ca_file`: a PEM bundle trusted instead of the system's for an https endpoint.
"""

from __future__ import annotations

import ssl
import urllib.parse
import time

import httpx
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_INFO, LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from sqlward.audit.sinks import SinkError, read_linked, shown_url
from sqlward.audit.spool import RemoteSinkSettings

__all__ = ["OtlpLogsDestination", "encode_request", "make_destination"]

SCOPE = "sqlward.audit"




def _attr(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def encode_request(lines: list[bytes], gateway: str) -> bytes:
    """The ExportLogsServiceRequest for these linked lines (module doc), serialized."""
    now = time.time_ns()
    records: list[LogRecord] = []
    last_time: int | None = None
    for raw in lines:
        head, text = read_linked(raw)
        if head.time is not None:
            last_time = int(round(head.time * 1e6)) * 1000  # microseconds: what a float holds
        records.append(LogRecord(
            time_unix_nano=last_time if last_time is not None else now,
            observed_time_unix_nano=now,
            severity_number=SEVERITY_NUMBER_INFO,
            severity_text="INFO",
            body=AnyValue(string_value=text),
            attributes=[_attr("sqlward.event", head.event), _attr("sqlward.chain.seq", head.chain.seq),
                        _attr("sqlward.gateway", head.gateway or gateway)],
        ))
    request = ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=Resource(attributes=[_attr("service.name", "sqlward"), _attr("service.instance.id", gateway)]),
        scope_logs=[ScopeLogs(scope=InstrumentationScope(name=SCOPE), log_records=records)],
    )])
    return request.SerializeToString()


class OtlpLogsDestination:
    """Audit lines to an OTLP/HTTP logs endpoint (module doc); a `Destination`."""

    def __init__(self, endpoint: str, headers: dict[str, str], ca_file: str, timeout: float, gateway: str,
                 *, name: str = "otlp") -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise SinkError(f"otlp sink {name!r}: endpoint {endpoint!r} is not an http(s) URL")
        self.name = name
        self._endpoint = endpoint
        self._shown = shown_url(endpoint)  # for messages: no credentials, no query
        self._headers = {**headers, "Content-Type": "application/x-protobuf"}
        self._gateway = gateway
        verify: ssl.SSLContext | bool = True
        if ca_file:
            try:
                verify = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise SinkError(f"otlp sink {name!r}: cannot load ca_file {ca_file!r}: {exc}") from exc
        self._client = httpx.AsyncClient(timeout=timeout, verify=verify, follow_redirects=False)

    async def deliver(self, lines: list[bytes]) -> None:
        body = encode_request(lines, self._gateway)
        response = await self._client.post(self._endpoint, content=body, headers=self._headers)
        if not 200 <= response.status_code < 300:
            # The reply's text is not repeated: a collector may echo what it was sent (a token).
            raise SinkError(f"HTTP {response.status_code} from {self._shown}")
        if response.content:
            reply = ExportLogsServiceResponse()
            try:
                reply.ParseFromString(response.content)
            except DecodeError:  # not OTLP (a proxy's page?): a 2xx says the records were taken
                return
            rejected = reply.partial_success.rejected_log_records
            if rejected:
                why = reply.partial_success.error_message
                raise SinkError(f"{self._shown} rejected {rejected} of {len(lines)} records" + (f": {why}" if why else ""))

    async def last_link(self, gateway: str) -> tuple[int, str] | None:
        return None

    async def aclose(self) -> None:
        await self._client.aclose()


def make_destination(cfg: RemoteSinkSettings, *, gateway: str) -> OtlpLogsDestination:
    """The destination of an `[[audit.sinks]]` table with kind = "otlp"; `audit.spool.remote_sink`
    puts it behind a spool."""
    if cfg.kind != "otlp":
        raise ValueError(f"not an otlp sink: {cfg.kind}")
    return OtlpLogsDestination(cfg.endpoint, dict(cfg.headers), cfg.ca_file, cfg.timeout_seconds, gateway,
                               name=cfg.name or "otlp")
