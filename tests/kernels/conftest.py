"""Without a GPU, the Triton kernel tests run on CPU tensors through the Triton interpreter.

`@triton.jit` picks compile or interpret when a kernel module is imported, so the variable must be set before
any test module here imports `kimi_local.kernels.triton_*`; pytest imports this file first. It changes
nothing for the Numba kernel tests beside them. With CUDA present the kernels are compiled and the same tests
run on the GPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
