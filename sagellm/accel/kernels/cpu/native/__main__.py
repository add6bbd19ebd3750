"""``python -m sagellm.accel.kernels.cpu.native [--force]``: build the native cpu kernels for this machine.

Exit status 0 with the library's path, or 1 with the reason (sagellm then runs on the torch kernels).
"""

from __future__ import annotations

import sys

from sagellm.accel.kernels.cpu.native import NativeBuildError, NativeKernels, build


def main(argv: list[str]) -> int:
    try:
        path = build(force="--force" in argv)
        NativeKernels(path)
    except (NativeBuildError, OSError) as exc:
        print(f"native cpu kernels: not built: {exc}", file=sys.stderr)
        return 1
    print(f"native cpu kernels: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
