"""`kimi-local info`: what a checkpoint is, what it needs, how fast it should decode here, and whether it fits.

Works on a downloaded checkpoint and on a directory holding only config.json (to plan before a 1 TB download).
The figures come from the config alone (`footprint.py`), the machine from `sizing.py` with a ~0.5 s memory-read
probe (and an optional disk probe), and the budgets from the effective configuration, flags included.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kimi_local import sizing
from kimi_local.commands import units
from kimi_local.commands.common import add_model_argument, demo_checkpoint_dir
from kimi_local.config import Config, parse_pinned
from kimi_local.footprint import Footprint, estimate_decode, footprint
from kimi_local.model.checkpoint import INDEX_NAME, SINGLE_FILE_NAME
from kimi_local.model.config import ModelConfig
from kimi_local.settings import add_config_flags, resolve_settings

DEFAULT_CONTEXT = 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="checkpoint summary, memory needs and a decode-speed estimate for this machine",
        description="Summarize a checkpoint (architecture; parameters and bytes by tier: GPU/device-resident layers "
        "vs routed experts; KV bytes per token), estimate its memory needs and batch-1 decode tokens/s on this "
        "machine from measured read bandwidths, and check it against the configured budgets. DIR may hold only "
        "config.json, to plan before downloading.",
    )
    add_model_argument(p)
    p.add_argument("--context", type=int, default=DEFAULT_CONTEXT, metavar="N",
                   help=f"context tokens whose KV cache each decoded token reads, for the estimate (default {DEFAULT_CONTEXT})")
    p.add_argument("--disk-probe", action="store_true",
                   help="also measure the disk read rate on the biggest shard (a few seconds; else assumed)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_config_flags(p, ("engine", "cache"))
    p.set_defaults(func=run)


def model_source(model: str | None) -> tuple[Path | None, ModelConfig]:
    """The model directory (or None for the not-yet-created demo) and its config."""
    if model:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model directory '{path}' does not exist")
        return path, ModelConfig.from_file(path / "config.json")
    demo = demo_checkpoint_dir()
    if (demo / "config.json").exists():
        return demo, ModelConfig.from_file(demo / "config.json")
    from kimi_local.model.presets import PRESETS

    return None, ModelConfig.from_dict(PRESETS["demo"], source="demo preset")


def files_summary(path: Path | None) -> dict[str, Any]:
    """Shards named by the index and how many of them are here (no content check: that is `verify`)."""
    if path is None:
        return {"index": False, "shards": 0, "shards_present": 0, "bytes_present": 0}
    if (path / INDEX_NAME).exists():
        try:
            names = sorted(set(json.loads((path / INDEX_NAME).read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path / INDEX_NAME}: unreadable index ({exc!r}); run `kimi-local verify`") from None
    else:
        names = [SINGLE_FILE_NAME] if (path / SINGLE_FILE_NAME).exists() else []
    present = [path / n for n in names if isinstance(n, str) and (path / n).is_file()]
    return {"index": (path / INDEX_NAME).exists(), "shards": len(names), "shards_present": len(present),
            "bytes_present": sum(p.stat().st_size for p in present)}


def budget_problems(config: Config, model: ModelConfig, fp: Footprint, files: dict[str, Any],
                    machine: sizing.Machine, ram_cache_bytes: int) -> list[str]:
    """What the memory plan does not cover: context length, pinned experts, disk space for the download."""
    problems = []
    if config.engine.max_context > model.max_position_embeddings:
        problems.append(f"engine.max_context = {config.engine.max_context} exceeds the model's "
                        f"max_position_embeddings = {model.max_position_embeddings}")
    pins = parse_pinned(config.cache.pinned)
    for layer, expert in pins:
        if layer >= model.num_hidden_layers or not model.is_moe_layer(layer):
            problems.append(f"cache.pinned '{layer}:{expert}': layer {layer} has no routed experts "
                            f"(MoE layers are {model.first_k_dense_replace}..{model.num_hidden_layers - 1})")
        elif expert >= model.n_routed_experts:
            problems.append(f"cache.pinned '{layer}:{expert}': expert {expert} out of range "
                            f"(n_routed_experts = {model.n_routed_experts})")
    if len(pins) * fp.expert_bytes > ram_cache_bytes:
        problems.append(f"cache.pinned: {len(pins)} experts ({units.size(len(pins) * fp.expert_bytes)}) exceed the "
                        f"RAM expert cache ({units.size(ram_cache_bytes)})")
    if files["shards_present"] < files["shards"] or not files["shards"]:
        missing = max(0, fp.checkpoint_bytes - files["bytes_present"])
        if machine.disk_free is not None and missing > machine.disk_free:
            problems.append(f"disk: the checkpoint needs {units.size(missing)} more, {units.size(machine.disk_free)} "
                            f"free at {machine.disk_path}")
    return problems


def build_info(model_dir: Path | None, model: ModelConfig, config: Config, machine: sizing.Machine,
               context_tokens: int = DEFAULT_CONTEXT) -> dict[str, Any]:
    """Everything `info` reports, as plain data (the --json output)."""
    fp = footprint(model)
    plan = sizing.plan_memory(config, fp, machine)
    files = files_summary(model_dir)
    problems = list(plan.problems) + budget_problems(config, model, fp, files, machine, plan.ram_cache_bytes)
    split = plan.resident
    estimate = None
    if machine.memory_bandwidth:
        estimate = estimate_decode(
            fp, ram_cache_bytes=plan.ram_cache_bytes, memory_bandwidth=machine.memory_bandwidth,
            disk_bandwidth=machine.disk_bandwidth, cpu_read_bytes=split.cpu_read_per_token,
            gpu_read_bytes=split.gpu_read_per_token, cpu_kv_bytes_per_token=split.cpu_kv_per_token,
            gpu_kv_bytes_per_token=split.gpu_kv_per_token, gpu_tier_bytes=plan.gpu_tier_bytes,
            gpu_bandwidth=machine.gpu_bandwidth, context_tokens=context_tokens)
    return {
        "model": {
            "path": str(model_dir) if model_dir else None,
            "model_type": model.model_type,
            "architectures": model.extra.get("architectures"),
            "num_layers": model.num_hidden_layers, "num_dense_layers": model.num_hidden_layers - fp.num_moe_layers,
            "num_moe_layers": fp.num_moe_layers, "hidden_size": model.hidden_size,
            "num_heads": model.num_attention_heads, "q_lora_rank": model.q_lora_rank,
            "kv_lora_rank": model.kv_lora_rank, "n_routed_experts": model.n_routed_experts,
            "experts_per_token": model.num_experts_per_tok, "n_shared_experts": model.n_shared_experts,
            "vocab_size": model.vocab_size, "max_position_embeddings": model.max_position_embeddings,
        },
        "files": files,
        "parameters": {"total": fp.total_params, "routed_experts": fp.routed_params, "resident": fp.resident_params,
                       "active_per_token": fp.active_params, "per_expert": fp.expert_params},
        "bytes": {
            "checkpoint": fp.checkpoint_bytes, "routed_experts": fp.routed_bytes, "resident": fp.resident_bytes,
            "per_expert": fp.expert_bytes, "experts_read_per_token": fp.expert_bytes_per_token,
            "kv_per_token": split.gpu_kv_per_token + split.cpu_kv_per_token, "num_tensors": fp.num_tensors,
        },
        "plan": {
            "device": plan.device, "dtype": plan.dtype, "threads": sizing.resolve_threads(config, machine),
            "num_layers": model.num_hidden_layers, "gpu_layers": split.num_gpu_layers,
            "embed_device": split.placement.embed_device.type, "head_device": split.placement.head_device.type,
            "resident_gpu": split.gpu_weight_bytes, "resident_cpu": split.cpu_weight_bytes,
            "kv_gpu": split.gpu_kv_bytes, "kv_cpu": split.cpu_kv_bytes, "kv_cache": plan.kv_bytes,
            "kv_tokens": config.engine.max_context * config.engine.max_batch,
            "read_per_token_gpu": split.gpu_read_per_token, "read_per_token_cpu": split.cpu_read_per_token,
            "ram_cache": plan.ram_cache_bytes, "ram_cache_auto": plan.ram_cache_auto, "ram_need": plan.ram_need_bytes,
            "ram_limit": plan.ram_limit_bytes, "ram_headroom": sizing.ram_headroom_bytes(machine),
            "gpu_budget": plan.gpu_budget_bytes, "gpu_tier": plan.gpu_tier_bytes, "gpu_need": plan.gpu_need_bytes,
            "notes": list(plan.notes),
        },
        "machine": {
            "ram_total": machine.ram_total, "ram_available": machine.ram_available,
            "physical_cores": machine.physical_cores, "logical_cores": machine.logical_cores,
            "gpus": [{"name": g.name, "total": g.total_bytes, "free": g.free_bytes} for g in machine.gpus],
            "disk_path": machine.disk_path, "disk_free": machine.disk_free,
            "memory_bandwidth": machine.memory_bandwidth, "disk_bandwidth": machine.disk_bandwidth,
            "gpu_bandwidth": machine.gpu_bandwidth,
        },
        "estimate": None if estimate is None else {
            "tokens_per_s": estimate.tokens_per_s, "seconds_per_token": estimate.seconds_per_token,
            "hit_rate": estimate.hit_rate, "gpu_hit_rate": estimate.gpu_hit_rate, "seconds": estimate.seconds, "context_tokens": context_tokens,
            "assumptions": list(estimate.assumptions),
        },
        "fits": not problems,
        "problems": problems,
    }


def format_info(info: dict[str, Any]) -> str:
    m, f, p, b, plan, mach, est = (info[k] for k in ("model", "files", "parameters", "bytes", "plan", "machine",
                                                      "estimate"))
    size, count = units.size, units.count
    arch = ", ".join(m["architectures"] or []) or "?"
    lines = [
        ("model", m["path"] or "built-in demo model (not created yet: shown from its preset)"),
        ("", f"{m['model_type']} ({arch}): {m['num_layers']} layers ({m['num_dense_layers']} dense + "
             f"{m['num_moe_layers']} MoE), hidden {m['hidden_size']}, {m['num_heads']} heads, MLA q/kv rank "
             f"{m['q_lora_rank']}/{m['kv_lora_rank']}"),
        ("", f"{m['n_routed_experts']} routed experts per layer ({m['experts_per_token']} active, "
             f"{m['n_shared_experts']} shared), vocab {m['vocab_size']}, context {m['max_position_embeddings']}"),
        ("parameters", f"{count(p['total'])} = routed experts {count(p['routed_experts'])} + resident "
                       f"{count(p['resident'])}; {count(p['active_per_token'])} active per token"),
        ("checkpoint", f"{size(b['checkpoint'])} in {b['num_tensors']} tensors: routed experts "
                       f"{size(b['routed_experts'])} ({size(b['per_expert'])} each), resident {size(b['resident'])}"),
    ]
    if f["shards"]:
        lines.append(("files", f"{f['shards_present']} of {f['shards']} shards present ({size(f['bytes_present'])})"))
    else:
        lines.append(("files", "no weights here yet (config only)"))
    placed = (f"all {plan['num_layers']} layers on the GPU" if plan["gpu_layers"] == plan["num_layers"] else
              f"{plan['gpu_layers']} of {plan['num_layers']} layers on the GPU" if plan["gpu_layers"] else
              "everything on the CPU")
    lines += [
        ("per token", f"reads experts {size(b['experts_read_per_token'])}, resident layers "
                      f"{size(plan['read_per_token_gpu'] + plan['read_per_token_cpu'])}; KV cache "
                      f"{size(b['kv_per_token'])} per context token"),
        ("placement", f"{placed} ({plan['dtype']}); embeddings on {plan['embed_device']}, lm_head on "
                      f"{plan['head_device']}; {plan['threads']} expert threads"),
        ("RAM", f"expert cache {size(plan['ram_cache'])}{' (auto)' if plan['ram_cache_auto'] else ''} + resident "
                f"{size(plan['resident_cpu'])} + KV cache {size(plan['kv_cpu'])} = {size(plan['ram_need'])} of "
                f"{size(plan['ram_limit'])} usable ({size(plan['ram_headroom'])} headroom)"),
    ]
    if plan["device"] == "cuda":
        lines.append(("GPU", f"resident {size(plan['resident_gpu'])} + KV cache {size(plan['kv_gpu'])} + expert tier "
                             f"{size(plan['gpu_tier'])} = {size(plan['gpu_need'])} of a {size(plan['gpu_budget'])} budget"))
    lines += [("", note) for note in plan["notes"]]
    gpus = ", ".join(f"{g['name']} {size(g['total'])}" for g in mach["gpus"]) or "no GPU"
    lines.append(("machine", f"{size(mach['ram_total'])} RAM ({size(mach['ram_available'])} available), "
                             f"{mach['physical_cores']} cores ({mach['logical_cores']} threads), {gpus}"
                             + (f"; {size(mach['disk_free'])} free at {mach['disk_path']}" if mach["disk_free"] is not None else "")))
    lines.append(("bandwidth", f"memory {units.rate(mach['memory_bandwidth'])}, disk "
                               + (units.rate(mach["disk_bandwidth"]) if mach["disk_bandwidth"] else "not probed")
                               + (f", GPU {units.rate(mach['gpu_bandwidth'])}" if mach["gpu_bandwidth"] else "")))
    if est:
        s = est["seconds"]
        parts = ", ".join(f"{name.replace('_', ' ')} {units.seconds(value)}" for name, value in s.items() if value)
        lines.append(("decode", f"~{units.tokens_per_s(est['tokens_per_s'])} at batch 1 "
                                f"({units.seconds(est['seconds_per_token'])}/token: {parts}); experts cached "
                                f"{est['hit_rate']:.0%}"))
        lines += [("assumes" if i == 0 else "", a) for i, a in enumerate(est["assumptions"])]
    lines.append(("fits", "yes" if info["fits"] else "NO"))
    lines += [("", "- " + problem) for problem in info["problems"]]
    return "\n".join(f"{label:<11} {text}" for label, text in lines)


def run(args: argparse.Namespace) -> int:
    settings = resolve_settings(args)
    config = settings.config
    if args.context < 0:
        raise ValueError(f"--context must be >= 0, got {args.context}")
    model_dir, model = model_source(args.model or config.model)
    machine = sizing.probe_machine(model_dir)
    has_shards = model_dir is not None and files_summary(model_dir)["shards_present"] > 0
    if args.disk_probe and not has_shards:
        raise ValueError("--disk-probe needs a model directory with shards to read")
    machine = sizing.with_bandwidths(machine, memory=True, disk=model_dir if args.disk_probe else None,
                                     gpu=bool(machine.gpus), threads=sizing.resolve_threads(config, machine))
    info = build_info(model_dir, model, config, machine, args.context)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
