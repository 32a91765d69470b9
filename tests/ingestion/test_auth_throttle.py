"""The failed-authentication throttle holds back bad keys only, in bounded memory."""

from __future__ import annotations

from fastapi.testclient import TestClient

from deeplens.auth import Authenticator, AuthError, RateLimiter, address_key
from tests.ingestion.edge_app import KEY_A, KEY_B, FakeClock, edge_app, edge_settings


def test_bad_keys_from_a_shared_address_never_lock_out_a_valid_key(tmp_path) -> None:
    """Behind one NAT: a client floods bad keys, the tenants at the same address keep
    getting their answers, and the flood itself is held back."""
    app = edge_app(edge_settings(tmp_path, failed_auth_burst=5, failed_auth_per_minute=30,
                                 rate_limit_per_minute=100_000, rate_limit_burst=10_000))
    # The clock stands still: on a loaded machine the 400 requests take seconds, and the
    # throttle's refill (30 a minute) would let a bad key through as a 401 now and then.
    app.state.auth.clock = FakeClock()
    bad, good = [], []
    with TestClient(app) as shared_address:  # every request from the same client address
        for i in range(200):
            bad.append(shared_address.get("/v1/images", headers={
                "Authorization": f"Bearer guess-{i:016d}"}).status_code)
            key = KEY_A if i % 2 else KEY_B
            good.append(shared_address.get("/v1/images", headers={
                "Authorization": f"Bearer {key}"}).status_code)
        missing = shared_address.get("/v1/images").status_code
    assert good == [200] * 200
    assert bad[:5] == [401] * 5 and set(bad[5:]) == {429}, "the flood is still throttled"
    assert missing == 429, "no key at all counts as a failure too"


def test_a_million_made_up_addresses_keep_the_throttle_bounded() -> None:
    limiter = RateLimiter(per_minute=30, burst=2, max_keys=50_000)
    largest = 0
    for i in range(1_000_000):
        limiter.acquire(f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}", now=float(i))
        if i % 10_000 == 0:
            largest = max(largest, len(limiter))
    assert max(largest, len(limiter)) <= 50_000
    # The most recent addresses are the ones kept: a flooding address stays held back.
    flooder = RateLimiter(per_minute=30, burst=2, max_keys=1000)
    for i in range(5000):
        flooder.acquire(f"made-up-{i}", now=0.0)
        flooder.acquire("flooder", now=0.0)
    assert flooder.acquire("flooder", now=0.0) > 0
    assert len(flooder) <= 1000


def test_the_bound_comes_from_settings(tmp_path) -> None:
    auth = Authenticator(edge_settings(tmp_path, rate_limit_max_keys=100))
    for limiter in (auth.failures, *auth.limiters.values()):
        assert limiter.max_keys == 100
    for i in range(1000):
        try:
            auth.authenticate(f"Bearer guess-{i:016d}", f"10.0.{i >> 8}.{i & 255}")
        except AuthError as refused:
            assert refused.status == 401
    assert len(auth.failures) == 100


def test_ipv6_addresses_are_throttled_by_their_64_block() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:10.0.0.7") == address_key("10.0.0.7") == "10.0.0.7"
    assert address_key("testclient") == "testclient"
