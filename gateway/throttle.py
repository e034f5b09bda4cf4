"""Throttling of failed logins, per source address and per user name (`[login_throttle]`).

How it works. Two tables of keys: source addresses (an IPv4 address; an IPv6 address's
/`ipv6_prefix` network, 64 by default, since one host holds a whole /64) and user names in their
canonical form (`adapters.identity.canonical_name`: "ALICE", "ａｌｉｃｅ" and "alice" are one
key). Each key counts its failed logins (`failed`); a key without a failure for
`window_seconds` starts again from zero.

The first `failures_before_delay` failures of a key cost nothing. After that each attempt under
the key must wait its turn: the key keeps the time its next attempt may start (`next_slot`),
`base_delay_seconds` after the last failure, doubling with each further failure up to
`max_delay_seconds`. `admit` hands an attempt the later of now and that slot and moves the slot
on by the delay, so parallel connections cannot multiply the attempt rate: they are spaced out,
and an attempt whose turn would come later than `max_delay_seconds` from now is refused at once
(`ThrottleRefused`, with the seconds after which to try again). An attempt waits for the later
of its address's and its name's turns.

`admit` only computes; the caller (`Gatekeeper.login_gate`) sleeps the wait in the connection's
own task (`trio.sleep`), so a throttled client never holds anything other clients need. A
success (`succeeded`) clears the user name's count; the address keeps its count (logging in with
one's own account between guesses at other names must not reset a spray) and forgets it after
the window.

Addresses in `exempt_addresses` (none by default; e.g. loopback when a local pooler or proxy
puts every client behind one address, and throttling it would throttle everyone) are not keyed by
address; their user names still are.

Memory is bounded: each table holds at most `max_tracked` keys, the least recently failed are
dropped first (an `OrderedDict` used as an LRU), so an attacker inventing names or addresses
cannot grow it; an evicted key simply starts again from zero.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

import msgspec

from sqlward.adapters.identity import canonical_name
from sqlward.gateway.config import LoginThrottleConfig

__all__ = ["Admission", "LoginThrottle", "ThrottleRefused", "address_key"]

Scope = Literal["address", "user"]


class ThrottleRefused(Exception):
    """An attempt refused outright: its turn would come too late."""

    def __init__(self, scope: Scope, failures: int, retry_after: float) -> None:
        self.scope = scope
        self.failures = failures
        self.retry_after = retry_after
        what = "from this address" if scope == "address" else "for this user name"
        super().__init__(f"too many failed logins {what}; try again in {math.ceil(retry_after)} s")


class Admission(msgspec.Struct, frozen=True):
    """How long an attempt waits before its credentials are judged (0: not at all), and the key
    that made it wait (with that key's failure count)."""

    wait: float = 0.0
    scope: Scope | None = None
    failures: int = 0


class _Entry:
    __slots__ = ("failures", "last_failure", "next_slot")

    def __init__(self) -> None:
        self.failures = 0
        self.last_failure = -math.inf
        self.next_slot = -math.inf


def address_key(host: str, ipv6_prefix: int = 64) -> str:
    """The key of a client address: the IPv4 address, the IPv6 /prefix network, or the text as
    given when it is not an address (a Unix socket path)."""
    text = host.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        try:  # "1.2.3.4:5678"
            ip = ipaddress.ip_address(text.rsplit(":", 1)[0])
        except ValueError:
            return text
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{ipv6_prefix}", strict=False))
    return str(ip)


class LoginThrottle:
    """See the module doc. Not thread-safe; made for one trio event loop (no awaits inside)."""

    def __init__(self, settings: LoginThrottleConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._exempt = tuple(ipaddress.ip_network(n, strict=False) for n in settings.exempt_addresses)
        self._tables: dict[Scope, OrderedDict[str, _Entry]] = {"address": OrderedDict(), "user": OrderedDict()}

    @property
    def tracked(self) -> int:
        """Keys held, over both tables."""
        return sum(len(t) for t in self._tables.values())

    def _keys(self, host: str, username: str) -> list[tuple[Scope, str]]:
        keys: list[tuple[Scope, str]] = [("user", canonical_name(username))]
        if not self._exempt_host(host):
            keys.insert(0, ("address", address_key(host, self.settings.ipv6_prefix)))
        return keys

    def _exempt_host(self, host: str) -> bool:
        if not self._exempt:
            return False
        key = address_key(host, 128)
        try:
            ip = ipaddress.ip_address(key)
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in self._exempt)

    def delay(self, failures: int) -> float:
        """The spacing between attempts of a key with `failures` failures."""
        s = self.settings
        over = failures - s.failures_before_delay
        if over < 0:
            return 0.0
        return min(s.max_delay_seconds, s.base_delay_seconds * (2.0 ** min(over, 64)))

    def _live(self, scope: Scope, key: str, now: float) -> _Entry | None:
        table = self._tables[scope]
        entry = table.get(key)
        if entry is not None and now - entry.last_failure > self.settings.window_seconds:
            del table[key]
            return None
        return entry

    def admit(self, host: str, username: str) -> Admission:
        """The wait of one attempt (reserving its turn), or ThrottleRefused."""
        if not self.settings.enabled:
            return Admission()
        now = self._clock()
        turns: list[tuple[_Entry, float, float, Scope]] = []
        for scope, key in self._keys(host, username):
            entry = self._live(scope, key, now)
            if entry is None:
                continue
            spacing = self.delay(entry.failures)
            if spacing <= 0:
                continue
            start = max(now, entry.next_slot)
            if start - now > self.settings.max_delay_seconds + 1e-9:
                raise ThrottleRefused(scope, entry.failures, max(1.0, start - now - self.settings.max_delay_seconds))
            turns.append((entry, start, spacing, scope))
        if not turns:
            return Admission()
        for entry, start, spacing, _ in turns:
            entry.next_slot = start + spacing
        entry, start, _, scope = max(turns, key=lambda t: t[1])
        return Admission(wait=start - now, scope=scope, failures=entry.failures)

    def failed(self, host: str, username: str) -> None:
        if not self.settings.enabled:
            return
        now = self._clock()
        for scope, key in self._keys(host, username):
            table = self._tables[scope]
            entry = self._live(scope, key, now)
            if entry is None:
                entry = table[key] = _Entry()
                while len(table) > self.settings.max_tracked:
                    table.popitem(last=False)
            else:
                table.move_to_end(key)
            entry.failures += 1
            entry.last_failure = now
            entry.next_slot = max(entry.next_slot, now + self.delay(entry.failures))

    def succeeded(self, host: str, username: str) -> None:
        self._tables["user"].pop(canonical_name(username), None)
