"""The pre-authentication caps (adapters/preauth.py): global and per address, slots given back
once, the refusal names the cap that was hit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sqlward.adapters.preauth import PreAuthLimiter


def test_per_address_and_global_caps() -> None:
    lim = PreAuthLimiter(limit=3, per_address=2)
    a1, a2 = lim.acquire("10.0.0.1"), lim.acquire("10.0.0.1")
    assert a1 and a2 and lim.acquire("10.0.0.1") is None
    assert "from 10.0.0.1 (max_unauthenticated_per_address = 2)" in lim.refusal("10.0.0.1")
    b1 = lim.acquire("10.0.0.2")
    assert b1 and lim.acquire("10.0.0.3") is None
    assert "(max_unauthenticated = 3)" in lim.refusal("10.0.0.3")
    a1.release()
    a1.release()  # idempotent: one slot back, not two
    assert lim.total == 2 and lim.acquire("10.0.0.3") is not None and lim.acquire("10.0.0.4") is None


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), max_size=200))
def test_counts_never_drift(ops: list[tuple[bool, int]]) -> None:
    lim = PreAuthLimiter(limit=6, per_address=3)
    held: list = []
    for take, addr in ops:
        if take:
            slot = lim.acquire(f"a{addr}")
            if slot is not None:
                held.append((addr, slot))
        elif held:
            held.pop(0)[1].release()
        assert lim.total == len(held) <= 6
        for a in range(5):
            assert sum(1 for x, _ in held if x == a) == lim._by_address.get(f"a{a}", 0) <= 3
    for _, slot in held:
        slot.release()
    assert lim.total == 0 and lim._by_address == {}
