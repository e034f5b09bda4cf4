"""gateway.throttle: failed logins are throttled per source address and per canonical user name
(progressive delay, attempts spaced out per key, refusal when an attempt would have to wait longer
than the longest delay), with bounded memory. Time is a fake clock here; the gatekeeper's use of
it (real waits, audit events) is in tests/unit/test_identity_issue12.py."""

from __future__ import annotations

import pytest

from sqlward.gateway.config import LoginThrottleConfig
from sqlward.gateway.throttle import LoginThrottle, ThrottleRefused


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(**kw: object) -> tuple[LoginThrottle, Clock]:
    settings = dict(failures_before_delay=3, base_delay_seconds=1.0, max_delay_seconds=8.0, window_seconds=600.0)
    settings.update(kw)
    clock = Clock()
    return LoginThrottle(LoginThrottleConfig(**settings), clock=clock), clock


def test_first_failures_cost_nothing_then_the_delay_doubles_up_to_the_max() -> None:
    throttle, clock = make()
    waits = []
    for _ in range(8):
        wait = throttle.admit("203.0.113.5", "alice").wait
        waits.append(wait)
        clock.t += wait  # a serial attacker: waits, tries, fails at once
        throttle.failed("203.0.113.5", "alice")
    assert waits == [0, 0, 0, 1, 2, 4, 8, 8]


def test_parallel_attempts_are_spaced_out_and_refused_beyond_the_longest_delay() -> None:
    """Many connections at once cannot multiply the attempt rate: each gets its own slot."""
    throttle, clock = make()
    for _ in range(3):
        throttle.failed("203.0.113.5", "alice")
    waits = []
    refused = 0
    for _ in range(20):
        try:
            waits.append(throttle.admit("203.0.113.5", "alice").wait)
        except ThrottleRefused as exc:
            refused += 1
            assert exc.retry_after >= 1 and exc.scope in ("address", "user")
    assert waits == [1, 2, 3, 4, 5, 6, 7, 8] and refused == 12


@pytest.mark.parametrize(("hosts", "users", "scope"), [
    (["203.0.113.5"] * 4, ["alice", "bob", "carol", "dave"], "address"),  # spraying names from one address
    (["203.0.113.5", "198.51.100.7", "192.0.2.1", "192.0.2.2"], ["alice"] * 4, "user"),  # one name from many
    (["2001:db8::1", "2001:db8::2", "2001:db8::ffff", "[2001:db8::3]"], ["a", "b", "c", "d"], "address"),  # one IPv6 /64
    (["203.0.113.5", "198.51.100.7", "192.0.2.1", "192.0.2.2"], ["alice", "ALICE", "ａｌｉｃｅ", "al\u200bice"], "user"),  # one canonical name
])
def test_keys_per_address_and_per_canonical_user_name(hosts: list[str], users: list[str], scope: str) -> None:
    throttle, _ = make()
    for host, user in zip(hosts[:3], users[:3]):
        throttle.failed(host, user)
    admission = throttle.admit(hosts[3], users[3])
    assert admission.wait == 1 and admission.scope == scope


def test_other_addresses_and_names_are_not_slowed() -> None:
    throttle, _ = make()
    for _ in range(6):
        throttle.failed("203.0.113.5", "alice")
    assert throttle.admit("198.51.100.7", "bob").wait == 0


def test_success_clears_the_user_name_but_not_the_address() -> None:
    throttle, clock = make()
    for user in ("x", "y", "alice"):
        throttle.failed("203.0.113.5", user)
    throttle.succeeded("203.0.113.5", "alice")
    # The address keeps its count: logging in with one's own account does not reset a spray.
    assert throttle.admit("203.0.113.5", "z").wait == 1
    assert throttle.admit("198.51.100.7", "alice").wait == 0


def test_failures_are_forgotten_after_the_window() -> None:
    throttle, clock = make()
    for _ in range(5):
        throttle.failed("203.0.113.5", "alice")
    clock.t += 601
    assert throttle.admit("203.0.113.5", "alice").wait == 0
    throttle.failed("203.0.113.5", "alice")
    assert throttle.admit("203.0.113.5", "alice").wait == 0  # counting starts again


def test_memory_is_bounded_whatever_the_number_of_names() -> None:
    throttle, _ = make(max_tracked=100)
    for i in range(10_000):
        throttle.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"user-{i}")
    assert throttle.tracked <= 200


def test_exempt_addresses_are_not_keyed_by_address_and_nothing_is_exempt_by_default() -> None:
    throttle, _ = make(exempt_addresses=("127.0.0.0/8", "::1/128"))
    for user in ("a", "b", "c", "d"):
        throttle.failed("127.0.0.1", user)
    assert throttle.admit("127.0.0.1", "e").wait == 0  # a local pooler is not throttled as one client
    for _ in range(3):
        throttle.failed("127.0.0.1", "alice")
    assert throttle.admit("127.0.0.1", "alice").wait == 1  # its user names still are
    strict, _ = make()
    for user in ("a", "b", "c"):
        strict.failed("127.0.0.1", user)
    assert strict.admit("127.0.0.1", "e").wait == 1


def test_disabled() -> None:
    throttle, _ = make(enabled=False)
    for _ in range(50):
        throttle.failed("203.0.113.5", "alice")
    assert throttle.admit("203.0.113.5", "alice").wait == 0
    assert throttle.tracked == 0


def test_the_audit_event_decodes_with_the_other_events() -> None:
    import msgspec

    from sqlward.audit.events import AuditEvent, LoginThrottled

    line = msgspec.json.encode(LoginThrottled(client_addr="203.0.113.5", user="alice", scope="user", failures=7,
                                              refused=True, retry_after=3.0))
    event = msgspec.json.decode(line, type=AuditEvent)
    assert isinstance(event, LoginThrottled) and event.failures == 7 and event.delay_seconds == 0.0
    assert b'"event":"login.throttled"' in line


def test_address_keys() -> None:
    from sqlward.gateway.throttle import address_key

    assert address_key("203.0.113.5") == "203.0.113.5"
    assert address_key("203.0.113.5:5432") == "203.0.113.5"
    assert address_key("[2001:db8::1]") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("::ffff:203.0.113.5") == "203.0.113.5"
    assert address_key("2001:db8::1", 128) == "2001:db8::1/128"
