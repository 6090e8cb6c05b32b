"""From a configuration to a running engine: checkpoint, expert backend, model, KV cache.

Placement is decided here, once: the device and dtype of the resident layers, and which routed-expert backend
computes the experts (which in turn owns where expert weights live).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from kimi_local.config import Config
from kimi_local.engine.engine import Engine
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import KimiModel
from kimi_local.model.placement import plan_placement
from kimi_local.model.experts import ExpertSource, RoutedExperts, TorchReferenceExperts
from kimi_local.footprint import footprint
from kimi_local.sizing import plan_memory, probe_machine, resolve_gpu_memory_bytes, resolve_threads

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype '{name}' is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def gpu_budget_bytes(config: Config, device: torch.device) -> int:
    """Bytes the resident layers and the KV cache may take on the GPU: the configured (or auto) GPU budget less
    the GPU expert tier's share."""
    if device.type != "cuda":
        return 0
    return max(0, resolve_gpu_memory_bytes(config) - int(config.cache.gpu_gb * (1 << 30)))


def make_kernel(config: Config) -> Callable[[ExpertSource], RoutedExperts]:
    """The CPU kernel backend that computes experts from whatever source the expert store hands it."""
    backend = config.engine.expert_backend
    if backend == "torch":
        return TorchReferenceExperts
    if backend in ("auto", "numba"):
        from kimi_local.kernels.cpu_experts import NumbaExperts

        threads = resolve_threads(config)
        return lambda source: NumbaExperts(source, num_threads=threads)
    raise ValueError(f"expert_backend '{backend}' is not one of auto, numba, torch")


@dataclass
class LoadedModel:
    checkpoint: Checkpoint
    model: KimiModel
    engine: Engine
    experts: RoutedExperts  # CachedExperts: the expert store plus the kernel
    path: Path

    def close(self) -> None:
        """Stops the expert store's I/O threads and saves its routing profile."""
        store = getattr(self.experts, "store", None)
        if store is not None:
            store.close()


def load(model_dir: str | Path, config: Config, progress: Callable[[int, int], None] | None = None) -> LoadedModel:
    """`progress(done, total)` is called as layers load."""
    from kimi_local.cache.setup import build_cached_experts

    ckpt = Checkpoint.open(model_dir)
    device = resolve_device(config.engine.device)
    dtype = resolve_dtype(config.engine.dtype, device)
    plan = plan_memory(config, footprint(ckpt.config), probe_machine(model_dir))
    if not plan.fits:  # refuse now, with the numbers, rather than be killed for memory later
        ckpt.close()
        raise ValueError(f"{model_dir}: this configuration does not fit this machine: {'; '.join(plan.problems)}")
    gpu_tier = int(config.cache.gpu_gb * (1 << 30)) if device.type == "cuda" else 0
    experts = build_cached_experts(ckpt, config, model_dir, plan.ram_cache_bytes,
                                   make_kernel(config), gpu_cache_bytes=gpu_tier,
                                   gpu_device=str(device) if gpu_tier else None)
    try:
        total = ckpt.config.num_hidden_layers
        kv_tokens = config.engine.max_batch * config.engine.max_context
        placement = plan_placement(ckpt.config, device, dtype, gpu_budget_bytes(config, device), kv_tokens)
        log.info("placement: %s", placement.report())
        model = KimiModel.from_checkpoint(
            ckpt, experts, placement=placement,
            progress=(lambda done: progress(done, total)) if progress else None,
        )
    except BaseException:
        experts.store.close()
        raise
    # The resident weights are copies now and the store reads experts with pread: drop the checkpoint's maps so
    # pages touched while loading do not count against the RAM budget.
    ckpt.close()
    model.prefetch_enabled = config.cache.prefetch
    model.cuda_graphs = config.engine.cuda_graphs
    engine = Engine(model, config.engine.max_context, config.engine.max_batch, config.engine.prefill_chunk)
    log.info("loaded %s on %s (%s), experts via %s", model_dir, device, dtype, type(experts.kernel).__name__)
    return LoadedModel(ckpt, model, engine, experts, Path(model_dir))
