"""Deliver the text LMDeploy 0.11 holds back at the end of a generation.

``AsyncEngine.generate`` detokenizes incrementally and holds back text that ends in an incomplete
UTF-8 sequence (``'�'``), waiting for the next tokens to complete it. When the generation stops
right there (a byte-fallback token last, common with small or random-weight models, possible with
any model at ``max_tokens``), the held-back text is never sent: the answer loses its tail, and how
much it loses depends on how the engine's outputs were batched into responses, so a streamed and a
non-streamed request for the same greedy generation can differ (measured on the tiny model:
``' plel glal jojiolgleadoust differ zeslozio town'`` vs ``' plel glal jojiolgleadoust'``).

This plugin wraps ``AsyncEngine.generate``: it follows the generated token ids and the text sent
so far, and on the final output prepends what a full decode of those ids has beyond the sent
text -- the same text, trailing ``'�'`` included, that ``tokenizer.decode`` gives for the whole
generation. When the sent text is not a prefix of the full decode (a tokenizer whose decode
depends on context), nothing is added: LMDeploy's answer is kept as is.
"""

from __future__ import annotations

import functools
import inspect
import logging

logger = logging.getLogger("sagellm.text_tail")


def held_back_tail(full_text: str, sent_text: str) -> str:
    """What ``full_text`` has beyond ``sent_text`` ('' when ``sent_text`` is not its prefix)."""
    if len(full_text) <= len(sent_text) or not full_text.startswith(sent_text):
        return ""
    return full_text[len(sent_text):]


def _wrap_generate(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    async def generate(self, *args, **kwargs):
        bound = signature.bind_partial(self, *args, **kwargs)
        gen_config = bound.arguments.get("gen_config")
        skip_special_tokens = getattr(gen_config, "skip_special_tokens", True)
        generated: list[int] = []
        sent: list[str] = []
        async for out in original(self, *args, **kwargs):
            if out.finish_reason is None:
                generated += list(out.token_ids or [])
                sent.append(out.response or "")
            elif out.finish_reason != "error" and generated:
                full_text = self.tokenizer.decode(generated, skip_special_tokens=skip_special_tokens)
                tail = held_back_tail(full_text, "".join(sent))
                if tail:
                    logger.debug("session %s: %d held-back characters sent at the end", bound.arguments.get("session_id"),
                                 len(tail))
                    out.response = tail + (out.response or "")
            yield out

    generate.__sagellm_original__ = original
    return generate


def install_text_tail() -> None:
    """Plugin entry: wrap ``AsyncEngine.generate`` once (idempotent)."""
    from lmdeploy.serve.async_engine import AsyncEngine

    if hasattr(AsyncEngine.generate, "__sagellm_original__"):
        return
    AsyncEngine.generate = _wrap_generate(AsyncEngine.generate)
