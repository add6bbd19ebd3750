"""Skip markers shared by the cpu kernel tests."""

from __future__ import annotations

import pytest
import torch

from sagellm.accel.kernels.cpu.linear import packed_linear_dtypes

needs_onednn = pytest.mark.skipif(torch.float32 not in packed_linear_dtypes(),
                                  reason="oneDNN packed linear is not available on this CPU build")
