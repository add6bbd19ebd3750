"""The unified diff parser used to name failing hunks."""

from __future__ import annotations

from sagellm.patchkit.diffparse import find_hunk, hunk_by_number, parse_diff

from .conftest import PATCH_2, series_patches


def test_files_and_hunks() -> None:
    files = parse_diff(series_patches()[PATCH_2])

    assert [(f.old_path, f.new_path, len(f.hunks)) for f in files] == [
        ("toyllm/config.py", "toyllm/config.py", 2),
        (None, "toyllm/plugins.py", 1),
    ]
    first, second = files[0].hunks
    assert (first.old_start, first.old_len) == (3, 7)
    assert second.number == 2 and second.header.startswith("@@ -16,7 +16,7 @@")


def test_lookup_by_line_and_number() -> None:
    files = parse_diff(series_patches()[PATCH_2])

    assert find_hunk(files, "toyllm/config.py", 16).number == 2
    assert find_hunk(files, "toyllm/config.py", 99) is None
    assert hunk_by_number(files, "toyllm/plugins.py", 1).new_len == 6


def test_mail_header_and_diffstat_are_not_diffs() -> None:
    text = "Subject: x\n\n---\n a/b | 2 +-\n--- not a diff\n"

    assert parse_diff(text) == ()
