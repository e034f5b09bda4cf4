"""An in-memory audit sink for unit tests: keeps each line the recorder writes, decoded."""

from __future__ import annotations

import json
from typing import Any


class ListSink:
    """`audit.recorder.Sink` that keeps the decoded lines (`events`) and the batches (`batches`)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.batches: list[bytes] = []
        self.fail: Exception | None = None
        self.closed = False

    async def write(self, data: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.batches.append(data)
        self.events.extend(json.loads(line) for line in data.splitlines())

    async def commit(self, *, before_run: bool = False) -> None:
        if self.fail is not None:
            raise self.fail

    def close(self) -> None:
        self.closed = True
