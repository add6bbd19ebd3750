"""Seeded, locally generated text workloads for the HTTP runner.

Every workload is a tuple of :class:`RequestSpec` built from :mod:`sagellm.models.corpus` text and
the served model's tokenizer (for lengths); nothing is downloaded and the same seed gives the same
prompts on any machine. Prompts are plain text sent to ``/v1/completions`` (no chat template, so
every server sees the same text and tokenizes it with the same tokenizer).

Kinds (:data:`WORKLOADS`, parameters in :class:`WorkloadSpec.params`):

* ``chat`` -- independent single-turn requests; prompt and output lengths drawn from log-normal
  distributions (long-tailed, like chat traces), clipped to a range.
* ``multi_turn`` -- S sessions x T turns behind a shared system prompt. Turn t's prompt is the
  conversation so far: system + every earlier ``User: ... Assistant: <answer>`` + the new user message.
  Earlier answers are scripted corpus text (as when replaying recorded conversations), so every
  server gets identical prompts and turn t's prompt starts with turn t-1's prompt. Turn t of a
  session is sent only after turn t-1 finished; sessions interleave.
* ``docqa`` -- D documents behind a shared system prompt, Q questions per document, asked interleaved
  (d0 q0, d1 q0, ..., d0 q1, ...).
* ``long_context`` -- N requests whose prompts are documents of ``prompt_tokens`` tokens (8K, 16K, 32K).
* ``mixed_slo`` -- chat traffic of two SLO classes: ``interactive`` (short prompts and answers, tight
  TTFT/TPOT targets) and ``batch`` (long prompts and answers, loose targets).
* ``roofline`` -- batch-1 probes for prefill MFU and decode MBU (see :func:`_roofline`).

Sizes are in tokens of the served model's tokenizer; prompts are cut at token boundaries and decoded,
so a prompt re-tokenizes to its target length up to a few tokens (the report uses the server's count).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RequestSpec",
    "Workload",
    "WorkloadSpec",
    "WORKLOADS",
    "build_workload",
    "prefix_stats",
]

DEFAULT_SLO_CLASS = "default"


@dataclass(frozen=True)
class RequestSpec:
    """One request of a workload.

    Attributes:
        id: index in the workload (also the dispatch order of first turns).
        prompt: the full prompt text.
        max_tokens: tokens to generate (sent with ``ignore_eos`` so every server generates exactly this many).
        session: conversation id; requests of one session run one after the other, in ``turn`` order.
        turn: position in the session (0 for single-turn workloads).
        slo_class: key into the scenario's SLO targets.
        prompt_tokens: length of ``prompt`` under the local tokenizer (the server reports its own).
        tag: what the request probes, for workloads that mix kinds of request (``roofline``).
    """

    id: int
    prompt: str
    max_tokens: int
    session: int
    turn: int = 0
    slo_class: str = DEFAULT_SLO_CLASS
    prompt_tokens: int = 0
    tag: str = ""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"request {self.id}: max_tokens must be >= 1, got {self.max_tokens}")
        if not self.prompt:
            raise ValueError(f"request {self.id}: empty prompt")


@dataclass(frozen=True)
class WorkloadSpec:
    """A workload kind plus its parameters (validated against the kind's defaults) and seed."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in WORKLOADS:
            raise ValueError(f"unknown workload kind {self.kind!r}; valid: {', '.join(sorted(WORKLOADS))}")
        unknown = sorted(set(self.params) - set(WORKLOADS[self.kind].defaults))
        if unknown:
            raise ValueError(f"workload {self.kind}: unknown parameter(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(WORKLOADS[self.kind].defaults))}")
        object.__setattr__(self, "params", dict(self.params))

    def resolved(self) -> dict[str, Any]:
        """The kind's defaults overridden by ``params``."""
        return {**WORKLOADS[self.kind].defaults, **self.params}

    def with_seed(self, seed: int) -> WorkloadSpec:
        return WorkloadSpec(self.kind, self.params, seed)


@dataclass(frozen=True)
class Workload:
    spec: WorkloadSpec
    requests: tuple[RequestSpec, ...]
    description: str

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.requests)

    @property
    def output_tokens(self) -> int:
        return sum(r.max_tokens for r in self.requests)

    def digest(self) -> str:
        """16 hex digits identifying the prompts and lengths (same digest = same requests)."""
        h = hashlib.blake2b(digest_size=8)
        for r in self.requests:
            h.update(f"{r.session}/{r.turn}/{r.max_tokens}/{r.slo_class}\0{r.prompt}\0".encode())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        lens = [r.prompt_tokens for r in self.requests]
        return {
            "kind": self.spec.kind,
            "seed": self.spec.seed,
            "params": self.spec.resolved(),
            "description": self.description,
            "requests": len(self.requests),
            "sessions": len({r.session for r in self.requests}),
            "prompt_tokens": sum(lens),
            "prompt_tokens_min_max": [min(lens), max(lens)] if lens else None,
            "output_tokens": self.output_tokens,
            "slo_classes": sorted({r.slo_class for r in self.requests}),
            "digest": self.digest(),
        }


# --------------------------------------------------------------------------- text source


class TextSource:
    """Corpus text cut to exact token counts with a tokenizer (``encode``/``decode`` of transformers)."""

    def __init__(self, tokenizer, seed: int):
        self.tok = tokenizer
        self.rng = random.Random(seed)
        self._pool: dict[str, list[int]] = {}

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))

    def _ids(self, n: int, kind: str) -> list[int]:
        from sagellm.models.corpus import sample_prompts

        pool = self._pool.setdefault(kind, [])
        while len(pool) < n:
            batch = sample_prompts(16, seed=self.rng.randrange(2**31), kind=kind)
            pool += self.tok.encode(" " + " ".join(batch), add_special_tokens=False)
        out, self._pool[kind] = pool[:n], pool[n:]
        return out

    def text(self, n_tokens: int, kind: str = "mixed") -> str:
        """About ``n_tokens`` tokens of fresh corpus text of ``kind`` (never repeated within this source)."""
        if n_tokens <= 0:
            return ""
        return self.tok.decode(self._ids(n_tokens, kind))

    def lognormal(self, median: float, sigma: float, lo: int, hi: int) -> int:
        return int(min(hi, max(lo, round(self.rng.lognormvariate(math.log(median), sigma)))))

    def uniform(self, bounds: Sequence[int]) -> int:
        lo, hi = bounds
        return self.rng.randint(int(lo), int(hi))


# --------------------------------------------------------------------------- generators


def _chat(src: TextSource, p: Mapping[str, Any]) -> tuple[list[RequestSpec], str]:
    reqs = []
    for i in range(int(p["requests"])):
        n_prompt = src.lognormal(p["prompt_median"], p["prompt_sigma"], *p["prompt_range"])
        n_out = src.lognormal(p["output_median"], p["output_sigma"], *p["output_range"])
        prompt = "User:" + src.text(max(1, n_prompt - 4), "mixed") + "\nAssistant:"
        reqs.append(RequestSpec(i, prompt, n_out, session=i, prompt_tokens=src.count(prompt)))
    desc = (f"{p['requests']} independent requests; prompt tokens log-normal (median {p['prompt_median']}, "
            f"sigma {p['prompt_sigma']}, clipped to {list(p['prompt_range'])}), output tokens log-normal "
            f"(median {p['output_median']}, sigma {p['output_sigma']}, clipped to {list(p['output_range'])})")
    return reqs, desc


def _multi_turn(src: TextSource, p: Mapping[str, Any]) -> tuple[list[RequestSpec], str]:
    system = "System: you are a helpful assistant." + src.text(int(p["system_tokens"]), "sentence")
    sessions, turns = int(p["sessions"]), int(p["turns"])
    script = [[("\nUser:" + src.text(src.uniform(p["user_tokens"]), "mixed") + "\nAssistant:",
                src.text(src.uniform(p["answer_tokens"]), "dialogue")) for _ in range(turns)]
              for _ in range(sessions)]
    reqs = []
    for t in range(turns):
        for s in range(sessions):
            history = "".join(user + answer for user, answer in script[s][:t])
            prompt = system + history + script[s][t][0]
            reqs.append(RequestSpec(len(reqs), prompt, int(p["output_tokens"]), session=s, turn=t,
                                    prompt_tokens=src.count(prompt)))
    desc = (f"{sessions} sessions x {turns} turns behind a shared {p['system_tokens']}-token system prompt; "
            f"user messages {list(p['user_tokens'])} tokens, scripted earlier answers {list(p['answer_tokens'])} "
            f"tokens, {p['output_tokens']} output tokens per turn; turn t+1 of a session is sent after turn t "
            "finished, sessions interleave (s0 t0, s1 t0, ..., s0 t1, ...)")
    return reqs, desc


def _docqa(src: TextSource, p: Mapping[str, Any]) -> tuple[list[RequestSpec], str]:
    system = "System: answer from the document." + src.text(int(p["system_tokens"]), "sentence")
    docs = ["\nDocument:" + src.text(src.uniform(p["doc_tokens"]), "sentence") for _ in range(int(p["documents"]))]
    questions = [["\nQuestion:" + src.text(src.uniform(p["question_tokens"]), "question") + "\nAnswer:"
                  for _ in range(int(p["questions"]))] for _ in docs]
    reqs = []
    for q in range(int(p["questions"])):
        for d, doc in enumerate(docs):
            prompt = system + doc + questions[d][q]
            reqs.append(RequestSpec(len(reqs), prompt, int(p["output_tokens"]), session=len(reqs),
                                    prompt_tokens=src.count(prompt)))
    desc = (f"{p['documents']} documents of {list(p['doc_tokens'])} tokens behind a shared {p['system_tokens']}-token "
            f"system prompt, {p['questions']} questions each ({list(p['question_tokens'])} tokens), asked interleaved "
            f"(d0 q0, d1 q0, ..., d0 q1, ...); {p['output_tokens']} output tokens")
    return reqs, desc


def _long_context(src: TextSource, p: Mapping[str, Any]) -> tuple[list[RequestSpec], str]:
    reqs = []
    n = int(p["prompt_tokens"])
    for i in range(int(p["requests"])):
        question = "\nQuestion: what is this document about?\nAnswer:"
        prompt = "Document:" + src.text(n - 16, "sentence") + question
        reqs.append(RequestSpec(i, prompt, int(p["output_tokens"]), session=i, prompt_tokens=src.count(prompt)))
    desc = f"{p['requests']} requests of a {n}-token document + question, {p['output_tokens']} output tokens"
    return reqs, desc


def _mixed_slo(src: TextSource, p: Mapping[str, Any]) -> tuple[list[RequestSpec], str]:
    reqs = []
    for i in range(int(p["requests"])):
        interactive = src.rng.random() < float(p["interactive_fraction"])
        cls = "interactive" if interactive else "batch"
        n_prompt = src.lognormal(p[f"{cls}_prompt_median"], 0.5, 16, int(p["max_prompt"]))
        n_out = src.lognormal(p[f"{cls}_output_median"], 0.4, 4, int(p["max_output"]))
        prompt = "User:" + src.text(max(1, n_prompt - 4), "mixed") + "\nAssistant:"
        reqs.append(RequestSpec(i, prompt, n_out, session=i, slo_class=cls, prompt_tokens=src.count(prompt)))
    desc = (f"{p['requests']} requests, {p['interactive_fraction']:.0%} interactive (prompt median "
            f"{p['interactive_prompt_median']}, output median {p['interactive_output_median']} tokens) and the rest "
            f"batch (prompt median {p['batch_prompt_median']}, output median {p['batch_output_median']} tokens)")
    return reqs, desc


def _roofline(src: TextSource, p: Mapping[str, Any]) -> tuple[list[RequestSpec], str]:
    """Probes at batch 1: ``prefill`` (long prompt, 1 token), ``base`` (short prompt, 1 token), ``decode``
    (short prompt, many tokens). Decode time per token = (decode E2E - base E2E) / (tokens - 1), which
    needs no streaming timestamps; every prompt is fresh text, so nothing is served from a prefix cache."""
    reqs: list[RequestSpec] = []
    for _ in range(int(p["probes"])):
        for tag, n_prompt, n_out in (("prefill", p["prefill_tokens"], 1), ("base", p["decode_prompt_tokens"], 1),
                                     ("decode", p["decode_prompt_tokens"], p["decode_tokens"])):
            prompt = "Document:" + src.text(int(n_prompt) - 4, "sentence")
            reqs.append(RequestSpec(len(reqs), prompt, int(n_out), session=len(reqs), prompt_tokens=src.count(prompt),
                                    tag=tag))
    desc = (f"{p['probes']} x (prefill probe: {p['prefill_tokens']}-token prompt, 1 output token; base probe: "
            f"{p['decode_prompt_tokens']}-token prompt, 1 token; decode probe: same prompt length, "
            f"{p['decode_tokens']} tokens), one at a time, fresh text each")
    return reqs, desc


@dataclass(frozen=True)
class _Kind:
    build: Callable[[TextSource, Mapping[str, Any]], tuple[list[RequestSpec], str]]
    defaults: Mapping[str, Any]


WORKLOADS: dict[str, _Kind] = {
    "chat": _Kind(_chat, {"requests": 32, "prompt_median": 160, "prompt_sigma": 0.7, "prompt_range": (16, 1536),
                          "output_median": 64, "output_sigma": 0.5, "output_range": (8, 256)}),
    "multi_turn": _Kind(_multi_turn, {"sessions": 16, "turns": 6, "system_tokens": 128, "user_tokens": (32, 96),
                                      "answer_tokens": (32, 96), "output_tokens": 32}),
    "docqa": _Kind(_docqa, {"documents": 24, "questions": 4, "system_tokens": 128, "doc_tokens": (320, 512),
                            "question_tokens": (8, 24), "output_tokens": 32}),
    "long_context": _Kind(_long_context, {"requests": 2, "prompt_tokens": 8192, "output_tokens": 32}),
    "roofline": _Kind(_roofline, {"probes": 3, "prefill_tokens": 1024, "decode_prompt_tokens": 32,
                                  "decode_tokens": 64}),
    "mixed_slo": _Kind(_mixed_slo, {"requests": 48, "interactive_fraction": 0.7, "interactive_prompt_median": 96,
                                    "interactive_output_median": 32, "batch_prompt_median": 512,
                                    "batch_output_median": 128, "max_prompt": 2048, "max_output": 256}),
}


def build_workload(spec: WorkloadSpec, tokenizer) -> Workload:
    """The requests of ``spec`` for a model with ``tokenizer`` (deterministic in ``spec.seed``)."""
    src = TextSource(tokenizer, spec.seed)
    requests, description = WORKLOADS[spec.kind].build(src, spec.resolved())
    return Workload(spec, tuple(requests), description)


def prefix_stats(workload: Workload, tokenizer, block_size: int, device_tokens: int | None = None) -> dict[str, Any]:
    """Prefix working set of the workload's prompts (distinct full blocks) and how it compares to a KV budget."""
    from sagellm.bench.token_workloads import reuse_distances, working_set_tokens

    prompts = [tokenizer.encode(r.prompt, add_special_tokens=False) for r in workload.requests]
    ws = working_set_tokens(prompts, block_size)
    dists = reuse_distances(prompts, block_size)
    out: dict[str, Any] = {"block_size": block_size, "prefix_working_set_tokens": ws, "reuses": len(dists)}
    if device_tokens:
        out["device_kv_tokens"] = device_tokens
        out["working_set_over_device_kv"] = round(ws / device_tokens, 2)
        out["reuses_beyond_device_kv"] = sum(d > device_tokens for d in dists)
    return out
