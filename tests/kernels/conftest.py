"""Without a GPU, the Triton kernel tests run on CPU tensors through the Triton interpreter.

`@triton.jit` picks compile or interpret when a kernel module is imported, so the variable must be set before
any test module here imports `kimi_local.kernels.triton_*`; pytest imports this file first. It changes
nothing for the Numba kernel tests beside them. With CUDA present the kernels are compiled and the same tests
run on the GPU.

The Numba helpers of the kernel tests are cached too and include the kernels they call: like the kernels' own
cache, theirs is dropped when the kernel sources change.
"""

import os
from pathlib import Path

import torch

from kimi_local.kernels.cpu_jit import drop_stale_machine_code

drop_stale_machine_code(Path(__file__).resolve().parent)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
