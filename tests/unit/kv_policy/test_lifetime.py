import pytest

from sagellm.core.kv import KVTier
from sagellm.kv_policy import BlockCandidate, CostAwarePolicy, CostModel, EWMAReusePredictor, LifetimePredictor
from sagellm.kv_policy import PolicyOptions


def c(name: bytes, last=0.0, hits=0):
    return BlockCandidate(name * 16, KVTier.DEVICE, depth=0, num_tokens=16, last_access=last, hit_count=hits)


def test_ewma_intervals_and_rate():
    p = EWMAReusePredictor(alpha=0.5, prior_interval_s=60.0)
    assert isinstance(p, LifetimePredictor)
    key = b"a" * 16
    for t in (0.0, 10.0, 30.0):
        p.observe(key, t)
    assert p.interval(key) == pytest.approx(15.0)  # 10, then 0.5*20 + 0.5*10
    assert p.reuse_rate(c(b"a", last=30.0), now=35.0) == pytest.approx(1 / 15)
    assert p.reuse_rate(c(b"a", last=30.0), now=60.0) == pytest.approx(1 / 30)  # overdue: decays
    # no interval yet: prior / (1 + hits)
    assert p.reuse_rate(c(b"b", last=0.0, hits=3), now=1.0) == pytest.approx(1 / 15)
    p.forget(key)
    assert p.interval(key) is None


def test_bounded_memory():
    p = EWMAReusePredictor(max_tracked=2)
    for i, t in enumerate((1.0, 2.0, 3.0)):
        p.observe(bytes([i]) * 16, t)
    assert len(p) == 2 and p.interval(b"\x00" * 16) is None


def test_cost_aware_uses_observed_history():
    p = EWMAReusePredictor(alpha=1.0, prior_interval_s=60.0)
    policy = CostAwarePolicy(PolicyOptions(cost_model=CostModel(1.0), predictor=p))
    for t in (0.0, 1.0, 2.0):
        policy.observe(b"h" * 16, t)  # reused every second
    assert p.interval(b"h" * 16) == 1.0
    assert p.reuse_rate(c(b"h", last=2.0), now=2.5) == pytest.approx(1.0)
