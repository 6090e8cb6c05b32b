import pytest
import torch

from kimi_local.engine.engine import Engine
from kimi_local.engine.sampling import SamplingParams
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.config import ModelConfig
from kimi_local.model.deepseek import Batch, KimiModel, KVCache, fp8_linear
from kimi_local.model.experts import TorchReferenceExperts
from kimi_local.model.placement import Placement, layer_gpu_bytes, plan_placement
from kimi_local.model.presets import KIMI_K2_CONFIG

CUDA = torch.device("cuda")
PROMPT = [5, 17, 300, 2, 999, 45, 77]


def test_kimi_k2_on_a_24_gb_card():
    c = ModelConfig.from_dict(KIMI_K2_CONFIG)
    # 4K context, one sequence: every layer, lm_head and embeddings fit in fp8 + bf16 with room to spare
    p = plan_placement(c, CUDA, torch.bfloat16, 22 << 30, kv_tokens=4096)
    assert all(d.type == "cuda" for d in p.layer_devices)
    assert p.head_device.type == "cuda"
    moe_layer = layer_gpu_bytes(c, 1, torch.bfloat16, 0)
    assert 150e6 < moe_layer < 170e6  # attention ~101M fp8 + shared expert ~44M fp8 + kv_b bf16 16.8M + router
    assert "layers 0-60 on cuda" in p.report()


def test_over_budget_layers_spill_to_the_cpu_as_a_suffix():
    c = ModelConfig.from_dict(KIMI_K2_CONFIG)
    p = plan_placement(c, CUDA, torch.bfloat16, 4 << 30, kv_tokens=4096)
    devices = [d.type for d in p.layer_devices]
    first_cpu = devices.index("cpu")
    assert 0 < first_cpu < 61 and set(devices[first_cpu:]) == {"cpu"}
    assert p.gpu_bytes <= 4 << 30
    assert p.embed_device.type == "cpu" and "on the CPU (over the GPU budget)" in p.report()


def test_cpu_device_is_uniform():
    c = ModelConfig.from_dict(KIMI_K2_CONFIG)
    p = plan_placement(c, torch.device("cpu"), torch.float32, 0, 100)
    assert p == Placement.uniform(61, "cpu", torch.float32)
    assert p.report() == "all resident layers on the CPU"


def test_fp8_resident_linears_match_dequantized_ones(tiny_checkpoint):
    ckpt = Checkpoint.open(tiny_checkpoint)
    dense = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt))
    fp8 = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt), linear=fp8_linear)
    assert type(fp8.layers[0].self_attn.o_proj).__name__ == "Fp8Linear"
    greedy = SamplingParams(temperature=0, max_new_tokens=16)
    assert list(Engine(dense, 64, 1).generate(PROMPT, greedy)) == list(Engine(fp8, 64, 1).generate(PROMPT, greedy))


@pytest.mark.gpu
def test_split_placement_on_gpu_matches_cpu(tiny_checkpoint):
    ckpt = Checkpoint.open(tiny_checkpoint)
    c = ckpt.config
    cpu = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt))
    split = Placement((CUDA, torch.device("cpu"), CUDA)[: c.num_hidden_layers], CUDA, torch.device("cpu"), torch.float32)
    gpu = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt), placement=split)
    n = len(PROMPT)
    logits = []
    for model in (cpu, gpu):
        cache = KVCache.allocate(c, 1, 32, torch.float32, model.placement.layer_devices)
        batch = Batch(torch.tensor(PROMPT, device=model.device), torch.arange(n, device=model.device),
                      torch.zeros(n, dtype=torch.long, device=model.device), True)
        logits.append(model(batch, cache).cpu())
    assert (logits[0] - logits[1]).abs().max() / logits[0].abs().max() < 2e-3  # fp8 kernels accumulate differently


def test_slot_attention_equals_the_gathered_torch_path(tiny_checkpoint):
    """The CUDA decode path (queries scattered over all cache slots, lengths per slot) computes what the torch
    path computes; here with the kernel's torch reference standing in for the Triton kernel."""
    from kimi_local.kernels.triton_mla import mla_decode_reference

    ckpt = Checkpoint.open(tiny_checkpoint)
    model = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt))
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    prompts = [PROMPT, PROMPT[:2], [9, 8, 7, 6]]

    def run():
        engine = Engine(model, 64, max_batch=4, prefill_chunk=3)
        requests = [engine.add_request(p, greedy) for p in prompts]
        while engine.has_work():
            engine.step()
        return [r.output_ids for r in requests]

    expected = run()
    for layer in model.layers:
        layer.self_attn.latent_attention = mla_decode_reference
    try:
        assert run() == expected
    finally:
        for layer in model.layers:
            layer.self_attn.latent_attention = None
