"""Speculative-decoding settings and acceptance statistics (pure)."""

from __future__ import annotations

import pytest

from sagellm.accel.spec_decode import AcceptanceStats, SpecDecodeProfile, check_draft_compatible


def test_profile_validation():
    assert SpecDecodeProfile(draft_model="/m/draft").num_speculative_tokens == 3
    with pytest.raises(ValueError, match="method: got 'medusa'; accepted: one of 'draft_model', 'eagle'"):
        SpecDecodeProfile(method="medusa", draft_model="/m")
    with pytest.raises(ValueError, match="needs the path of a draft checkpoint"):
        SpecDecodeProfile()
    with pytest.raises(ValueError, match="num_speculative_tokens: got 0"):
        SpecDecodeProfile(draft_model="/m", num_speculative_tokens=0)
    with pytest.raises(ValueError, match=r"accepted: 1 \.\. 16"):
        SpecDecodeProfile(draft_model="/m", num_speculative_tokens=17)
    assert SpecDecodeProfile(method="eagle", num_speculative_tokens=2).draft_model is None


def test_acceptance_stats():
    stats = AcceptanceStats(3)
    stats.record([3, 0, 1])
    stats.record([2])
    assert (stats.steps, stats.accepted, stats.proposed) == (4, 6, 12)
    assert stats.acceptance_rate == 0.5
    assert stats.tokens_per_step == 2.5
    assert stats.accepted_at == [3, 2, 1]
    assert stats.to_dict()["acceptance_by_position"] == [0.75, 0.5, 0.25]
    with pytest.raises(ValueError, match="4 accepted of 3 proposed"):
        stats.record([4])
    stats.reset()
    assert stats.to_dict() == {"num_speculative_tokens": 3, "steps": 0, "proposed": 0, "accepted": 0,
                               "acceptance_rate": 0.0, "tokens_per_step": 0.0, "acceptance_by_position": [0.0] * 3}


def test_draft_must_share_the_vocabulary():
    target = {"vocab_size": 8192, "bos_token_id": 1, "eos_token_id": 2}
    check_draft_compatible(target, dict(target, hidden_size=64))
    with pytest.raises(ValueError, match="vocab_size: target 8192, draft 4096"):
        check_draft_compatible(target, dict(target, vocab_size=4096))


@pytest.mark.parametrize("tokens, synchronous, loops", [
    (4, True, 4), (2, True, 6), (1, True, 8), (15, True, 2), (16, True, 2), (4, False, 16), (1, False, 16),
])
def test_decode_round_loops_cover_about_16_tokens_on_synchronous_devices(tokens, synchronous, loops):
    from sagellm.accel.spec_decode import decode_round_loops

    assert decode_round_loops(tokens, synchronous) == loops
