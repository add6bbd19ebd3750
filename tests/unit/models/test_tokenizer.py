from __future__ import annotations

import json

import pytest

from sagellm.models.corpus import generate_corpus
from sagellm.models.tokenizer import (
    CHAT_TEMPLATE,
    MAX_VOCAB_SIZE,
    MIN_VOCAB_SIZE,
    SPECIAL_TOKENS,
    build_tokenizer,
    save_tokenizer,
)

VOCAB = 512
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> directory: two trainings with seed 0 and one with seed 1."""
    root = tmp_path_factory.mktemp("tok")
    return {
        name: save_tokenizer(build_tokenizer(VOCAB, seed), root / name)
        for name, seed in (("a", 0), ("b", 0), ("other", 1))
    }


@pytest.fixture(scope="module")
def tok(saved):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(saved["a"])


def test_same_seed_gives_identical_files(saved) -> None:
    for name in FILES:
        assert (saved["a"] / name).read_bytes() == (saved["b"] / name).read_bytes(), name


def test_different_seed_gives_different_vocab(saved) -> None:
    assert (saved["a"] / "tokenizer.json").read_bytes() != (saved["other"] / "tokenizer.json").read_bytes()


def test_loads_with_auto_tokenizer_with_exact_vocab_and_specials(tok) -> None:
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == VOCAB
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == SPECIAL_TOKENS.in_id_order()
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 4)
    assert tok.model_input_names == ["input_ids", "attention_mask"]


def test_config_holds_chat_template_and_no_space_cleanup(saved) -> None:
    config = json.loads((saved["a"] / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE
    assert config["clean_up_tokenization_spaces"] is False
    assert not list(saved["a"].glob("*.jinja"))


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "  leading and trailing spaces  ",
        "tabs\tand\nnewlines\n\n  indented:\n    return x + 1",
        "punctuation ... ?! ;: 'quotes' \"double\" (parens) [1, 2, 3] {a: b} ~`@#$%^&*_-+=|\\/<>",
        "numbers 0 12 345 6789 3.14159 -42 1e10",
        "x ,y . z ' s",
    ],
)
def test_round_trip_ascii(tok, text) -> None:
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_round_trip_corpus_and_non_ascii(tok) -> None:
    for text in generate_corpus(20, seed=9) + ["café ünïcödé 漢字 🙂"]:
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


def test_special_tokens_are_atomic(tok) -> None:
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert ids[0] == 2 and ids[-1] == 3


def test_chat_template_exact_string(tok) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}]
    expected = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    assert tok.apply_chat_template(messages, tokenize=False) == expected
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        expected + "<|im_start|>assistant\n"
    )
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
    assert tok.apply_chat_template(parts, tokenize=False) == "<|im_start|>user\nHi there<|im_end|>\n"


@pytest.mark.parametrize("bad", [MIN_VOCAB_SIZE - 1, 0, MAX_VOCAB_SIZE + 1, "512", True])
def test_bad_vocab_size_raises(bad) -> None:
    with pytest.raises(ValueError, match=r"vocab_size must be an int in \[261, 10000\]"):
        build_tokenizer(bad)
