"""The machine, and how big everything may be on it.

`probe_machine()` reads what the operating system says (psutil RAM and cores, torch CUDA devices, free disk next
to the model); `with_bandwidths()` adds the measured read rates from `bandwidth.py`. Tests pass a hand-made
`Machine` instead: every rule below takes the machine as an argument.

Rules (the "auto" values of the config are resolved here, at load time):

- headroom: RAM left to the OS, the page cache and the rest of the process, max(4 GiB, 10% of RAM);
- device auto: CUDA when a GPU is present; dtype auto: bfloat16 on CUDA, float32 on CPU;
- `engine.threads = 0`: the physical core count (hyper-threads share the memory bus the kernels saturate);
- `engine.gpu_memory_gb = 0`: 90% of the GPU's free memory. The GPU expert tier (`cache.gpu_gb`) comes off the top,
  the rest holds resident layers and their KV cache in order of use; layers past the budget run on the CPU
  (`residency.py` runs the loader's own placement planner);
- `cache.ram_gb = 0`: the biggest RAM expert cache that leaves the headroom, after what else lives in RAM (the
  resident layers and KV cache slices that run on the CPU), capped at the size of all routed experts:
      min(RAM - headroom, RAM available now) - CPU-resident bytes
  Call it before the resident layers are loaded (they are subtracted, not measured).

`recommend` turns these rules into concrete values for `config init`; `plan_memory` checks a configuration
against a machine for `info`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from kimi_local.config import Config
from kimi_local.footprint import Footprint, footprint
from kimi_local.model.config import ModelConfig
from kimi_local.residency import ResidentSplit, resident_split

log = logging.getLogger(__name__)

GiB = 1 << 30
HEADROOM_MIN_BYTES = 4 * GiB
HEADROOM_FRACTION = 0.10
GPU_BUDGET_FRACTION = 0.90
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Machine:
    ram_total: int
    ram_available: int
    physical_cores: int
    logical_cores: int
    gpus: tuple[GpuInfo, ...] = ()
    disk_path: str | None = None  # where free disk space was measured (the model's directory or its parent)
    disk_free: int | None = None
    memory_bandwidth: float | None = None  # bytes/s, measured
    disk_bandwidth: float | None = None
    gpu_bandwidth: float | None = None


def probe_gpus() -> tuple[GpuInfo, ...]:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return ()
    if not torch.cuda.is_available():
        return ()
    gpus = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(GpuInfo(torch.cuda.get_device_name(i), int(total), int(free)))
    return tuple(gpus)


def _existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def probe_machine(disk_path: str | Path | None = None) -> Machine:
    """What the OS reports now; free disk space is measured at `disk_path` (default: the home directory)."""
    memory = psutil.virtual_memory()
    logical = psutil.cpu_count(logical=True) or 1
    physical = psutil.cpu_count(logical=False) or logical
    where = _existing_ancestor(Path(disk_path) if disk_path else Path.home())
    return Machine(ram_total=int(memory.total), ram_available=int(memory.available), physical_cores=physical,
                   logical_cores=logical, gpus=probe_gpus(), disk_path=str(where),
                   disk_free=int(shutil.disk_usage(where).free))


def with_bandwidths(machine: Machine, memory: bool = True, disk: str | Path | None = None, gpu: bool = False,
                    threads: int | None = None) -> Machine:
    """`machine` plus the measured memory (~0.5 s), disk (biggest shard under `disk`) and GPU read rates."""
    from kimi_local import bandwidth

    changes = {}
    if memory:
        changes["memory_bandwidth"] = bandwidth.measure_memory_bandwidth(threads=threads).bytes_per_s
    if disk is not None:
        changes["disk_bandwidth"] = bandwidth.measure_disk_bandwidth(Path(disk)).bytes_per_s
    if gpu and machine.gpus:
        changes["gpu_bandwidth"] = bandwidth.measure_gpu_bandwidth().bytes_per_s
    return replace(machine, **changes)


# -- rules -------------------------------------------------------------------------------------------------
def ram_headroom_bytes(machine: Machine) -> int:
    return max(HEADROOM_MIN_BYTES, int(HEADROOM_FRACTION * machine.ram_total))


def ram_limit_bytes(machine: Machine) -> int:
    """What the engine may use in RAM altogether: RAM minus headroom, and no more than is available now."""
    return max(0, min(machine.ram_total - ram_headroom_bytes(machine), machine.ram_available))


def device_kind(config: Config, machine: Machine) -> str:
    device = config.engine.device
    if device == "auto":
        return "cuda" if machine.gpus else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def dtype_name(config: Config, machine: Machine) -> str:
    """The resident layers' compute dtype: auto is bfloat16 on CUDA, float32 on the CPU (as engine/loader.py)."""
    if config.engine.dtype == "auto":
        return "bfloat16" if device_kind(config, machine) == "cuda" else "float32"
    return config.engine.dtype


def dtype_bytes(config: Config, machine: Machine) -> int:
    return DTYPE_BYTES[dtype_name(config, machine)]


def resolve_threads(config: Config, machine: Machine | None = None) -> int:
    if config.engine.threads:
        return config.engine.threads
    return (machine or probe_machine()).physical_cores


def _gpu(config: Config, machine: Machine) -> GpuInfo | None:
    if device_kind(config, machine) != "cuda" or not machine.gpus:
        return None
    device = config.engine.device
    index = int(device.split(":")[1]) if ":" in device else 0
    return machine.gpus[index] if index < len(machine.gpus) else None


def resolve_gpu_memory_bytes(config: Config, machine: Machine | None = None) -> int:
    """The GPU budget in bytes: configured, else 90% of the GPU's free memory; 0 without a GPU."""
    machine = machine or probe_machine()
    gpu = _gpu(config, machine)
    if gpu is None:
        return 0
    if config.engine.gpu_memory_gb:
        return int(config.engine.gpu_memory_gb * GiB)
    return int(GPU_BUDGET_FRACTION * gpu.free_bytes)


def gpu_tier_bytes(config: Config, fp: Footprint) -> int:
    return min(int(config.cache.gpu_gb * GiB), fp.routed_bytes)


def split_resident(config: Config, fp: Footprint, machine: Machine) -> ResidentSplit:
    """The resident layers and KV cache as the loader will place them on this machine (residency.py)."""
    kv_tokens = config.engine.max_context * config.engine.max_batch
    dtype = dtype_name(config, machine)
    if _gpu(config, machine) is None:
        return resident_split(fp.model, "cpu", dtype, 0, kv_tokens)
    device = config.engine.device if config.engine.device.startswith("cuda") else "cuda"
    budget = max(0, resolve_gpu_memory_bytes(config, machine) - gpu_tier_bytes(config, fp))
    return resident_split(fp.model, device, dtype, budget, kv_tokens)


def cpu_resident_bytes(config: Config, fp: Footprint, machine: Machine) -> int:
    """RAM taken by resident layers and KV cache slices that run on the CPU (all of them without a GPU)."""
    return split_resident(config, fp, machine).cpu_bytes


def auto_ram_cache_bytes(config: Config, fp: Footprint, machine: Machine) -> int:
    budget = ram_limit_bytes(machine) - cpu_resident_bytes(config, fp, machine)
    return max(0, min(budget, fp.routed_bytes))


def _footprint(model: ModelConfig | Footprint | object) -> Footprint:
    if isinstance(model, Footprint):
        return model
    if isinstance(model, ModelConfig):
        return footprint(model)
    config = getattr(model, "config", None)  # a Checkpoint
    if isinstance(config, ModelConfig):
        return footprint(config)
    raise TypeError(f"expected a ModelConfig, Checkpoint or Footprint, got {type(model).__name__}")


def resolve_ram_cache_bytes(config: Config, model: ModelConfig | Footprint | object,
                            machine: Machine | None = None) -> int:
    """The RAM expert-cache size in bytes for `model` (a ModelConfig, Checkpoint or Footprint).

    `cache.ram_gb` when set (capped at all routed experts; a warning if it leaves no headroom), else the auto rule.
    """
    fp = _footprint(model)
    machine = machine or probe_machine()
    if not config.cache.ram_gb:
        size = auto_ram_cache_bytes(config, fp, machine)
        log.info("RAM expert cache: auto %.1f GiB (%.1f GiB RAM, %.1f GiB headroom)", size / GiB,
                 machine.ram_total / GiB, ram_headroom_bytes(machine) / GiB)
        return size
    size = int(config.cache.ram_gb * GiB)
    room = ram_limit_bytes(machine) - cpu_resident_bytes(config, fp, machine)
    if size > room:
        log.warning("cache.ram_gb = %g leaves less than the %.1f GiB headroom (at most %.1f GiB fits)",
                    config.cache.ram_gb, ram_headroom_bytes(machine) / GiB, max(0, room) / GiB)
    if size > fp.routed_bytes:
        log.info("cache.ram_gb = %g is more than all routed experts (%.1f GiB): using %.1f GiB",
                 config.cache.ram_gb, fp.routed_bytes / GiB, fp.routed_bytes / GiB)
        size = fp.routed_bytes
    return size


def min_ram_cache_bytes(fp: Footprint) -> int:
    """One MoE layer's active experts: below this a layer cannot hold its experts while computing them."""
    return fp.experts_per_token * fp.expert_bytes


@dataclass(frozen=True)
class Recommendation:
    threads: int
    ram_gb: float  # 0 (auto) when every routed expert fits
    gpu_memory_gb: float
    gpu_cache_gb: float
    device: str  # what auto resolves to here
    dtype: str  # "auto", or "bfloat16" where float32 resident layers would crowd out the CPU expert cache
    notes: tuple[str, ...]


def _floor_gib(nbytes: int) -> float:
    """Down to a tenth of a GiB, so the written value never exceeds what the rule allows."""
    return max(0, nbytes * 10 // GiB) / 10


def recommend(machine: Machine, fp: Footprint, config: Config | None = None) -> Recommendation:
    """Concrete values for `config init`: threads, the auto-sized RAM cache, the GPU budget and its expert tier."""
    config = config or Config()
    notes = []
    kind = device_kind(config, machine)
    dtype = config.engine.dtype
    ram = auto_ram_cache_bytes(config, fp, machine)
    if kind == "cpu" and dtype == "auto" and ram < fp.routed_bytes:
        half = replace(config, engine=replace(config.engine, dtype="bfloat16"))
        if auto_ram_cache_bytes(half, fp, machine) > ram:
            dtype, config, ram = "bfloat16", half, auto_ram_cache_bytes(half, fp, machine)
            notes.append("resident layers in bfloat16 on the CPU: float32 would leave less RAM for the expert cache")
    if ram < min_ram_cache_bytes(fp):
        notes.append(f"RAM is too small for a useful expert cache: {ram_limit_bytes(machine) / GiB:.1f} GiB usable, "
                     f"{cpu_resident_bytes(config, fp, machine) / GiB:.1f} GiB of it for resident layers and KV cache")
    gpu_budget = gpu_tier = 0
    if _gpu(config, machine) is not None:
        gpu_budget = resolve_gpu_memory_bytes(config, machine)
        kv_tokens = config.engine.max_context * config.engine.max_batch
        need = resident_split(fp.model, "cuda", dtype_name(config, machine), 1 << 62, kv_tokens).gpu_bytes
        gpu_budget = int(_floor_gib(gpu_budget) * GiB)  # the tier is what the written budget leaves
        gpu_tier = max(0, min(gpu_budget - need, fp.routed_bytes))
        if need > gpu_budget:
            notes.append(f"the resident layers and KV cache need {need / GiB:.1f} GiB, more than the "
                         f"{gpu_budget / GiB:.1f} GiB GPU budget: the last layers will run on the CPU")
    fits_all = ram >= fp.routed_bytes  # then 0 (auto) says it exactly, where a rounded size would fall short
    return Recommendation(threads=machine.physical_cores, ram_gb=0.0 if fits_all else _floor_gib(ram),
                          gpu_memory_gb=_floor_gib(gpu_budget), gpu_cache_gb=_floor_gib(gpu_tier), device=kind,
                          dtype=dtype, notes=tuple(notes))


@dataclass(frozen=True)
class MemoryPlan:
    """Where the bytes of a configured model go on a machine, and what does not fit."""

    device: str  # cuda | cpu, after auto
    dtype: str
    resident: ResidentSplit  # resident layers and KV cache on each side
    ram_cache_bytes: int
    ram_cache_auto: bool
    ram_need_bytes: int  # RAM cache + resident layers and KV cache on the CPU
    ram_limit_bytes: int  # RAM - headroom (and no more than available now)
    gpu_budget_bytes: int
    gpu_tier_bytes: int
    gpu_need_bytes: int  # resident + KV + GPU expert tier on the GPU
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def kv_bytes(self) -> int:
        return self.resident.gpu_kv_bytes + self.resident.cpu_kv_bytes


def plan_memory(config: Config, fp: Footprint, machine: Machine) -> MemoryPlan:
    kind = device_kind(config, machine)
    split = split_resident(config, fp, machine)
    ram_cache = resolve_ram_cache_bytes(config, fp, machine)
    ram_need = ram_cache + split.cpu_bytes
    limit = ram_limit_bytes(machine)
    problems, notes = [], []
    gpu_budget = gpu_tier = 0
    if kind == "cuda" and _gpu(config, machine) is None:
        count = len(machine.gpus)
        problems.append(f"engine.device = {config.engine.device!r} but this machine has {count or 'no'} "
                        f"GPU{'' if count == 1 else 's'}")
    elif kind == "cuda":
        gpu_budget = resolve_gpu_memory_bytes(config, machine)
        gpu_tier = gpu_tier_bytes(config, fp)
        num_layers = len(split.placement.layer_devices)
        if split.num_gpu_layers < num_layers:
            notes.append(f"{split.num_gpu_layers} of {num_layers} layers fit the GPU budget; the rest run on the CPU")
        if gpu_tier > gpu_budget:
            problems.append(f"GPU: expert tier {gpu_tier / GiB:.1f} GiB > budget {gpu_budget / GiB:.1f} GiB")
    if ram_need > limit:
        problems.append(f"RAM: {ram_need / GiB:.1f} GiB needed (expert cache {ram_cache / GiB:.1f} GiB + CPU-resident "
                        f"layers and KV cache {split.cpu_bytes / GiB:.1f} GiB) > {limit / GiB:.1f} GiB usable "
                        f"({machine.ram_total / GiB:.1f} GiB - {ram_headroom_bytes(machine) / GiB:.1f} GiB headroom)")
    if ram_cache + gpu_tier < min_ram_cache_bytes(fp):
        problems.append(f"expert cache {ram_cache / GiB:.2f} GiB < one layer's active experts "
                        f"{min_ram_cache_bytes(fp) / GiB:.2f} GiB")
    return MemoryPlan(kind, dtype_name(config, machine), split, ram_cache, not config.cache.ram_gb, ram_need, limit,
                      gpu_budget, gpu_tier, split.gpu_bytes + gpu_tier, tuple(problems), tuple(notes))
