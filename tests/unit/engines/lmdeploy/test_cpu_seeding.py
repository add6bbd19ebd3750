import pytest
import torch

from sagellm.engines.lmdeploy.cpu import seeding


@pytest.fixture
def original_seed(monkeypatch):
    # torch's own function: the cpu plugin may have replaced torch.seed earlier in this process
    monkeypatch.setattr(torch, "seed", torch.random.seed)  # undone after the test
    return torch.random.seed


def test_without_accelerators_torch_seed_reseeds_the_cpu_generator_only(monkeypatch, original_seed):
    monkeypatch.setattr(seeding, "available_accelerators", lambda: [])

    def queued(*args, **kwargs):
        raise AssertionError("an accelerator was seeded")

    for name in ("cuda", "xpu", "mtia"):
        monkeypatch.setattr(getattr(torch, name), "manual_seed_all", queued)
    assert seeding.install() is True
    assert torch.seed is seeding.cpu_seed
    first = torch.seed()
    assert first == torch.initial_seed()
    second = torch.seed()
    assert second == torch.initial_seed() and second != first
    assert seeding.install() is True  # once is enough
    assert torch.seed is seeding.cpu_seed


def test_with_an_accelerator_torch_seed_stays(monkeypatch, original_seed):
    monkeypatch.setattr(seeding, "available_accelerators", lambda: ["cuda"])
    assert seeding.install() is False
    assert torch.seed is original_seed


def test_cuda_is_named_exactly_when_torch_can_use_it():
    assert ("cuda" in seeding.available_accelerators()) == torch.cuda.is_available()
