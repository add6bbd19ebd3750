"""Seeded, locally generated token-id workloads for the in-process benchmarks (``benchmarks/prefix_reuse.py``).

The HTTP runner's text workloads are :mod:`sagellm.bench.workloads`; these drive engines through
their Python APIs with exact token ids. A workload is a list of requests sent one after the other. A request's prompt is a list of
*segments*: literal token ids (``{"tokens": [...]}``) or the output of an earlier request
(``{"output_of": j}``), so that multi-turn chat can put what the engine answered into the next
turn while every engine still receives the same user text and the same token ids. The prompt is
assembled by concatenating token ids (never by re-tokenizing text), so a turn's prompt starts with
exactly the previous turn's prompt and answer: the prefix is shared token for token.

Generators (text from :mod:`sagellm.models.corpus`, tokenized with the model's tokenizer):

* :func:`multi_turn_chat` -- S sessions with a shared system prompt; turn t of a session is the whole
  conversation so far (user turns + the engine's answers) plus a new user message. Sessions are
  interleaved round-robin (s0 t0, s1 t0, ..., s0 t1, ...).
* :func:`shared_document_qa` -- D documents of a few hundred tokens behind a shared system prompt;
  Q questions per document asked interleaved (d0 q0, d1 q0, ..., d0 q1, ...).

Everything is a plain ``dict``/``list`` (JSON-serialisable), and :func:`assemble_prompt` and the
analysis helpers use only the standard library, so the engine workers (including vLLM's venv,
where sagellm is not installed; they put the repository root on ``sys.path``) can import this module.
Only the generators need ``transformers`` and :mod:`sagellm.models`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

__all__ = [
    "assemble_prompt",
    "multi_turn_chat",
    "prefix_block_keys",
    "reuse_distances",
    "shared_document_qa",
    "working_set_tokens",
]


# --------------------------------------------------------------------------- text -> token ids


class _Texts:
    """Token ids of seeded corpus text of an exact length (BOS never included)."""

    def __init__(self, tokenizer, seed: int):
        self.tok = tokenizer
        self.rng = random.Random(seed)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def tokens(self, length: int, kind: str = "mixed") -> list[int]:
        """``length`` token ids of corpus sentences of ``kind`` (the cut may fall mid-sentence)."""
        from sagellm.models.corpus import sample_prompts

        ids: list[int] = []
        while len(ids) < length:
            batch = sample_prompts(8, seed=self.rng.randrange(2**31), kind=kind)
            ids += self.encode(" " + " ".join(batch))
        return ids[:length]


def _load_tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


# --------------------------------------------------------------------------- generators


def multi_turn_chat(
    model: str,
    *,
    sessions: int,
    turns: int,
    system_tokens: int,
    user_tokens: tuple[int, int],
    seed: int,
) -> dict:
    """S sessions x T turns, round-robin; turn t's prompt = BOS + system + (user_k + answer_k + "\\n") for k < t + user_t.

    ``user_k`` is ``"User: <message>\\nAssistant:"`` with a message of a length drawn uniformly from
    ``user_tokens``; ``answer_k`` is the engine's output for that earlier turn (an ``output_of`` segment).
    """
    tok = _load_tokenizer(model)
    texts = _Texts(tok, seed)
    bos = _bos(tok)
    system = texts.encode("System: you are a helpful assistant.") + texts.tokens(system_tokens, "sentence")
    system = system[:system_tokens]
    user_prefix, user_suffix, end_turn = texts.encode("\nUser:"), texts.encode("\nAssistant:"), texts.encode("\n")
    messages = [
        [user_prefix + texts.tokens(texts.rng.randint(*user_tokens), "mixed") + user_suffix for _ in range(turns)]
        for _ in range(sessions)
    ]
    requests: list[dict] = []
    index: dict[tuple[int, int], int] = {}
    for turn in range(turns):
        for session in range(sessions):
            segments: list[dict] = [{"tokens": bos + system}]
            for k in range(turn):
                segments += [
                    {"tokens": messages[session][k]},
                    {"output_of": index[(session, k)]},
                    {"tokens": end_turn},
                ]
            segments.append({"tokens": messages[session][turn]})
            index[(session, turn)] = len(requests)
            requests.append({"id": len(requests), "session": session, "turn": turn, "segments": segments})
    return {
        "name": "multi_turn_chat",
        "params": {"sessions": sessions, "turns": turns, "system_tokens": system_tokens,
                   "user_tokens": list(user_tokens), "seed": seed},
        "order": "round-robin over sessions: s0 t0, s1 t0, ..., s{S-1} t0, s0 t1, ...",
        "requests": requests,
    }


def shared_document_qa(
    model: str,
    *,
    documents: int,
    questions: int,
    system_tokens: int,
    doc_tokens: tuple[int, int],
    question_tokens: tuple[int, int],
    seed: int,
) -> dict:
    """D documents x Q questions, interleaved; prompt = BOS + system + "Document: <doc>" + "\\nQuestion: <q>\\nAnswer:"."""
    tok = _load_tokenizer(model)
    texts = _Texts(tok, seed)
    bos = _bos(tok)
    system = texts.encode("System: answer from the document.") + texts.tokens(system_tokens, "sentence")
    system = system[:system_tokens]
    doc_prefix = texts.encode("\nDocument:")
    docs = [doc_prefix + texts.tokens(texts.rng.randint(*doc_tokens), "sentence") for _ in range(documents)]
    q_prefix, q_suffix = texts.encode("\nQuestion:"), texts.encode("\nAnswer:")
    qs = [
        [q_prefix + texts.tokens(texts.rng.randint(*question_tokens), "question") + q_suffix for _ in range(questions)]
        for _ in range(documents)
    ]
    requests = []
    for q in range(questions):
        for d in range(documents):
            requests.append({"id": len(requests), "document": d, "question": q,
                             "segments": [{"tokens": bos + system + docs[d] + qs[d][q]}]})
    return {
        "name": "shared_document_qa",
        "params": {"documents": documents, "questions": questions, "system_tokens": system_tokens,
                   "doc_tokens": list(doc_tokens), "question_tokens": list(question_tokens), "seed": seed},
        "order": "interleaved: d0 q0, d1 q0, ..., d{D-1} q0, d0 q1, ...",
        "requests": requests,
    }


# --------------------------------------------------------------------------- assembly and analysis


def assemble_prompt(request: dict, outputs: Sequence[Sequence[int] | None]) -> list[int]:
    """The request's prompt token ids, with ``output_of`` segments replaced by earlier outputs."""
    ids: list[int] = []
    for segment in request["segments"]:
        if "tokens" in segment:
            ids += segment["tokens"]
        else:
            out = outputs[segment["output_of"]]
            if out is None:
                raise ValueError(f"request {request['id']} needs the output of request {segment['output_of']} first")
            ids += out
    return ids


def prefix_block_keys(prompt: Sequence[int], block_size: int) -> list[bytes]:
    """Chained keys of the prompt's full blocks (block i's key identifies tokens [0, (i+1)*block_size))."""
    keys, parent = [], b""
    for start in range(0, len(prompt) - len(prompt) % block_size, block_size):
        digest = hashlib.blake2b(parent, digest_size=16)
        digest.update(repr(tuple(prompt[start : start + block_size])).encode())
        parent = digest.digest()
        keys.append(parent)
    return keys


def working_set_tokens(prompts: Sequence[Sequence[int]], block_size: int) -> int:
    """Tokens in the distinct full prefix blocks of all prompts (what a cache would need to hold them all)."""
    distinct: set[bytes] = set()
    for prompt in prompts:
        distinct.update(prefix_block_keys(prompt, block_size))
    return len(distinct) * block_size


def reuse_distances(prompts: Sequence[Sequence[int]], block_size: int, skip_common: bool = True) -> list[int]:
    """For each prompt that reuses a block seen earlier, the tokens of distinct blocks touched in between.

    The distance is measured from the last use of the deepest reused block; blocks shared by *every*
    prompt (the system prompt) are ignored when ``skip_common``. A distance above the device KV budget
    means an LRU device cache of that size has evicted the prefix before it is reused.
    """
    keyed = [prefix_block_keys(p, block_size) for p in prompts]
    common = set.intersection(*(set(k) for k in keyed)) if (skip_common and keyed) else set()
    last_use: dict[bytes, int] = {}
    distances = []
    for i, keys in enumerate(keyed):
        reused = [k for k in keys if k in last_use and k not in common]
        if reused:
            since = last_use[reused[-1]]
            between: set[bytes] = set()
            for j in range(since + 1, i):
                between.update(keyed[j])
            distances.append(len(between - common) * block_size)
        for k in keys:
            last_use[k] = i
    return distances
