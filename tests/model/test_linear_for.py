"""Which linear layer the model builds for its resident weights: block-fp8 everywhere (Triton kernels on CUDA,
the Numba kernels on the CPU), and on the CPU the same greedy tokens as the dequantized float32 layers."""

from __future__ import annotations

import numpy as np
import torch

from kimi_local.engine.engine import Engine
from kimi_local.engine.sampling import SamplingParams
from kimi_local.kernels.cpu_linear import CpuFp8Linear
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import KimiModel, cpu_fp8_linear, dequantized_linear, fp8_linear, linear_for
from kimi_local.model.experts import TorchReferenceExperts

PROMPT = [5, 17, 300, 2, 999, 45, 77]


def test_each_device_gets_its_block_fp8_linear():
    assert linear_for(torch.device("cuda")) is fp8_linear
    assert linear_for(torch.device("cuda", 1)) is fp8_linear
    assert linear_for(torch.device("cpu")) is cpu_fp8_linear


def test_cpu_layers_keep_one_byte_per_weight_and_generate_like_float32_layers(tiny_checkpoint):
    torch.set_num_threads(1)
    ckpt = Checkpoint.open(tiny_checkpoint)
    fp8 = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt), overlap_experts=False)
    dense = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt), linear=dequantized_linear,
                                      overlap_experts=False)
    o_proj = fp8.layers[0].self_attn.o_proj
    assert isinstance(o_proj, CpuFp8Linear)
    codes, _ = ckpt.fp8_weight("model.layers.0.self_attn.o_proj")
    assert np.array_equal(o_proj.weight_q.numpy(), codes)
    assert isinstance(fp8.layers[1].mlp.shared.down_proj, CpuFp8Linear)  # the shared expert too
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    assert list(Engine(fp8, 64, 1).generate(PROMPT, greedy)) == list(Engine(dense, 64, 1).generate(PROMPT, greedy))
