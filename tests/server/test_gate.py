"""The rate limiter shared out among instances, on an injected clock."""

from __future__ import annotations

from appliance.server.gate import RateLimiter, Verdict


def test_each_of_n_instances_allows_its_share_of_the_limit() -> None:
    limiter = RateLimiter(per_second=20)
    limiter.share(2)
    verdicts = [limiter.check("ann", 100.0 + i * 0.001) for i in range(12)]
    assert verdicts.count(Verdict.ALLOW) == 10  # half of 20: the other instance has the rest
    limiter.share(3)
    assert limiter.per_second == 7  # rounded up: the shares never add up to less
    limiter.share(1)
    assert [limiter.check("ann", 101.0) for _ in range(20)] == [Verdict.ALLOW] * 20
