"""The ``logits_rows`` plugin: the row cut out of a one-sequence step is a copy."""

from __future__ import annotations

import pytest
import torch
from lmdeploy.pytorch.strategies.ar.model_agent import ARModelAgentStrategy
from lmdeploy.pytorch.strategies.ar_spec.model_agent import ARSpecModelAgentStrategy

from sagellm.engines.lmdeploy import logits_rows


@pytest.fixture(autouse=True)
def installed():
    logits_rows.install_logits_rows()


def _strategy(cls):
    return object.__new__(cls)  # slice_outputs reads nothing from the strategy


@pytest.mark.parametrize("cls", [ARModelAgentStrategy, ARSpecModelAgentStrategy])
def test_one_sequence_prefill_gets_a_copy_of_its_last_row(cls):
    logits = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    rows = _strategy(cls).slice_outputs(logits, torch.tensor([5]))
    rows /= 0.5  # what the sampler's temperature does
    assert rows.tolist() == [[24.0, 26.0, 28.0]]
    assert logits[-1].tolist() == [12.0, 13.0, 14.0]


@pytest.mark.parametrize("cls", [ARModelAgentStrategy, ARSpecModelAgentStrategy])
def test_stock_slice_is_a_view_the_sampler_writes_through(cls):
    logits = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    stock = cls.slice_outputs.__wrapped__
    rows = stock(_strategy(cls), logits, torch.tensor([5]))
    rows /= 0.5
    assert logits[-1].tolist() == [24.0, 26.0, 28.0]


def test_rows_already_one_per_sequence_are_returned_as_they_are():
    strategy = _strategy(ARModelAgentStrategy)
    one = torch.ones(1, 3)
    decode = torch.ones(4, 3)
    # logits of a prefill whose hidden states were cut before the LM head: LMDeploy's view, no copy
    assert strategy.slice_outputs(one, torch.tensor([7])).data_ptr() == one.data_ptr()
    assert strategy.slice_outputs(decode, torch.tensor([1, 1, 1, 1])) is decode


def test_several_sequences_keep_lmdeploys_indexed_copy():
    logits = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    rows = _strategy(ARModelAgentStrategy).slice_outputs(logits, torch.tensor([2, 3]))
    assert rows.tolist() == [[3.0, 4.0, 5.0], [12.0, 13.0, 14.0]]
    assert rows.data_ptr() != logits.data_ptr()


def test_install_is_idempotent():
    wrapped = ARModelAgentStrategy.slice_outputs
    logits_rows.install_logits_rows()
    assert ARModelAgentStrategy.slice_outputs is wrapped
    assert not hasattr(wrapped.__wrapped__, "__wrapped__")
