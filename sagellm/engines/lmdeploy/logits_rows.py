"""Return a prompt's logits as the model computed them, whether it was prefilled alone or in a batch.

With ``output_logits='all'`` (``pipe.get_logits``, ``get_ppl``, reward scoring) the engine returns
the logits of every prompt position and samples the next token from each sequence's last row. To
pick those rows, LMDeploy 0.11's AR strategies (``ar`` and ``ar_spec``) index the logits with the
sequences' last positions, which copies, except for a step of one sequence, where they take
``logits[-1:]``, a view. The sampler then divides the rows it was given by the temperature in
place (``FusedLogitsProcessor``: ``_process_temperature_``), so a prompt prefilled alone came back
with its last row divided by the temperature, and the same prompt prefilled beside others did not.
``get_logits`` samples at LMDeploy's default temperature, 0.8.

sagellm's one-request prefill steps (``sagellm.scheduler_ir.prefill_steps``) make a step of one
sequence common. Measured on the tiny Llama (2-core CPU, fp32): every one of 8 prompts of 32-58
tokens, scored alone, had a last row off by 0.29-0.32 on average against transformers, and every
other row within 1e-6 of it; in a batch of 8, all rows were within 1e-6.

This plugin wraps the strategies' ``slice_outputs``: a row cut out of a step of one sequence is a
copy, as it is for several. Where the step's output already is one row per sequence (a decode
step, or a prefill whose hidden states were cut before the LM head), nothing is copied, as before.
"""

from __future__ import annotations

import functools

from sagellm.engines.lmdeploy.wrap_once import wrap_once

_MARKER = "__sagellm_logits_rows__"

#: LMDeploy 0.11 model-agent strategies whose ``slice_outputs`` returns a view for one sequence.
STRATEGY_CLASSES: tuple[tuple[str, str], ...] = (
    ("lmdeploy.pytorch.strategies.ar.model_agent", "ARModelAgentStrategy"),
    ("lmdeploy.pytorch.strategies.ar_spec.model_agent", "ARSpecModelAgentStrategy"),
)


def _wrap_slice_outputs(slice_outputs):
    @functools.wraps(slice_outputs)
    def slice_outputs_copying(strategy, inputs, seq_length):
        rows = slice_outputs(strategy, inputs, seq_length)
        if len(seq_length) == 1 and rows.size(0) < inputs.size(0):
            # ``inputs[-1:]``, a view into rows the engine also returns: the sampler scales it in place
            return rows.clone()
        return rows

    return slice_outputs_copying


def install_logits_rows() -> None:
    """Plugin entry: wrap each strategy's ``slice_outputs`` once (idempotent)."""
    import importlib

    for module_name, class_name in STRATEGY_CLASSES:
        cls = getattr(importlib.import_module(module_name), class_name)
        wrap_once(cls, "slice_outputs", _MARKER, _wrap_slice_outputs)
