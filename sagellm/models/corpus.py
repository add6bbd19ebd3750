"""A deterministic, synthetic English-like text corpus (pure Python, nothing downloaded).

The corpus trains the embedded tokenizer and gives tests and benchmarks text to measure
(tokenization round trips, perplexity, prefix-sharing prompts). It mixes five kinds of line:

============  =================================================================
prose         declarative sentences built from a small grammar
question      yes/no and wh- questions
dialogue      ``Name: utterance`` turns between two or three speakers
numbers       counts, prices, dates, times, arithmetic
code          Python-ish statements (assignments, calls, defs, loops)
============  =================================================================

Two seeds are involved. The *lexicon* (word lists plus invented names and words) is fixed:
it does not depend on the caller's seed, so text drawn with any seed uses the same
vocabulary and a tokenizer trained on seed 0 covers text drawn with seed 1. The caller's
*seed* picks which sentences are produced. Same seed, same text, on any platform
(only :class:`random.Random` with an integer seed is used).

Example::

    >>> from sagellm.models.corpus import generate_corpus
    >>> docs = generate_corpus(num_documents=3, seed=0)
    >>> len(docs)
    3
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "CORPUS_VERSION",
    "CorpusGenerator",
    "Lexicon",
    "default_lexicon",
    "generate_corpus",
    "iter_corpus",
    "sample_prompts",
]

# Changing the lexicon or the grammar changes every tokenizer trained on the corpus;
# bump this so cached models built from the old corpus are not reused.
CORPUS_VERSION = 1

_LEXICON_SEED = 20240917

_NOUNS = """
time year people way day man woman child world life hand part place case week company
system program question work government number night point home water room mother area
money story fact month lot right study book eye job word business issue side kind head
house service friend father power hour game line end member law car city community name
president team minute idea kid body information back parent face others level office door
health person art war history party result change morning reason research girl guy moment
air teacher force education foot boy age policy music market sense nation plan college
interest death experience effect class control care field development role effort rate
heart drug show leader light voice wife police mind price report decision son view
relationship town road arm difference value building action model season society tax
director position player record paper space ground form event official matter center couple
site project activity star table need court oil situation cost industry figure street image
phone data picture practice piece land product doctor wall patient worker news test movie
north love support technology step baby computer type attention film tree source organization
hair window evidence population site garden river bridge mountain village island forest
engine server request token cache memory block queue kernel device network message signal
letter window kitchen bottle basket candle ladder lantern harbor valley meadow orchard
""".split()

_VERBS = """
see find give tell ask use feel try leave call keep let begin seem help show hear play run
move like live believe hold bring write provide sit stand lose pay meet include continue set
learn change lead understand watch follow stop create speak read allow add spend grow open
walk win offer remember love consider appear buy wait serve send expect build stay fall cut
reach kill remain suggest raise pass sell require report decide pull carry break explain
hope develop drive return describe paint measure collect repair cook plant visit answer
count store fetch cache schedule compute load save share carry sort merge split print
""".split()

_PAST = {
    "see": "saw", "find": "found", "give": "gave", "tell": "told", "feel": "felt",
    "leave": "left", "keep": "kept", "let": "let", "begin": "began", "hold": "held",
    "bring": "brought", "write": "wrote", "sit": "sat", "stand": "stood", "lose": "lost",
    "pay": "paid", "meet": "met", "set": "set", "lead": "led", "understand": "understood",
    "speak": "spoke", "read": "read", "spend": "spent", "grow": "grew", "buy": "bought",
    "build": "built", "fall": "fell", "cut": "cut", "sell": "sold", "drive": "drove",
    "run": "ran", "win": "won", "hear": "heard", "send": "sent", "put": "put", "split": "split",
    "break": "broke", "think": "thought", "make": "made", "take": "took", "come": "came",
}

_ADJECTIVES = """
good new first last long great little own other old right big high different small large
next early young important few public bad same able quiet bright dark warm cold heavy light
simple quick slow careful strange clear open full empty deep short narrow wide green blue
red yellow white black golden silver wooden ancient modern gentle loud soft sharp busy calm
happy tired curious patient honest clever brave proud lucky hungry rich poor fresh rare
""".split()

_ADVERBS = """
quickly slowly carefully quietly often never always sometimes rarely easily suddenly finally
already almost nearly really simply clearly gently loudly early later soon again together
""".split()

_PREPOSITIONS = "in on under near behind beside across through over into from with without after before during".split()
_DETERMINERS = "the a this that every each one some another my your our their his her".split()
_CONJUNCTIONS = ["and", "but", "so", "because", "while", "although", "when", "after", "before", "until"]
_PRONOUNS = ["I", "you", "we", "they", "she", "he", "it"]
_WH = ["What", "Where", "When", "Why", "How", "Who", "Which"]
_AUX_QUESTION = ["Did", "Does", "Can", "Will", "Should", "Could", "Would"]
_GREETINGS = ["Hello", "Hi", "Good morning", "Good evening", "Thanks", "Sure", "Of course", "Well", "Okay", "Yes", "No"]
_UNITS = ["meters", "kilometers", "grams", "liters", "seconds", "minutes", "hours", "days", "tokens", "bytes", "pages", "steps"]
_MONTHS = "January February March April May June July August September October November December".split()
_WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_PY_FUNCS = ["print", "len", "sum", "max", "min", "sorted", "range", "list", "dict", "str", "int", "abs", "round"]
_OPS = ["+", "-", "*", "//", "%"]

_ONSETS = "b c d f g h j k l m n p r s t v w z br cr dr fr gr pr tr bl cl fl gl pl sl st sh ch th".split()
_VOWELS = "a e i o u a e i o ai ea ou io".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "t", "nd", "rt", "st", "ll", "rn", "x", "k"]
_NAME_ENDINGS = ["", "a", "o", "en", "in", "ia", "on", "el", "ar", "is"]
_PLACE_ENDINGS = ["ton", "ville", "ford", "bury", "field", "port", "wick", "dale", "mouth", "stead"]


@dataclass(frozen=True)
class Lexicon:
    """The fixed vocabulary the grammar draws from (real words plus invented ones)."""

    nouns: tuple[str, ...]
    verbs: tuple[str, ...]
    adjectives: tuple[str, ...]
    adverbs: tuple[str, ...]
    names: tuple[str, ...]
    places: tuple[str, ...]
    identifiers: tuple[str, ...]


def _pseudo_word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return "".join(parts) + rng.choice(_CODAS)


def _unique(words: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(words))


@functools.lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    """The lexicon every :class:`CorpusGenerator` uses (built once from a fixed seed)."""
    rng = random.Random(_LEXICON_SEED)
    invented_nouns = [_pseudo_word(rng, rng.randint(1, 3)) for _ in range(900)]
    invented_verbs = [_pseudo_word(rng, rng.randint(1, 2)) for _ in range(300)]
    names = [
        (_pseudo_word(rng, rng.randint(1, 2)) + rng.choice(_NAME_ENDINGS)).capitalize() for _ in range(500)
    ]
    places = [(_pseudo_word(rng, rng.randint(1, 2)) + rng.choice(_PLACE_ENDINGS)).capitalize() for _ in range(250)]
    base_words = list(_NOUNS) + list(_VERBS)
    identifiers = []
    for _ in range(600):
        style = rng.random()
        head, tail = rng.choice(base_words), rng.choice(base_words + invented_nouns)
        if style < 0.6:
            identifiers.append(f"{head}_{tail}")
        elif style < 0.85:
            identifiers.append(head + tail.capitalize())
        else:
            identifiers.append(f"{head}{rng.randint(0, 99)}")
    return Lexicon(
        nouns=_unique(list(_NOUNS) + invented_nouns),
        verbs=_unique(list(_VERBS) + invented_verbs),
        adjectives=_unique(_ADJECTIVES),
        adverbs=_unique(_ADVERBS),
        names=_unique(names),
        places=_unique(places),
        identifiers=_unique(identifiers),
    )


class _Zipf:
    """Draws from a word list with weight 1/(rank+1): a few words are common, most are rare."""

    def __init__(self, words: Sequence[str]):
        self.words = tuple(words)
        self.cum_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(self.words))))

    def __call__(self, rng: random.Random) -> str:
        return rng.choices(self.words, cum_weights=self.cum_weights)[0]


def _past(verb: str) -> str:
    if verb in _PAST:
        return _PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and len(verb) > 2 and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def _third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and len(verb) > 2 and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _plural(noun: str) -> str:
    if noun == "child":
        return "children"
    if noun in ("man", "woman"):
        return noun[:-2] + "en"
    return _third_person(noun)


class CorpusGenerator:
    """Produces English-like lines from a seed. Same seed, same sequence of calls → same text.

    Args:
        seed: chooses the sentences; the vocabulary (:func:`default_lexicon`) is fixed.
    """

    def __init__(self, seed: int = 0):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.rng = random.Random(seed)
        lex = default_lexicon()
        self.lexicon = lex
        self._noun = _Zipf(lex.nouns)
        self._verb = _Zipf(lex.verbs)
        self._adj = _Zipf(lex.adjectives)
        self._adv = _Zipf(lex.adverbs)
        self._name = _Zipf(lex.names)
        self._place = _Zipf(lex.places)
        self._ident = _Zipf(lex.identifiers)

    # ---- phrases -------------------------------------------------------------------------
    def name(self) -> str:
        """A person's name from the lexicon (Zipf-weighted)."""
        return self._name(self.rng)

    def noun_phrase(self) -> str:
        """``the old bridge``, ``Maren``, ``three quiet rivers``, ``the cache in Tolvikton``."""
        r = self.rng.random()
        if r < 0.15:
            return self._name(self.rng)
        if r < 0.25:
            count = self.rng.choice(["two", "three", "four", "five", "many", "several", "some", str(self.rng.randint(6, 99))])
            return f"{count} {self._adj(self.rng)} {_plural(self._noun(self.rng))}"
        words = [self.rng.choice(_DETERMINERS)]
        if self.rng.random() < 0.5:
            words.append(self._adj(self.rng))
        words.append(self._noun(self.rng))
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        if self.rng.random() < 0.15:
            words += [self.rng.choice(_PREPOSITIONS), self._place(self.rng)]
        return " ".join(words)

    def _clause(self) -> str:
        subject = self.noun_phrase() if self.rng.random() < 0.75 else self.rng.choice(_PRONOUNS)
        verb = self._verb(self.rng)
        tense = self.rng.random()
        if tense < 0.5:
            verb_phrase = _past(verb)
        elif tense < 0.75:
            plural_subject = subject in ("I", "you", "we", "they") or subject.split()[0].isdigit() or subject.split()[0] in (
                "two", "three", "four", "five", "many", "several", "some")
            verb_phrase = verb if plural_subject else _third_person(verb)
        else:
            verb_phrase = f"{self.rng.choice(['will', 'can', 'should', 'might', 'must'])} {verb}"
        parts = [subject, verb_phrase, self.noun_phrase()]
        if self.rng.random() < 0.3:
            parts.append(self._adv(self.rng))
        if self.rng.random() < 0.3:
            parts += [self.rng.choice(_PREPOSITIONS), self.noun_phrase()]
        return " ".join(parts)

    # ---- lines ---------------------------------------------------------------------------
    def sentence(self) -> str:
        """One declarative sentence ending in a period."""
        text = self._clause()
        if self.rng.random() < 0.35:
            text += f", {self.rng.choice(_CONJUNCTIONS)} {self._clause()}"
        return text[0].upper() + text[1:] + "."

    def question(self) -> str:
        """A yes/no or wh- question ending in a question mark."""
        if self.rng.random() < 0.5:
            subject = self.noun_phrase()
            return f"{self.rng.choice(_AUX_QUESTION)} {subject} {self._verb(self.rng)} {self.noun_phrase()}?"
        wh = self.rng.choice(_WH)
        aux = self.rng.choice(["did", "does", "can", "will", "should"])
        return f"{wh} {aux} {self.noun_phrase()} {self._verb(self.rng)}?"

    def numbers_line(self) -> str:
        """Counts, prices, dates, times or arithmetic."""
        rng = self.rng
        kind = rng.randrange(6)
        if kind == 0:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            op = rng.choice(["+", "-", "*"])
            value = {"+": a + b, "-": a - b, "*": a * b}[op]
            return f"{a} {op} {b} = {value}"
        if kind == 1:
            return f"The {self._noun(rng)} costs ${rng.randint(1, 500)}.{rng.randint(0, 99):02d} in {self._place(rng)}."
        if kind == 2:
            return (f"On {rng.choice(_WEEKDAYS)}, {rng.choice(_MONTHS)} {rng.randint(1, 28)}, "
                    f"{rng.randint(1900, 2030)}, {self._name(rng)} {_past(self._verb(rng))} {self.noun_phrase()}.")
        if kind == 3:
            return f"It took {rng.randint(2, 120)} {rng.choice(_UNITS)} to reach {self._place(rng)}."
        if kind == 4:
            return f"At {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} the counter read {rng.randint(0, 10**6)}."
        items = ", ".join(str(rng.randint(0, 99)) for _ in range(rng.randint(3, 8)))
        return f"The list was {items}."

    def code_line(self) -> str:
        """One Python-ish statement (no indentation)."""
        rng = self.rng
        name, other = self._ident(rng), self._ident(rng)
        kind = rng.randrange(7)
        if kind == 0:
            return f"{name} = {other} {rng.choice(_OPS)} {rng.randint(1, 64)}"
        if kind == 1:
            return f"{name} = {rng.choice(_PY_FUNCS)}({other})"
        if kind == 2:
            return f"def {name}({other}, n={rng.randint(0, 16)}):"
        if kind == 3:
            return f"for i in range({rng.randint(1, 100)}):"
        if kind == 4:
            return f"if {name} > {rng.randint(0, 100)}: return {other}"
        if kind == 5:
            return f'{name}["{self._noun(rng)}"] = [{", ".join(str(rng.randint(0, 9)) for _ in range(3))}]'
        return f'print(f"{self._noun(rng)}: {{{name}}}")'

    def code_block(self) -> str:
        """A few lines of a small function, indented with four spaces."""
        rng = self.rng
        fn, arg = self._ident(rng), self._ident(rng)
        body = [f"def {fn}({arg}):", "    total = 0", f"    for item in {arg}:"]
        body.append(f"        total += item {rng.choice(_OPS)} {rng.randint(1, 9)}")
        body.append("    return total")
        return "\n".join(body)

    def dialogue(self, turns: int | None = None) -> str:
        """``Name: utterance`` turns between two or three speakers, one per line."""
        rng = self.rng
        speakers = [self._name(rng) for _ in range(rng.choice([2, 2, 3]))]
        n = turns if turns is not None else rng.randint(2, 6)
        lines = []
        for i in range(n):
            r = rng.random()
            if r < 0.3:
                utterance = f"{rng.choice(_GREETINGS)}, {speakers[(i + 1) % len(speakers)]}. {self.sentence()}"
            elif r < 0.6:
                utterance = self.question()
            else:
                utterance = self.sentence()
            lines.append(f"{speakers[i % len(speakers)]}: {utterance}")
        return "\n".join(lines)

    def paragraph(self) -> str:
        """Two to six sentences, sometimes with a question."""
        parts = []
        for _ in range(self.rng.randint(2, 6)):
            parts.append(self.question() if self.rng.random() < 0.15 else self.sentence())
        return " ".join(parts)

    def document(self) -> str:
        """A short mixed document: paragraphs, dialogue, numbers and code, separated by blank lines."""
        rng = self.rng
        sections = []
        for _ in range(rng.randint(1, 4)):
            r = rng.random()
            if r < 0.45:
                sections.append(self.paragraph())
            elif r < 0.65:
                sections.append(self.dialogue())
            elif r < 0.8:
                sections.append("\n".join(self.numbers_line() for _ in range(rng.randint(1, 4))))
            elif r < 0.93:
                sections.append("\n".join(self.code_line() for _ in range(rng.randint(1, 4))))
            else:
                sections.append(self.code_block())
        return "\n\n".join(sections)


def iter_corpus(num_documents: int, seed: int = 0) -> Iterator[str]:
    """Yield ``num_documents`` documents (see :meth:`CorpusGenerator.document`)."""
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}")
    generator = CorpusGenerator(seed)
    for _ in range(num_documents):
        yield generator.document()


def generate_corpus(num_documents: int = 1000, seed: int = 0) -> list[str]:
    """``num_documents`` documents drawn with ``seed`` (about 400 characters each on average)."""
    return list(iter_corpus(num_documents, seed))


def sample_prompts(n: int, seed: int = 0, *, kind: str = "mixed") -> list[str]:
    """``n`` short prompts for generation checks and benchmarks.

    Args:
        n: how many prompts.
        seed: which prompts (independent of the tokenizer's training seed).
        kind: ``"sentence"``, ``"question"``, ``"dialogue"``, ``"code"`` or ``"mixed"``.
    """
    makers = {
        "sentence": lambda g: g.sentence(),
        "question": lambda g: g.question(),
        "dialogue": lambda g: g.dialogue(turns=2) + f"\n{g.name()}:",
        "code": lambda g: g.code_line(),
    }
    if kind not in makers and kind != "mixed":
        raise ValueError(f"unknown prompt kind {kind!r}; valid: {', '.join([*makers, 'mixed'])}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    generator = CorpusGenerator(seed)
    names = list(makers)
    prompts = []
    for i in range(n):
        maker = makers[kind] if kind != "mixed" else makers[names[i % len(names)]]
        prompts.append(maker(generator))
    return prompts
