"""The correctness oracle: greedy decoding through transformers on the same float32 checkpoint."""

from __future__ import annotations

import torch


def transformers_greedy(model_dir, prompts_ids: list[list[int]], max_new_tokens: int, *,
                        device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[list[int]]:
    """Greedy continuations from ``transformers.generate(do_sample=False)``, one prompt at a time (no padding)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    model.eval()
    outputs = []
    with torch.inference_mode():
        for ids in prompts_ids:
            input_ids = torch.tensor([ids], device=device)
            generated = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=model.config.eos_token_id,
            )
            outputs.append(generated[0, len(ids):].tolist())
    return outputs
