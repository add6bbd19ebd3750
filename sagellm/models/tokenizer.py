"""The embedded tokenizer: byte-level BPE trained locally on the synthetic corpus.

Nothing is downloaded: :func:`train_tokenizer` draws text from :mod:`sagellm.models.corpus`
with a seed and trains a byte-level BPE with the ``tokenizers`` library. Same
``(vocab_size, seed)`` → the same ``tokenizer.json``, byte for byte.

Token ids 0-4 are the special tokens (:data:`SPECIAL_TOKENS`), then the 256 byte symbols,
then the merges. Encoding prepends ``<|begin_of_text|>`` (Llama-3 style post-processor);
``decode(encode(text), skip_special_tokens=True) == text`` for any text, because byte-level
BPE needs no normalization and nothing is cleaned up on decode.

The chat template is ChatML (:data:`CHAT_TEMPLATE`)::

    <|im_start|>system
    You are terse.<|im_end|>
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant

and is stored in ``tokenizer_config.json`` (not a separate ``.jinja`` file), so LMDeploy's
``hf`` chat template and every transformers 4.x release read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sagellm.models.corpus import iter_corpus

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "MAX_VOCAB_SIZE",
    "MIN_VOCAB_SIZE",
    "SPECIAL_TOKENS",
    "SpecialTokens",
    "build_tokenizer",
    "save_tokenizer",
    "train_bpe",
]


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens, in id order (ids 0..4)."""

    bos: str = "<|begin_of_text|>"
    eos: str = "<|end_of_text|>"
    im_start: str = "<|im_start|>"
    im_end: str = "<|im_end|>"
    pad: str = "<|pad|>"

    def in_id_order(self) -> list[str]:
        return [self.bos, self.eos, self.im_start, self.im_end, self.pad]


SPECIAL_TOKENS = SpecialTokens()

# 256 byte symbols + the special tokens: a vocabulary this size has no merges at all.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS.in_id_order())

# The synthetic lexicon runs out of merges a little under 12k tokens (with 1 document per token).
MAX_VOCAB_SIZE = 10_000

# Corpus documents per requested token (about 480 characters each).
_DOCS_PER_TOKEN = 1.0
_MIN_DOCS = 400

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def _validate(vocab_size: int, seed: int) -> None:
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be an int in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] (the lower bound is 256 bytes + "
            f"special tokens, the upper what the synthetic corpus supports), got {vocab_size!r}"
        )
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def train_bpe(vocab_size: int = 4096, seed: int = 0) -> Tokenizer:
    """Train the raw ``tokenizers.Tokenizer`` (byte-level BPE) on ``seed``'s corpus.

    Raises:
        ValueError: bad arguments (``vocab_size`` outside [MIN_VOCAB_SIZE, MAX_VOCAB_SIZE]).
    """
    _validate(vocab_size, seed)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = SPECIAL_TOKENS.in_id_order()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    num_documents = max(_MIN_DOCS, int(vocab_size * _DOCS_PER_TOKEN))
    tokenizer.train_from_iterator(iter_corpus(num_documents, seed), trainer=trainer, length=num_documents)
    got = tokenizer.get_vocab_size(with_added_tokens=True)
    if got != vocab_size:
        raise ValueError(
            f"the synthetic corpus supplied only {got} tokens, fewer than vocab_size={vocab_size}; "
            "ask for a smaller vocabulary"
        )
    bos = SPECIAL_TOKENS.bos
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tokenizer.token_to_id(bos))],
        ),
    ])
    return tokenizer


def build_tokenizer(vocab_size: int = 4096, seed: int = 0, *, model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """Train (see :func:`train_bpe`) and wrap as ``transformers.PreTrainedTokenizerFast``.

    bos/eos/pad are set, ``<|im_start|>``/``<|im_end|>`` are additional special tokens,
    the ChatML :data:`CHAT_TEMPLATE` is attached, and decoding does not clean up spaces.
    """
    if not isinstance(model_max_length, int) or model_max_length < 1:
        raise ValueError(f"model_max_length must be a positive int, got {model_max_length!r}")
    from transformers import PreTrainedTokenizerFast

    s = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(vocab_size, seed),
        bos_token=s.bos,
        eos_token=s.eos,
        pad_token=s.pad,
        additional_special_tokens=[s.im_start, s.im_end],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template) and
    ``special_tokens_map.json`` into directory ``path`` (created if missing)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path), save_jinja_files=False)
    return path
