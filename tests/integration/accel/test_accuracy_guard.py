"""The accuracy guard's thresholds: int8 / int4 / fp8_e4m3 / fp8_e5m2 KV vs float KV, 32 prompts x 64 greedy tokens.

Two models, because the numbers mean different things on each:

* a random-weight tiny model has near-tied logits everywhere (perplexity above its vocabulary
  size): any KV perturbation flips argmaxes -- rounding K/V to bf16 alone gave 98.8% teacher-forced
  agreement on it (transformers, 8 prompts x 64 tokens) -- so its thresholds only pin the measured
  values (a regression guard), well below the 99% target;
* the same model trained for 120 steps on the local corpus (perplexity ~180) is where the 99%
  int8 target is checked, and fp8's (coarser than int8's per-token grid: 3 / 2 mantissa bits) are bounded.

Measured on the 2-core dev machine (float32, torch 2.13): see the asserts' comments.
"""

from __future__ import annotations

import pytest

from tests.integration.accel.scripts import load_guard

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def guard():
    return load_guard()


@pytest.fixture(scope="module")
def trained_model(guard, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "tiny-llama-120"
    return guard.fit_on_corpus(str(tiny_model_dir("llama")), str(out), 120, batch=8, seq_len=64)


def _show(result) -> None:
    for r in result.reports.values():
        print(f"\n{r.label}: greedy {r.greedy_agreement:.4f} ({r.identical_sequences}/{r.prompts} identical), "
              f"teacher-forced {r.teacher_forced_agreement:.4f}, ppl {r.reference_perplexity:.2f} -> "
              f"{r.perplexity:.2f} ({r.perplexity_rel_delta:+.3%})")


@pytest.fixture(scope="module")
def trained_kv_result(guard, trained_model):
    result = guard.run_guard(guard.GuardConfig(model=trained_model, prompts=32, new_tokens=64))
    _show(result)
    return result


def test_int8_meets_the_target_on_a_trained_model(trained_kv_result):
    result = trained_kv_result
    int8, int4 = result.reports["int8"], result.reports["int4"]
    assert result.reference_self_agreement == 1.0
    # measured: int8 greedy 1.0000 (32/32 identical), teacher-forced 1.0000, ppl +0.06%.
    # Free-running greedy is all-or-nothing per sequence (one near-tie flip changes the rest), and other
    # briefly trained checkpoints (other step counts / machines) measured 0.956-1.0 while teacher-forced
    # stayed 0.996-1.0: the 99% target is enforced per token, the free-running number with headroom.
    assert int8.teacher_forced_agreement >= 0.99
    assert int8.greedy_agreement >= 0.95
    assert abs(int8.perplexity_rel_delta) <= 0.01
    # measured: int4 greedy 0.868 (19/32 identical), teacher-forced 0.980, ppl -0.5% (reported, loosely bounded)
    assert int4.teacher_forced_agreement >= 0.95
    assert abs(int4.perplexity_rel_delta) <= 0.05


def test_fp8_kv_on_a_trained_model(trained_kv_result):
    """fp8 KV (quant_policy 8 with float8 storage on the cpu device) vs float KV."""
    e4m3, e5m2 = trained_kv_result.reports["fp8_e4m3"], trained_kv_result.reports["fp8_e5m2"]
    # measured: e4m3 greedy 0.9414 (24/32 identical, first divergence at 53.1 of 64 on average),
    # teacher-forced 0.9956, ppl +0.10%; e5m2 greedy 0.8765 (20/32), teacher-forced 0.9888, ppl +0.04%
    # (int8 on the same run: 1.0 / 1.0). Free-running greedy cascades after one near-tie flip, so it is
    # bounded with headroom; the per-token number carries the claim.
    assert e4m3.teacher_forced_agreement >= 0.98
    assert e4m3.greedy_agreement >= 0.85
    assert abs(e4m3.perplexity_rel_delta) <= 0.01
    assert e5m2.teacher_forced_agreement >= 0.97
    assert abs(e5m2.perplexity_rel_delta) <= 0.02
    assert e4m3.teacher_forced_agreement >= e5m2.teacher_forced_agreement
    assert trained_kv_result.reports["int8"].teacher_forced_agreement >= e4m3.teacher_forced_agreement


def test_random_weight_model_regression_thresholds(guard, tiny_model_dir):
    result = guard.run_guard(guard.GuardConfig(model=str(tiny_model_dir("llama")), prompts=32, new_tokens=64))
    _show(result)
    int8, int4 = result.reports["int8"], result.reports["int4"]
    e4m3, e5m2 = result.reports["fp8_e4m3"], result.reports["fp8_e5m2"]
    # measured: int8 greedy 0.269 (first divergence at token 17 on average), teacher-forced 0.946, ppl -0.13%
    assert int8.teacher_forced_agreement >= 0.92
    assert int8.greedy_agreement >= 0.2
    assert abs(int8.perplexity_rel_delta) <= 0.02
    # measured: int4 greedy 0.008, teacher-forced 0.335, ppl -3.3%
    assert int4.teacher_forced_agreement >= 0.25
    assert int8.teacher_forced_agreement > int4.teacher_forced_agreement
    assert abs(int4.perplexity_rel_delta) <= 0.1
    # measured: fp8_e4m3 greedy 0.057, teacher-forced 0.751, ppl +0.13%; fp8_e5m2 greedy 0.024,
    # teacher-forced 0.562, ppl +0.92% -- between int8 and int4, as their rounding steps are
    assert e4m3.teacher_forced_agreement >= 0.7 and abs(e4m3.perplexity_rel_delta) <= 0.02
    assert e5m2.teacher_forced_agreement >= 0.5 and abs(e5m2.perplexity_rel_delta) <= 0.05
    assert int8.teacher_forced_agreement > e4m3.teacher_forced_agreement > e5m2.teacher_forced_agreement
    assert e5m2.teacher_forced_agreement > int4.teacher_forced_agreement


def test_weight_formats_on_a_trained_model(guard, trained_model):
    result = guard.run_guard(guard.GuardConfig(model=trained_model, kv_dtypes=(), weight_formats=("awq-w4", "awq-w8", "w8"),
                                                group_size=16, prompts=32, new_tokens=64))
    _show(result)
    assert set(result.reports) == {"none@float16", "awq-w4", "awq-w8", "w8"}
    control, w4, w8_awq, w8 = (result.reports[k] for k in ("none@float16", "awq-w4", "awq-w8", "w8"))
    assert (w8.engine_dtype, w4.engine_dtype) == ("float32", "float16")
    # measured: float16 control 1.0 teacher-forced; w8 0.9995 (31/32 identical, ppl -0.01%);
    # awq-w8 0.9990 (30/32, +0.00%); awq-w4 0.9771 (19/32, ppl +0.86%)
    assert control.teacher_forced_agreement >= 0.99
    assert w8.teacher_forced_agreement >= 0.99 and abs(w8.perplexity_rel_delta) <= 0.01
    assert w8_awq.teacher_forced_agreement >= 0.99 and abs(w8_awq.perplexity_rel_delta) <= 0.01
    assert w4.teacher_forced_agreement >= 0.95 and abs(w4.perplexity_rel_delta) <= 0.03
    assert w4.teacher_forced_agreement < w8_awq.teacher_forced_agreement
