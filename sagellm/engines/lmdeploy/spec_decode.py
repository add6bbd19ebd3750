"""Speculative decoding with a vanilla draft model, plugged into LMDeploy 0.11's ``spec_decode`` package.

LMDeploy 0.11 ships the machinery -- the ``ar_spec`` strategies (scheduler slots for the draft
tokens, multi-token verification), ``SpecModelAgent`` (the draft's own KV cache, indexed by the
target's block table; greedy rejection sampling) -- but only proposers that read the target's
hidden states (``eagle``, ``eagle3``, ``deepseek_mtp``). This module adds ``draft_model``: any
small causal LM with the target's vocabulary, registered into ``SPEC_PROPOSERS``.

How the draft sees the sequence: ``SpecModelAgent`` feeds the draft the target's step inputs
shifted left by one token (the slot of the target's input ``p`` holds token ``p + 1``, the last one
the token just verified), at the target's positions. A vanilla LM therefore reads every token one
position early and never sees the first prompt token; with rotary position embeddings only
relative positions matter, so this costs acceptance only through the missing first token, never
correctness (every draft is verified by the target).

Needs the patched LMDeploy (patch 0001: ``SpecModelAgent.warmup`` and the draft forward use the
engine's device instead of ``'cuda'``) and a target whose
LMDeploy config builder sets the ``ar_spec`` paradigm when a speculative method is given: in 0.11
that is Llama-architecture targets (:data:`SPEC_TARGET_ARCHITECTURES`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sagellm.accel.spec_decode import AcceptanceStats, SpecDecodeProfile, check_draft_compatible, decode_round_loops

METHOD = "draft_model"
#: Targets LMDeploy 0.11 switches to the ``ar_spec`` paradigm (``configurations/llama.py``).
SPEC_TARGET_ARCHITECTURES: tuple[str, ...] = ("LlamaForCausalLM",)
#: Draft architectures whose LMDeploy config builder renames them to ``<Method><arch>`` for a draft:
#: they get a module-map alias back to the plain model class.
_RENAMED_DRAFT_ARCHITECTURES: tuple[str, ...] = ("LlamaForCausalLM",)

_installed = False


def draft_architecture_alias(architecture: str, method: str = METHOD) -> str:
    """The name LMDeploy's Llama config builder gives a draft model's architecture."""
    return method.capitalize() + architecture


def _proposer_class():
    from lmdeploy.pytorch.model_inputs import step_ctx_manager
    from lmdeploy.pytorch.spec_decode.proposers.base import BaseSpecProposer

    class DraftModelProposer(BaseSpecProposer):
        """Proposes the draft model's greedy tokens; records how many the target kept."""

        def __init__(self, specdecode_config, device=None):
            super().__init__(specdecode_config, device=device)
            self.stats = AcceptanceStats(specdecode_config.num_speculative_tokens)

        def build_model(self, empty_init: bool, target_model=None, model_format=None, build_model_ctx=None):
            super().build_model(empty_init, target_model=target_model, model_format=model_format,
                                build_model_ctx=build_model_ctx)
            if target_model is not None:
                target_vocab = target_model.get_input_embeddings().weight.size(0)
                draft_vocab = self.model.get_input_embeddings().weight.size(0)
                if target_vocab != draft_vocab:
                    raise ValueError(
                        f"draft_model: the draft's vocabulary has {draft_vocab} tokens, the target's {target_vocab}; "
                        "a draft model must share the target's tokenizer"
                    )

        @torch.inference_mode()
        def _forward(self, model_inputs, cache_engine=None):
            """One draft forward over the engine's inputs (no CUDA streams: runs on whatever device holds them)."""
            model = self.model
            kv_caches = None if cache_engine is None else cache_engine.gpu_cache
            with step_ctx_manager(model.ctx_mgr):
                context = model.ctx_mgr.build_context(inputs=model_inputs,
                                                      model_config=self.specdecode_config.model_config,
                                                      kv_caches=kv_caches)
                with model.ctx_mgr.context(context):
                    model_metas = model.update_model_metas(past_key_values=kv_caches, context=context)
                    hidden_states = model(**model.prepare_inputs_for_generation(past_key_values=kv_caches,
                                                                               context=context))
            return dict(hidden_states=hidden_states, model_metas=model_metas)

        def get_outputs(self, model_outputs, model_inputs, extra_inputs=None):
            """(greedy draft ids ``[batch, 1]``, model metas, hidden states of the rows that predicted them)."""
            hidden_states = model_outputs["hidden_states"]
            if extra_inputs is not None and extra_inputs.last_token_indices is not None:
                if not model_inputs.is_decoding and model_inputs.seq_length.numel() == 1:
                    hidden_states = hidden_states[:, -1:]  # one prompt, possibly the last chunk of a long one
                else:
                    hidden_states = hidden_states[:, extra_inputs.last_token_indices]
            if extra_inputs is not None and model_inputs.is_decoding and extra_inputs.num_rejected_tokens is not None:
                rejected = extra_inputs.num_rejected_tokens.tolist()
                self.stats.record(self.num_speculative_tokens - r for r in rejected)
            logits = self.get_logits(hidden_states)[0]
            return logits.argmax(dim=-1, keepdim=True), model_outputs["model_metas"], hidden_states

    DraftModelProposer.__name__ = DraftModelProposer.__qualname__ = "DraftModelProposer"
    return DraftModelProposer


def install_spec_decode() -> None:
    """Register the ``draft_model`` proposer and its module-map aliases with LMDeploy (idempotent)."""
    global _installed
    if _installed:
        return
    from lmdeploy.pytorch.models.module_map import CUSTOM_MODULE_MAP, MODULE_MAP
    from lmdeploy.pytorch.spec_decode.proposers.base import SPEC_PROPOSERS

    if METHOD not in SPEC_PROPOSERS.module_dict:
        SPEC_PROPOSERS.register_module(name=METHOD, module=_proposer_class())
    for architecture in _RENAMED_DRAFT_ARCHITECTURES:
        CUSTOM_MODULE_MAP.setdefault(draft_architecture_alias(architecture), MODULE_MAP[architecture])
    _installed = True


def _read_config(model: str, role: str) -> dict:
    path = Path(model) / "config.json"
    if not path.is_file():
        raise ValueError(
            f"speculative decoding: the {role} {model!r} has no config.json (a local checkpoint is needed)"
        )
    return json.loads(path.read_text())


def check_pair(profile: SpecDecodeProfile, target_model: str) -> None:
    """Raise ``ValueError`` when ``profile``'s draft cannot speculate for ``target_model`` (reads the
    checkpoints' config.json only: no LMDeploy import, so callers can check before any engine starts)."""
    target = _read_config(target_model, "target")
    architecture = (target.get("architectures") or ["?"])[0]
    if architecture not in SPEC_TARGET_ARCHITECTURES:
        raise ValueError(
            f"speculative decoding: target architecture {architecture!r} is not supported by LMDeploy 0.11's "
            f"speculative paradigm; accepted: {', '.join(SPEC_TARGET_ARCHITECTURES)}"
        )
    check_draft_compatible(target, _read_config(profile.draft_model, "draft"))


def speculative_config(profile: SpecDecodeProfile, target_model: str):
    """LMDeploy's ``SpeculativeConfig`` for ``profile``, after checking the pair can work.

    Raises:
        ValueError: the target's architecture has no speculative paradigm in LMDeploy 0.11, or the
            draft does not share the target's vocabulary.
    """
    from lmdeploy.messages import SpeculativeConfig

    if profile.method == METHOD:
        check_pair(profile, target_model)
        install_spec_decode()
    return SpeculativeConfig(method=profile.method, model=profile.draft_model or "",
                             num_speculative_tokens=profile.num_speculative_tokens)


def engine_overrides(profile: SpecDecodeProfile, device_type: str) -> dict:
    """``PytorchEngineConfig`` fields speculative decoding needs on ``device_type`` (see ``decode_round_loops``)."""
    from sagellm.engines.lmdeploy.scheduling import SYNCHRONOUS_DEVICES

    return {"prefill_interval": decode_round_loops(profile.num_speculative_tokens, device_type in SYNCHRONOUS_DEVICES)}


def acceptance_stats(engine) -> AcceptanceStats | None:
    """The ``draft_model`` proposer's statistics of an in-process engine (uni executor); None otherwise."""
    agent = getattr(getattr(engine, "executor", None), "model_agent", None)
    proposer = getattr(getattr(agent, "spec_agent", None), "proposer", None)
    return getattr(proposer, "stats", None)
