from __future__ import annotations

import pytest

from sagellm.models.corpus import CorpusGenerator, default_lexicon, generate_corpus, iter_corpus, sample_prompts


def test_same_seed_same_text_different_seed_different_text() -> None:
    assert generate_corpus(50, seed=3) == generate_corpus(50, seed=3)
    assert generate_corpus(50, seed=3) != generate_corpus(50, seed=4)


def test_prefix_stable_when_asking_for_more_documents() -> None:
    assert generate_corpus(40, seed=1)[:10] == generate_corpus(10, seed=1)


def test_documents_are_ascii_english_like_and_mixed() -> None:
    text = "\n\n".join(generate_corpus(300, seed=0))
    assert text.isascii()
    assert 300 * 200 < len(text) < 300 * 1000
    for marker in (". ", "? ", " = ", "def ", "for i in range(", ": "):
        assert marker in text, marker
    assert any(line.split(":")[0] in default_lexicon().names for line in text.splitlines() if ":" in line)


def test_lexicon_does_not_depend_on_seed() -> None:
    assert CorpusGenerator(0).lexicon is CorpusGenerator(99).lexicon
    lexicon = default_lexicon()
    assert len(lexicon.nouns) > 1000 and len(lexicon.names) > 400


def test_line_kinds_have_their_shape() -> None:
    g = CorpusGenerator(5)
    for _ in range(50):
        sentence = g.sentence()
        assert sentence.endswith(".") and not sentence[0].islower()
        assert g.question().endswith("?")
        turns = g.dialogue(turns=3).split("\n")
        assert len(turns) == 3 and all(": " in turn for turn in turns)
        assert "\n" not in g.code_line()
    left, _, right = next(line for line in (g.numbers_line() for _ in range(200)) if " = " in line).partition(" = ")
    assert eval(left) == int(right)  # arithmetic lines are correct


def test_sample_prompts() -> None:
    prompts = sample_prompts(8, seed=2)
    assert prompts == sample_prompts(8, seed=2) and len(prompts) == 8
    assert prompts[2].endswith(":")  # dialogue prompts end with the next speaker
    assert all(p.endswith("?") for p in sample_prompts(5, seed=0, kind="question"))
    with pytest.raises(ValueError, match="unknown prompt kind 'poem'; valid: sentence"):
        sample_prompts(1, kind="poem")


@pytest.mark.parametrize("bad", [-1, "x", 1.5, True])
def test_bad_seed_or_count_raises(bad) -> None:
    with pytest.raises(ValueError):
        if isinstance(bad, int) and not isinstance(bad, bool):
            list(iter_corpus(bad))
        else:
            CorpusGenerator(bad)
