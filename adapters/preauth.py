"""How many connections may wait for authentication at once.

Before a client has proved who it is, each connection costs a descriptor, a task and a buffer,
and nothing of it is attributable. `PreAuthLimiter` counts connections from accept until the
session calls `PreAuthSlot.release()` (authenticated) or ends, over all listeners (`limit`) and
per client address (`per_address`). `acquire` is synchronous and never waits: over either cap it
returns None and the listener refuses the connection at once in its protocol, so a flood of idle
unauthenticated connections cannot take the descriptors established sessions and real logins
need. There is one limiter per gateway process, in `SessionServices`.
"""

from __future__ import annotations

__all__ = ["PreAuthLimiter", "PreAuthSlot", "NO_SLOT"]


class PreAuthSlot:
    """One counted unauthenticated connection; `release()` is idempotent."""

    __slots__ = ("_limiter", "_address")

    def __init__(self, limiter: PreAuthLimiter | None, address: str) -> None:
        self._limiter = limiter
        self._address = address

    @property
    def held(self) -> bool:
        """Not released yet: the connection has not authenticated."""
        return self._limiter is not None

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release(self._address)


NO_SLOT = PreAuthSlot(None, "")  # sessions built outside a listener (tests) hold no slot


class PreAuthLimiter:
    def __init__(self, limit: int, per_address: int) -> None:
        self.limit = limit
        self.per_address = per_address
        self.total = 0
        self._by_address: dict[str, int] = {}

    def acquire(self, address: str) -> PreAuthSlot | None:
        """A slot for a new connection from `address` (the host, without port), or None when
        the global or the per-address cap is reached."""
        held = self._by_address.get(address, 0)
        if self.total >= self.limit or held >= self.per_address:
            return None
        self.total += 1
        self._by_address[address] = held + 1
        return PreAuthSlot(self, address)

    def refusal(self, address: str) -> str:
        """The sentence a refused connection gets (which cap it hit)."""
        if self._by_address.get(address, 0) >= self.per_address:
            return (
                f"too many connections awaiting authentication from {address} "
                f"(max_unauthenticated_per_address = {self.per_address})"
            )
        return f"too many connections awaiting authentication (max_unauthenticated = {self.limit})"

    def _release(self, address: str) -> None:
        self.total -= 1
        held = self._by_address.get(address, 0) - 1
        if held > 0:
            self._by_address[address] = held
        else:
            self._by_address.pop(address, None)
