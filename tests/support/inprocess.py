"""The real gateway (Gatekeeper, Pipeline, one listener) running in the test process, so a test
can watch the Gatekeeper's login hooks and change module constants (an authentication timeout).

    with InProcessGateway(tmp_path, listener={...}, targets=[...], gate_refuses="blocked") as g:
        ... connect to g.port ...
        g.hook_calls("alice")   # ["gate", "failed", ...] in call order
        g.events()              # the audit file, decoded

trio runs in a thread; `login_gate` refuses the user name `gate_refuses` with an AuthError (as a
throttle would), and every hook call is kept in `calls` as (hook, host, user).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from tests.support.gateway import DEFAULT_IDENTITIES, free_port, to_toml


class InProcessGateway:
    def __init__(
        self, tmp: Path, *, protocol: str, targets: list[dict[str, Any]], gate_refuses: str = "",
        listener: dict[str, Any] | None = None, name: str = "inproc",
    ) -> None:
        self.protocol = protocol
        self.port = free_port()
        self.audit_file = tmp / "audit.jsonl"
        doc = {
            "gateway": {"name": name},
            "listeners": [{"protocol": protocol, "listen": f"127.0.0.1:{self.port}", **(listener or {})}],
            "targets": targets,
            "identities": DEFAULT_IDENTITIES,
            "audit": {"file": str(self.audit_file)},
            "login_throttle": {"enabled": False},
        }
        self.config_path = tmp / "gateway.toml"
        self.config_path.write_text(to_toml(doc))
        self.calls: list[tuple[str, str, str]] = []
        self.gate_refuses = gate_refuses
        self._thread: threading.Thread | None = None
        self._stop: Any = None
        self._trio_token: Any = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def __enter__(self) -> "InProcessGateway":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(20), self.error
        assert self.error is None, self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self._trio_token.run_sync_soon(self._stop.cancel)
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        import trio

        from sqlward.adapters.base import AuthError, SessionServices
        from sqlward.gateway.config import load_config
        from sqlward.gateway.gatekeeper import Gatekeeper
        from sqlward.gateway.pipeline import Pipeline
        from sqlward.gateway.server import ADAPTERS

        async def main() -> None:
            config = load_config(str(self.config_path))
            gk = Gatekeeper.from_config(config)

            async def login_gate(host: str, user: str) -> None:
                self.calls.append(("gate", host, user))
                if user == self.gate_refuses:
                    raise AuthError("too many failed logins for this name; try again in 30 s")

            gk.login_gate = login_gate  # type: ignore[method-assign]
            gk.login_failed = lambda host, user: self.calls.append(("failed", host, user))  # type: ignore[method-assign]
            gk.login_succeeded = lambda host, user: self.calls.append(("succeeded", host, user))  # type: ignore[method-assign]
            services = SessionServices(gatekeeper=gk, pipeline=Pipeline(gk), recorder=gk.recorder)
            listener = ADAPTERS[self.protocol](services, gk, config.listeners[0])
            self._trio_token = trio.lowlevel.current_trio_token()
            try:
                async with trio.open_nursery() as nursery:
                    self._stop = nursery.cancel_scope
                    if gk.trail is not None:
                        nursery.start_soon(gk.trail.run)  # the audit file's syncer (group commit)
                    await nursery.start(listener.serve)
                    self._ready.set()
            finally:
                gk.close()

        try:
            trio.run(main)
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__
            self.error = exc
            self._ready.set()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_file.read_text().splitlines()]

    def hook_calls(self, user: str) -> list[str]:
        return [kind for kind, _host, u in self.calls if u == user]
