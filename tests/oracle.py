"""The numerical oracle: transformers' DeepseekV3ForCausalLM loaded from the dequantized synthetic checkpoint.

KIMI_FACTS section 7: transformers' CPU fp8 loader infers block sizes from shape ratios (wrong on partial blocks),
so the checkpoint is dequantized here with the ceil-block rule, written as plain fp32 safetensors with
`model_type: deepseek_v3` and no quantization_config, and loaded in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.fp8 import dequantize
from kimi_local.model.layout import is_ignored


def write_dequantized(ckpt: Checkpoint, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in ckpt.names():
        if name.endswith(".weight_scale_inv") or is_ignored(name):
            continue
        info = ckpt.info(name)
        if info.dtype == "F8_E4M3":
            codes, scales = ckpt.fp8_weight(name[: -len(".weight")])
            tensors[name] = torch.from_numpy(dequantize(codes, scales))
        else:
            tensors[name] = ckpt.tensor(name, torch.float32)
    save_file(tensors, str(out_dir / "model.safetensors"))
    config = json.loads((ckpt.path / "config.json").read_text())
    config["model_type"] = "deepseek_v3"
    config.pop("quantization_config", None)
    config.pop("auto_map", None)
    config["torch_dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


def load_oracle(ckpt: Checkpoint, work_dir: Path):
    from transformers import AutoModelForCausalLM

    path = write_dequantized(ckpt, work_dir)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.eval()


@torch.inference_mode()
def oracle_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits at every position [T, vocab] for one sequence."""
    return model(torch.tensor([ids])).logits[0].float()


@torch.inference_mode()
def oracle_greedy(model, ids: list[int], steps: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps,
                         pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()
