"""Exit codes and the error types every patchkit command raises.

Each error carries the exit code the command line reports, so the shell wrapper,
``python3 -m sagellm.patchkit`` and ``sage patches`` all agree on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

# git apply --verbose progress lines, dropped from error messages
_PROGRESS = re.compile(r"^(Checking patch |Applied patch |Applying: |Hunk #\d+ applied cleanly)")


class ExitCode(IntEnum):
    """Process exit status of every patchkit command."""

    OK = 0
    FAILED = 1  # drift found, lint failed, or a check did not pass
    USAGE = 2  # bad arguments or a malformed UPSTREAM / series file
    CHECKSUM = 3  # the upstream artifact does not match the pinned sha256
    PATCH_FAILED = 4  # a patch in the series does not apply
    FETCH_FAILED = 5  # the upstream artifact could not be downloaded
    TOOL_MISSING = 6  # git, GNU patch or pip is not available


EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success (or: already up to date)",
    ExitCode.FAILED: "check failed: drifted files, header lint errors or round-trip differences",
    ExitCode.USAGE: "usage or configuration error (bad arguments, malformed UPSTREAM or series)",
    ExitCode.CHECKSUM: "upstream artifact checksum mismatch (nothing was extracted)",
    ExitCode.PATCH_FAILED: "a patch failed to apply (the previous tree was left untouched)",
    ExitCode.FETCH_FAILED: "the upstream artifact could not be fetched",
    ExitCode.TOOL_MISSING: "a required tool (git, GNU patch, pip) is missing",
}


class PatchkitError(Exception):
    """Base error; ``exit_code`` is what the command line exits with."""

    exit_code: ExitCode = ExitCode.FAILED


class UsageError(PatchkitError):
    exit_code = ExitCode.USAGE


class ConfigError(PatchkitError):
    """A malformed UPSTREAM or series file."""

    exit_code = ExitCode.USAGE


class ChecksumError(PatchkitError):
    exit_code = ExitCode.CHECKSUM

    def __init__(self, path: str, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"checksum mismatch for {path}\n"
            f"  expected sha256: {expected}  (from UPSTREAM)\n"
            f"  actual sha256:   {actual}\n"
            "Nothing was extracted. If the file is corrupt, delete it and run again to re-download; "
            "if you are bumping the pin on purpose, update sha256= (and version=/artifact=) in UPSTREAM."
        )


class FetchError(PatchkitError):
    exit_code = ExitCode.FETCH_FAILED


class ToolMissingError(PatchkitError):
    exit_code = ExitCode.TOOL_MISSING


@dataclass(frozen=True)
class HunkFailure:
    """One hunk of a patch that did not apply."""

    file: str
    hunk: int | None  # 1-based hunk number within that file's diff, when known
    line: int | None  # line in the target file where the hunk was expected
    header: str = ""  # the ``@@ -a,b +c,d @@`` line, when known
    reason: str = ""

    def describe(self) -> str:
        parts = [self.file]
        if self.hunk is not None:
            parts.append(f"hunk #{self.hunk}")
        if self.line is not None:
            parts.append(f"at line {self.line}")
        text = " ".join(parts)
        if self.header:
            text += f" ({self.header})"
        if self.reason:
            text += f": {self.reason}"
        return text


class PatchApplyError(PatchkitError):
    exit_code = ExitCode.PATCH_FAILED

    def __init__(self, patch: str, failures: tuple[HunkFailure, ...], tool_output: str, hint: str = "") -> None:
        self.patch = patch
        self.failures = failures
        self.tool_output = tool_output
        lines = [f"patch {patch} failed to apply:"]
        lines += [f"  - {f.describe()}" for f in failures] or ["  (no hunk detail; see the tool output below)"]
        relevant = [line for line in tool_output.strip().splitlines() if not _PROGRESS.match(line)]
        if relevant:
            lines.append("tool output:")
            lines += [f"    {line}" for line in relevant[-30:]]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))
