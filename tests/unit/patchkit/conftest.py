"""A synthetic upstream for patchkit tests: a tiny wheel, its sha256, and a 2-patch series.

Nothing here touches the network or the real LMDeploy wheel: the fake wheel is put
in the cache folder, where the kit finds it and skips ``pip download``.
"""

from __future__ import annotations

import difflib
import hashlib
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from sagellm.patchkit.layout import Layout

PACKAGE = "toyllm"
VERSION = "1.0.0"
PLATFORM = "manylinux2014_x86_64"

ENGINE = (
    [f"# engine line {i}\n" for i in range(1, 9)]
    + [
        "class Engine:\n",
        "    def step(self, batch):\n",
        "        inputs = self.prepare(batch)\n",
        "        alpha = 1\n",
        "        beta = 2\n",
        "        gamma = 3\n",
        "        outputs = self.forward(inputs)\n",
        "        return outputs\n",
        "\n",
    ]
    + [f"# engine tail {i}\n" for i in range(1, 9)]
)

CONFIG = (
    [f"# config line {i}\n" for i in range(1, 6)]
    + [
        "DEVICE = 'cuda'\n",
    ]
    + [f"# config middle {i}\n" for i in range(1, 13)]
    + [
        "DTYPE = 'float16'\n",
    ]
    + [f"# config tail {i}\n" for i in range(1, 6)]
)

BASE_FILES: dict[str, str | bytes] = {
    "toyllm/__init__.py": "__version__ = '1.0.0'\n",
    "toyllm/cli.py": "def run():\n    return 0\n",
    "toyllm/engine.py": "".join(ENGINE),
    "toyllm/config.py": "".join(CONFIG),
    "toyllm/lib/_native.so": b"\x7fELF not really a library",
}


def replace_line(lines: list[str], old: str, new: str) -> list[str]:
    assert old in lines, old
    return [new if line == old else line for line in lines]


def file_diff(path: str, before: str | None, after: str) -> str:
    """A git-style diff of one file (``before`` None = new file)."""
    a = [] if before is None else before.splitlines(keepends=True)
    b = after.splitlines(keepends=True)
    head = f"diff --git a/{path} b/{path}\n"
    if before is None:
        head += "new file mode 100644\n"
    body = "".join(difflib.unified_diff(a, b, "/dev/null" if before is None else f"a/{path}", f"b/{path}"))
    return head + body


def patch_text(
    number: str, subject: str, diffs: list[str], *, drop: tuple[str, ...] = (), status: str = "Pending"
) -> str:
    fields = {
        "Why": "A seam the toy engine needs; a no-op unless a plugin\nregisters something.",
        "Upstream-Status": status,
        "Hooks": "toyllm.engine.Engine.step, toyllm.config (module constants)",
        "Tests": "tests/unit/patchkit/test_apply.py",
    }
    body = "\n".join(f"{key}: {value}" for key, value in fields.items() if key not in drop)
    return (
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: sagellm developers <dev@sagellm.invalid>\n"
        f"Subject: [PATCH {number}] {subject}\n\n{body}\n---\n" + "".join(diffs)
    )


ENGINE_PATCHED = replace_line(
    replace_line(
        ENGINE, "        inputs = self.prepare(batch)\n", "        inputs = hooks.before_step(self.prepare(batch))\n"
    ),
    "        outputs = self.forward(inputs)\n",
    "        outputs = hooks.after_step(self.forward(inputs))\n",
)
CONFIG_PATCHED = replace_line(
    replace_line(CONFIG, "DEVICE = 'cuda'\n", "DEVICE = plugins.device() or 'cuda'\n"),
    "DTYPE = 'float16'\n",
    "DTYPE = plugins.dtype() or 'float16'\n",
)
PLUGINS = "def device():\n    return None\n\n\ndef dtype():\n    return None\n"

PATCH_1 = "0001-engine-step-hook.patch"
PATCH_2 = "0002-config-seam.patch"


def series_patches(**header: object) -> dict[str, str]:
    return {
        PATCH_1: patch_text(
            "0001", "engine step hook", [file_diff("toyllm/engine.py", "".join(ENGINE), "".join(ENGINE_PATCHED))]
        ),
        PATCH_2: patch_text(
            "0002",
            "config seam",
            [
                file_diff("toyllm/config.py", "".join(CONFIG), "".join(CONFIG_PATCHED)),
                file_diff("toyllm/plugins.py", None, PLUGINS),
            ],
        ),
    }


def make_wheel(folder: Path, version: str, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PACKAGE}-{version}-cp311-cp311-{PLATFORM}.whl"
    info = f"{PACKAGE}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in sorted(files.items()):
            archive.writestr(name, content)
        archive.writestr(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {version}\nSummary: A toy upstream\nRequires-Python: >=3.9\n",
        )
        archive.writestr(f"{info}/entry_points.txt", "[console_scripts]\ntoyllm = toyllm.cli:run\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Toy:
    """A checkout layout in a temporary directory, with a fake upstream in its cache."""

    root: Path
    cache: Path
    wheel: Path

    @property
    def series_dir(self) -> Path:
        return self.root / "patches" / PACKAGE

    @property
    def layout(self) -> Layout:
        return Layout.default(repo_root=self.root, upstream_file=self.series_dir / "UPSTREAM", cache_dir=self.cache)

    @property
    def tree(self) -> Path:
        return self.root / "third_party" / PACKAGE / PACKAGE

    @property
    def pristine(self) -> Path:
        return self.root / "third_party" / ".pristine" / f"{PACKAGE}-{VERSION}"

    def cli_args(self) -> list[str]:
        return [
            "--repo-root",
            str(self.root),
            "--upstream",
            str(self.series_dir / "UPSTREAM"),
            "--cache-dir",
            str(self.cache),
        ]

    def write_upstream(self, sha: str | None = None) -> None:
        self.series_dir.mkdir(parents=True, exist_ok=True)
        (self.series_dir / "UPSTREAM").write_text(
            "# toy pin\n"
            f"package={PACKAGE}\nversion={VERSION}\nsource=pypi\n"
            f"artifact={self.wheel.name}\nsha256={sha or sha256(self.wheel)}\n"
        )

    def write_series(self, patches: dict[str, str], series: list[str] | None = None) -> None:
        self.series_dir.mkdir(parents=True, exist_ok=True)
        for name, text in patches.items():
            (self.series_dir / name).write_text(text)
        names = list(patches) if series is None else series
        (self.series_dir / "series").write_text("# toy series\n" + "".join(f"{name}\n" for name in names))

    def release(self, version: str, files: dict[str, str | bytes]) -> Path:
        return make_wheel(self.cache / f"{PACKAGE}-{version}", version, files)


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Toy:
    if shutil.which("git") is None:
        pytest.skip("git is required by patchkit")
    monkeypatch.delenv("SAGELLM_KEEP_TURBOMIND", raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tests must not download anything")

    monkeypatch.setattr("sagellm.patchkit.fetch.pip_download", no_network)
    cache = tmp_path / "cache"
    wheel = make_wheel(cache / f"{PACKAGE}-{VERSION}", VERSION, BASE_FILES)
    box = Toy(root=tmp_path / "repo", cache=cache, wheel=wheel)
    box.write_upstream()
    box.write_series(series_patches())
    return box
