"""cpu device: settings, thread policy, and the per-engine dense decode history registry."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest
import torch

from sagellm.accel.kernels.cpu import DensePlan, pack_batch
from sagellm.core.config import load_config
from sagellm.engines.lmdeploy.cpu import step_state
from sagellm.engines.lmdeploy.cpu.config import CpuDeviceConfig
from sagellm.engines.lmdeploy.cpu.threads import BusyElsewhere, ThreadPolicy, flop_per_token


def test_config_from_environment():
    env = {"SAGELLM_CPU_THREADS": "3", "SAGELLM_CPU_DENSE_KV_MIB": "0"}
    config = load_config(CpuDeviceConfig, env=env)
    assert (config.cpu_threads, config.cpu_dense_kv_mib) == (3, 0)
    assert load_config(CpuDeviceConfig, env={}) == CpuDeviceConfig()


@pytest.mark.parametrize("kwargs, message", [
    ({"cpu_threads": 0}, "cpu_threads must be None"),
    ({"cpu_gflop_per_thread": 0.0}, "cpu_gflop_per_thread must be > 0"),
    ({"cpu_dense_kv_mib": -1}, "cpu_dense_kv_mib must be >= 0"),
    ({"cpu_weight_mib_per_thread": -1.0}, "cpu_weight_mib_per_thread must be >= 0"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CpuDeviceConfig(**kwargs)


def test_flop_per_token_counts_projections_and_gated_mlp():
    # hidden 256, 4 layers, mlp 688, 4 heads / 2 kv heads of 64: q,o = 256x256, k,v = 256x128, mlp 3 x 256x688
    assert flop_per_token(256, 4, 688, 4, 2, 64) == 2 * 4 * (2 * 65536 + 2 * 32768 + 3 * 256 * 688)


def test_threads_grow_with_work_up_to_the_cores():
    policy = ThreadPolicy(max_threads=4, gflop_per_thread=1.0, flop_per_token=5e6)
    assert [policy.threads_for(n) for n in (1, 32, 199, 200, 400, 650, 10_000)] == [1, 1, 1, 1, 2, 3, 4]
    assert ThreadPolicy(max_threads=4, fixed=2, flop_per_token=5e6).threads_for(10_000) == 2


def test_weights_read_by_every_forward_earn_threads_too():
    mib = 1 << 20
    policy = ThreadPolicy(max_threads=4, gflop_per_thread=1.0, flop_per_token=5e6, weight_bytes=150 * mib,
                          weight_mib_per_thread=64.0)
    assert [policy.threads_for(n) for n in (1, 399, 600, 10_000)] == [2, 2, 3, 4]  # 150 MiB: 2 threads at least
    small = ThreadPolicy(max_threads=4, gflop_per_thread=1.0, flop_per_token=5e6, weight_bytes=16 * mib,
                         weight_mib_per_thread=64.0)
    assert small.threads_for(1) == 1
    off = ThreadPolicy(max_threads=4, gflop_per_thread=1.0, flop_per_token=5e6, weight_bytes=150 * mib)
    assert off.threads_for(1) == 1  # weight_mib_per_thread 0: weights earn nothing
    busy = ThreadPolicy(max_threads=2, flop_per_token=5e6, weight_bytes=150 * mib, weight_mib_per_thread=64.0)
    assert busy.threads_for(1, lambda: 0.9) == 1  # the other core is taken


def test_thread_policy_counts_the_model_weights_in_its_dtype(monkeypatch):
    monkeypatch.setattr(step_state, "_policies", {})
    hf = SimpleNamespace(intermediate_size=688, vocab_size=4096)
    config = SimpleNamespace(hf_config=hf, hidden_size=256, num_layers=4, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=64, vocab_size=4096, dtype=torch.bfloat16)
    policy = step_state.thread_policy(config)
    params = 4 * (2 * 65536 + 2 * 32768 + 3 * 256 * 688) + 256 * 4096
    assert policy.weight_bytes == 2 * params
    assert policy.weight_mib_per_thread == CpuDeviceConfig().cpu_weight_mib_per_thread == 64.0
    config.dtype = torch.float32
    assert step_state.thread_policy(config).weight_bytes == 4 * params  # a policy per dtype


def _step_context(kv_caches, kv_seqlens, block_offsets, quant_policy=0):
    return SimpleNamespace(kv_caches=kv_caches, kv_seqlens=kv_seqlens, block_offsets=block_offsets,
                           kv_quant_policy=quant_policy, model_config=SimpleNamespace(dtype=torch.float32))


def _caches(layers=2):
    return [(torch.zeros(8, 4, 2, 8), torch.zeros(8, 4, 2, 8)) for _ in range(layers)]


def test_one_dense_history_per_engine_cache_and_dropped_with_it(monkeypatch):
    monkeypatch.setattr(step_state, "_dense_by_cache", {})
    caches_a, caches_b = _caches(), _caches()
    dense_a = step_state.dense_history(caches_a)
    assert step_state.dense_history(caches_a) is dense_a
    assert step_state.dense_history(caches_b) is not dense_a
    del caches_b
    gc.collect()
    step_state.dense_history(caches_a)
    assert len(step_state._dense_by_cache) == 1


def test_plan_step_decodes_densely_unless_quantized(monkeypatch):
    monkeypatch.setattr(step_state, "_dense_by_cache", {})
    caches = _caches()
    table = torch.tensor([[1, 2], [3, 4]])
    kv = torch.tensor([3, 5])
    packed = pack_batch(torch.ones(2, dtype=torch.long), kv, torch.arange(2))
    dense, plan = step_state.plan_step(_step_context(caches, kv, table), packed)
    assert plan is DensePlan.REBUILD and dense is step_state.dense_history(caches)
    assert step_state.plan_step(_step_context(caches, kv, table, quant_policy=8), packed) == (None, DensePlan.OFF)


@pytest.mark.parametrize("packed", [True, False])
def test_linear_layers_take_the_packed_builder_unless_turned_off(monkeypatch, packed):
    from lmdeploy.pytorch.backends.base import OpType
    from lmdeploy.pytorch.backends.default.linear import DefaultLinearBuilder

    from sagellm.engines.lmdeploy.cpu import op_backend
    from sagellm.engines.lmdeploy.cpu.linear import CpuPackedLinearBuilder

    config = load_config(CpuDeviceConfig, env={"SAGELLM_CPU_PACKED_LINEAR": "1" if packed else "0",
                                                "SAGELLM_CPU_PACKED_LINEAR_MEASURE": "0"})
    monkeypatch.setattr(op_backend, "cpu_device_config", lambda: config)
    monkeypatch.setattr("sagellm.engines.lmdeploy.cpu.linear.cpu_device_config", lambda: config)
    builder = op_backend.CpuOpsBackend.get_layer_impl_builder(OpType.Linear)
    assert builder is (CpuPackedLinearBuilder if packed else DefaultLinearBuilder)
    if packed:
        impl = builder.build(32, 48, bias=False)
        weight = torch.randn(48, 32)
        x = torch.randn(2, 32)
        assert impl.update_weights(weight, None) == (weight, None)
        with torch.inference_mode():
            torch.testing.assert_close(impl.forward(x, weight), torch.nn.functional.linear(x, weight),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("env", "packs_two_rows"), [({}, False), ({"SAGELLM_CPU_PACKED_LINEAR_MIN_ROWS": "2"}, True)])
def test_packed_linear_layers_leave_inputs_of_fewer_rows_than_configured_to_f_linear(monkeypatch, env, packs_two_rows):
    from lmdeploy.pytorch.backends.base import OpType

    from sagellm.accel.kernels.cpu.linear import packed_linear_dtypes
    from sagellm.engines.lmdeploy.cpu import op_backend

    if torch.float32 not in packed_linear_dtypes():
        pytest.skip("oneDNN packed linear is not available on this CPU build")
    config = load_config(CpuDeviceConfig, env={**env, "SAGELLM_CPU_PACKED_LINEAR_MEASURE": "0"})
    monkeypatch.setattr(op_backend, "cpu_device_config", lambda: config)
    monkeypatch.setattr("sagellm.engines.lmdeploy.cpu.linear.cpu_device_config", lambda: config)
    impl = op_backend.CpuOpsBackend.get_layer_impl_builder(OpType.Linear).build(32, 48, bias=False)
    weight = torch.randn(48, 32)
    with torch.inference_mode():
        impl.forward(torch.randn(2, 32), weight)
    assert impl.packed.is_packed is packs_two_rows


@pytest.mark.parametrize("measure", [True, False])
def test_packed_linear_layers_report_to_the_calibration_unless_measuring_is_off(monkeypatch, measure):
    from sagellm.accel.kernels.cpu.linear_choice import LinearCalibration
    from sagellm.engines.lmdeploy.cpu import linear

    config = load_config(CpuDeviceConfig, env={"SAGELLM_CPU_PACKED_LINEAR_MEASURE": "1" if measure else "0"})
    calibration = LinearCalibration()
    monkeypatch.setattr(linear, "cpu_device_config", lambda: config)
    monkeypatch.setattr(linear, "linear_calibration", lambda: calibration)
    impl = linear.CpuPackedLinearBuilder.build(32, 48, bias=False)
    assert impl.packed._calibration is (calibration if measure else None)


def test_a_forward_decides_the_linears_the_previous_forward_ran_on_its_threads(monkeypatch):
    from sagellm.engines.lmdeploy.cpu.threads import ThreadPolicy

    class RecordingCalibration:
        pending = 0
        decided_with = None

        def decide(self, threads_for, key):
            self.decided_with = threads_for
            self.key = key

    calibration = RecordingCalibration()
    monkeypatch.setattr(step_state, "_linear_calibration", calibration)
    policy = ThreadPolicy(max_threads=2, fixed=2)
    step_state.choose_linears(policy)
    assert calibration.decided_with is None  # nothing pending: nothing measured
    calibration.pending = 3
    step_state.choose_linears(policy)
    assert calibration.decided_with(4) == 2 and calibration.key is policy


def test_a_negative_packed_linear_min_rows_is_rejected_with_its_name():
    with pytest.raises(ValueError, match="cpu_packed_linear_min_rows must be >= 0"):
        load_config(CpuDeviceConfig, env={"SAGELLM_CPU_PACKED_LINEAR_MIN_ROWS": "-1"})


def test_decode_steps_take_the_native_kernel_unless_quantized_prefill_or_off(monkeypatch):
    sentinel = object()
    monkeypatch.setattr(step_state, "native_kernels", lambda: sentinel)
    monkeypatch.setattr(step_state, "cpu_device_config", lambda: CpuDeviceConfig())
    caches = _caches()
    table = torch.tensor([[1, 2], [3, 4]])
    kv = torch.tensor([3, 5])
    decode = pack_batch(torch.ones(2, dtype=torch.long), kv, torch.arange(2))
    native = step_state.native_decode(_step_context(caches, kv, table), decode)
    assert native.kernels is sentinel
    assert native.block_table.dtype == torch.int32 and native.block_table.tolist() == [[1, 2], [3, 4]]
    assert native.kv_seqlens.dtype == torch.int32 and native.kv_seqlens.tolist() == [3, 5]
    # the new tokens (positions 2 and 4) go to block 1 slot 2 and block 4 slot 0 of 4-slot blocks
    assert native.token_slots.dtype == torch.int64 and native.token_slots.tolist() == [6, 16]
    with pytest.raises(ValueError, match="needs 2 blocks, the block table has 1 columns"):  # checked once per step
        step_state.native_decode(_step_context(caches, kv, table[:, :1]),
                                 pack_batch(torch.ones(2, dtype=torch.long), kv, torch.arange(2)))
    assert step_state.native_decode(_step_context(caches, kv, table, quant_policy=8), decode) is None
    prefill = pack_batch(torch.tensor([2, 1]), kv, torch.tensor([0, 2]))
    assert step_state.native_decode(_step_context(caches, kv, table), prefill) is None
    monkeypatch.setattr(step_state, "cpu_device_config", lambda: CpuDeviceConfig(cpu_native_kernels=False))
    assert step_state.native_decode(_step_context(caches, kv, table), decode) is None
    monkeypatch.setattr(step_state, "cpu_device_config", lambda: CpuDeviceConfig())
    monkeypatch.setattr(step_state, "native_kernels", lambda: None)  # no compiler / failed build
    assert step_state.native_decode(_step_context(caches, kv, table), decode) is None


@pytest.mark.parametrize("native_on, available", [(True, True), (False, True), (True, False)])
def test_norm_and_rotary_take_the_native_builders_when_on_and_built(monkeypatch, native_on, available):
    from lmdeploy.pytorch.backends.base import OpType
    from lmdeploy.pytorch.backends.default.apply_rotary_emb import DefaultApplyRotaryEmbBuilder
    from lmdeploy.pytorch.backends.default.norm import DefaultRMSNormBuilder

    from sagellm.accel.kernels.cpu import native
    from sagellm.engines.lmdeploy.cpu import op_backend
    from sagellm.engines.lmdeploy.cpu.rowwise import CpuApplyRotaryEmbImpl, CpuRMSNormImpl

    if available and native.compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    config = load_config(CpuDeviceConfig, env={"SAGELLM_CPU_NATIVE_KERNELS": "1" if native_on else "0"})
    monkeypatch.setattr(op_backend, "cpu_device_config", lambda: config)
    kernels = native.NativeKernels(native.build()) if available else None
    monkeypatch.setattr(op_backend, "native_kernels", lambda: kernels)
    norm = op_backend.CpuOpsBackend.get_layer_impl_builder(OpType.RMSNorm)
    rotary = op_backend.CpuOpsBackend.get_layer_impl_builder(OpType.ApplyRotaryEmb)
    if not (native_on and available):
        assert (norm, rotary) == (DefaultRMSNormBuilder, DefaultApplyRotaryEmbBuilder)
        return
    norm_impl, rotary_impl = norm.build(8, 1e-5), rotary.build()
    assert isinstance(norm_impl, CpuRMSNormImpl) and isinstance(rotary_impl, CpuApplyRotaryEmbImpl)
    x, weight = torch.randn(3, 8), torch.randn(8)
    want = weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    torch.testing.assert_close(norm_impl.forward(x, weight), want, rtol=2e-6, atol=1e-6)
    half = x.to(torch.bfloat16)  # not a dtype the kernel takes: LMDeploy's default serves it
    torch.testing.assert_close(norm_impl.forward(half, weight.to(torch.bfloat16)).float(), want, rtol=0, atol=5e-2)
    q, k = torch.randn(3, 2, 8), torch.randn(3, 1, 8)
    cos, sin = torch.rand(3, 8), torch.rand(3, 8)
    q_out, k_out = rotary_impl.forward(q, k, cos, sin, inplace=False)
    assert q_out.data_ptr() != q.data_ptr()
    rot = lambda t: torch.cat([-t[..., 4:], t[..., :4]], -1)  # noqa: E731
    assert torch.equal(q_out, q * cos[:, None] + rot(q) * sin[:, None])
    assert torch.equal(k_out, k * cos[:, None] + rot(k) * sin[:, None])


def test_threads_stop_at_the_cores_other_processes_leave_free():
    policy = ThreadPolicy(max_threads=2, gflop_per_thread=0.5, flop_per_token=5e6)
    asked = []

    def busy(value):
        return lambda: asked.append(value) or value

    assert policy.threads_for(400, busy(0.1)) == 2  # the other core is idle
    assert policy.threads_for(400, busy(0.3)) == 1  # 2 - 0.3 + 0.25 < 2
    assert policy.threads_for(400, busy(None)) == 2  # not measured yet
    assert policy.threads_for(99, busy(0.0)) == 1 and asked == [0.1, 0.3, None]  # one thread's work: not asked


class _FakeClock:
    def __init__(self):
        self.wall = 0.0
        self.own = 0.0

    def advance(self, wall, own):
        self.wall += wall
        self.own += own


def _stat(path, busy_ticks, idle_ticks):
    # user nice system idle iowait irq softirq steal, in ticks of 1/100 s
    path.write_text(f"cpu  {busy_ticks} 0 0 {idle_ticks} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")


def test_busy_elsewhere_is_the_machine_busy_time_less_this_process_per_wall_second(tmp_path):
    stat = tmp_path / "stat"
    clock = _FakeClock()
    probe = BusyElsewhere(interval_s=0.1, stat_path=str(stat), clock=lambda: clock.wall,
                          own_cpu_s=lambda: clock.own, ticks_per_s=100)
    _stat(stat, 1000, 5000)
    assert probe() is None  # no interval yet
    clock.advance(wall=0.5, own=0.5)
    _stat(stat, 1080, 5020)  # 0.8 CPU-s busy on the machine, 0.5 of them ours
    assert probe() == pytest.approx(0.6)
    clock.advance(wall=0.05, own=0.05)
    _stat(stat, 2000, 5020)
    assert probe() == pytest.approx(0.6)  # within the interval: the last value
    clock.advance(wall=0.05, own=0.05)
    assert probe() == pytest.approx((9.2 - 0.1) / 0.1)


@pytest.mark.parametrize("content", [None, "", "intr 1 2 3\n", "cpu  x y z w\n"])
def test_busy_elsewhere_is_unknown_without_a_readable_proc_stat(tmp_path, content):
    stat = tmp_path / "stat"
    if content is not None:
        stat.write_text(content)
    probe = BusyElsewhere(stat_path=str(stat))
    assert probe() is None and probe() is None
