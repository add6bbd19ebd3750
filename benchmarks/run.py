#!/usr/bin/env python3
"""`python benchmarks/run.py ...` = `sage bench run ...` (the runner lives in sagellm/bench/).

    python benchmarks/run.py                      # the full report suite: sagellm, lmdeploy-stock, vllm
    python benchmarks/run.py --suite smoke        # seconds: check the machinery
    python benchmarks/run.py --help
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sagellm.cli.bench import app  # noqa: E402

if __name__ == "__main__":
    app(["run", *sys.argv[1:]], prog_name="benchmarks/run.py")
