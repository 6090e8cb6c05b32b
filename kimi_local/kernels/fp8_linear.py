"""`Fp8Linear`: one block-fp8 linear layer (no bias) that keeps its weight in the checkpoint's 1-byte form.

The weight is a property of the layer, the way DeepSeek's reference attaches a scale to a weight; how the
product is computed is the backend's business, fixed at construction:

* "triton": the `fp8_linear` kernels (weight-streaming GEMV for decode, tiled GEMM for prefill). The default
  when the weight is on a CUDA device. On CPU it is only accepted when the kernels run in the Triton
  interpreter (tests).
* "torch": dequantize to float32 and matmul, then cast to the activation's dtype, on every call. The default
  elsewhere. It is the reference rule, not a fast path: on a CPU the engine's own kernels should serve.

Both return the activation's dtype. The Triton module is imported only when the triton backend is chosen, so a
CPU-only process never builds the kernels in the wrong (compiled) mode.
"""

from __future__ import annotations

import torch

from kimi_local.kernels.fp8_checks import check_activation, check_fp8_weight
from kimi_local.model.fp8 import dequantize_torch

BACKENDS = ("triton", "torch")


def default_backend(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "torch"


class Fp8Linear(torch.nn.Module):
    """`y = x @ dequant(weight_q, scale)^T` with `weight_q [N, K]` uint8/float8_e4m3fn codes and float32
    ceil-grid `scale [ceil(N/128), ceil(K/128)]`, both kept as buffers (they move with `.to(device)`; the
    backend does not)."""

    def __init__(self, weight_q: torch.Tensor, scale: torch.Tensor, backend: str | None = None):
        super().__init__()
        codes = check_fp8_weight("weight", weight_q, scale)
        if codes.dim() != 2:
            raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(codes.shape)}")
        backend = backend or default_backend(codes.device)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.kernel = None
        if backend == "triton":
            from kimi_local.kernels.triton_fp8_linear import fp8_linear, is_interpreted

            if codes.device.type != "cuda" and not is_interpreted():
                raise ValueError(
                    f"backend 'triton' needs the weight on a CUDA device (it is on {codes.device}); "
                    "use backend 'torch', or export TRITON_INTERPRET=1 before importing triton to test on CPU"
                )
            self.kernel = fp8_linear
        self.backend = backend
        self.out_features, self.in_features = codes.shape
        self.register_buffer("weight_q", codes)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self.kernel(x, self.weight_q, self.scale)
        check_activation("x", x, self.in_features)
        w = dequantize_torch(self.weight_q, self.scale, torch.float32).to(x.device)
        return torch.nn.functional.linear(x.float(), w).to(x.dtype)  # = fp8_linear_reference

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, backend={self.backend}"
