"""The engine's configuration: one frozen dataclass tree, filled from `kimi-local.toml`, `KIMI_LOCAL_*`
environment variables and command-line flags (in that order of precedence, lowest first).

Sections mirror the TOML file:

    model = "/models/Kimi-K2-Instruct"      # checkpoint directory; unset: the built-in demo model
    [engine]  device, dtype, threads, max_context, max_batch, prefill_chunk, gpu_memory_gb, expert_backend
    [cache]   ram_gb, gpu_gb, pinned, prefetch, io_threads, profile
    [server]  host, port, api_key, max_queue
    [tui]     system_prompt, temperature, top_p, max_tokens
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineSection:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16
    threads: int = 0  # CPU threads for the expert kernels; 0: the physical core count
    max_context: int = 8192  # KV cache length per sequence (tokens)
    max_batch: int = 4  # sequences decoded together (KV cache slots)
    prefill_chunk: int = 512  # prompt tokens per prefill step
    gpu_memory_gb: float = 0.0  # budget for GPU-resident layers, KV cache and GPU expert tier; 0: auto
    expert_backend: str = "auto"  # auto (numba) | numba | torch


@dataclass(frozen=True)
class CacheSection:
    ram_gb: float = 0.0  # RAM expert-cache budget; 0: auto-size from free memory
    gpu_gb: float = 0.0  # GPU hot-expert tier budget (used only with a GPU)
    pinned: tuple[str, ...] = ()  # "layer:expert" pairs that never leave RAM
    prefetch: bool = True  # predict the next layer's experts and read them ahead
    io_threads: int = 4  # concurrent expert reads from disk
    profile: bool = True  # keep routing statistics per model for warm starts


@dataclass(frozen=True)
class ServerSection:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = ""  # empty: no key required
    max_queue: int = 64  # waiting requests before 429


@dataclass(frozen=True)
class TuiSection:
    system_prompt: str = "You are Kimi, an AI assistant created by Moonshot AI."
    temperature: float = 0.6
    top_p: float = 1.0
    max_tokens: int = 1024


@dataclass(frozen=True)
class Config:
    model: str = ""
    engine: EngineSection = field(default_factory=EngineSection)
    cache: CacheSection = field(default_factory=CacheSection)
    server: ServerSection = field(default_factory=ServerSection)
    tui: TuiSection = field(default_factory=TuiSection)
