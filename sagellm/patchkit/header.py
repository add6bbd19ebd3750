"""The header of a ``git format-patch`` style patch: mail headers and the field lines of its message.

::

    From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
    From: sagellm developers <dev@sagellm.invalid>
    Subject: [PATCH 0001] device and plugin seam

    Why: <one paragraph, may wrap>
    Upstream-Status: Pending
    Hooks: lmdeploy.pytorch.backends.selector._get_backend, ...
    Tests: tests/integration/test_cpu_engine.py
    ---
     <diffstat>
    diff --git a/lmdeploy/... b/lmdeploy/...
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_FIELD = re.compile(r"^([A-Z][A-Za-z0-9-]*):(?:\s+(.*))?$")
_SUBJECT_PREFIX = re.compile(r"^\[PATCH(?:\s+(\d+)(?:/\d+)?)?\]\s*")


@dataclass(frozen=True)
class PatchHeader:
    author: str
    subject: str  # without the [PATCH ...] prefix
    number: str | None  # "0001" from "[PATCH 0001]", if present
    fields: dict[str, str] = field(default_factory=dict)  # Why, Upstream-Status, Hooks, Tests, ...
    message_lines: int = 0  # lines of message body before the "---" separator

    def get(self, name: str) -> str:
        return self.fields.get(name, "").strip()


def split_mail(text: str) -> tuple[list[str], list[str]]:
    """(mail header lines with continuations joined, message body lines up to ``---`` or the first diff)."""
    lines = text.splitlines()
    index = 0
    headers: list[str] = []
    if lines and lines[0].startswith("From ") and not lines[0].startswith("From:"):
        index = 1
    while index < len(lines) and lines[index].strip():
        line = lines[index]
        if line[:1] in (" ", "\t") and headers:
            headers[-1] += " " + line.strip()
        else:
            headers.append(line)
        index += 1
    body: list[str] = []
    for line in lines[index + 1 :]:
        if line == "---" or line.startswith("diff --git "):
            break
        body.append(line)
    return headers, body


def parse_header(text: str) -> PatchHeader:
    headers, body = split_mail(text)
    mail: dict[str, str] = {}
    for line in headers:
        if ":" in line:
            key, value = line.split(":", 1)
            mail.setdefault(key.strip().lower(), value.strip())
    raw_subject = mail.get("subject", "")
    match = _SUBJECT_PREFIX.match(raw_subject)
    number = match.group(1) if match and match.group(1) else None
    subject = raw_subject[match.end() :] if match else raw_subject
    fields: dict[str, str] = {}
    current: str | None = None
    for line in body:
        found = _FIELD.match(line)
        if found:
            current = found.group(1)
            fields[current] = (found.group(2) or "").strip()
        elif not line.strip():
            current = None
        elif current is not None:
            fields[current] = (fields[current] + " " + line.strip()).strip()
    return PatchHeader(
        author=mail.get("from", ""),
        subject=subject.strip(),
        number=number,
        fields=fields,
        message_lines=len(body),
    )
