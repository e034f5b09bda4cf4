"""Where a raw-protocol test connects: the gateway, or PostgreSQL itself as the reference."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import psycopg

from tests.support import pgwire


@dataclass
class Endpoint:
    name: str  # "gateway" or "postgres"
    host: str
    port: int
    user: str
    password: str | None
    database: str
    # For refusal scenarios: the database to use, a statement refused there and its SQLSTATE.
    # Against PostgreSQL the "refusal" is a statement that fails at Parse (a syntax error),
    # which the protocol treats the same way: ErrorResponse, then discard up to Sync.
    refuse_database: str = ""

    @property
    def is_gateway(self) -> bool:
        return self.name == "gateway"

    def refused(self, table: str) -> tuple[str, str]:
        """(sql, sqlstate) of a statement that fails at Parse on `refuse_database`."""
        if self.is_gateway:
            return f"drop table {table}", "42501"
        return "selec 1", "42601"

    def session(self, database: str | None = None, **kw) -> pgwire.RawConn:
        return pgwire.open_session(self.host, self.port, self.user, self.password, database or self.database, **kw)

    def connect(self) -> pgwire.RawConn:
        return pgwire.RawConn.connect(self.host, self.port)

    def startup(self, **extra: str) -> bytes:
        return pgwire.startup_message({"user": self.user, "database": self.database, **extra})

    def psycopg_dsn(self, database: str | None = None, **params: str) -> str:
        auth = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
        q = "&".join(f"{k}={v}" for k, v in {"sslmode": "disable", **params}.items())
        return f"postgresql://{auth}@{self.host}:{self.port}/{database or self.database}?{q}"

    def assert_serving(self) -> None:
        """A fresh psycopg session works."""
        with psycopg.connect(self.psycopg_dsn(), autocommit=True, connect_timeout=10) as c:
            assert c.execute("select 'still serving'").fetchone() == ("still serving",)
