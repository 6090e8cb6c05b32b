"""`kimi-local generate`: token ids in, generated token ids out (the engine's stream, printed)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from kimi_local.commands.common import add_model_argument, load_config, load_with_progress, resolve_model_dir
from kimi_local.settings import add_config_flags


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prompt-ids must be comma-separated integers, got '{text}'") from None
    if not ids:
        raise argparse.ArgumentTypeError("--prompt-ids is empty")
    return ids


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate token ids from prompt token ids",
        description="Run the engine on prompt token ids and print the generated ids as they are produced "
        "(prefill in chunks, then incremental decode over the KV cache).",
    )
    add_model_argument(p)
    p.add_argument("--prompt-ids", type=_ids, required=True, metavar="1,2,3", help="comma-separated prompt token ids")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens to generate (default 32)")
    p.add_argument("--temperature", type=float, default=0.6, help="0 for greedy (default 0.6)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0: all)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--stop-ids", type=_ids, default=None, metavar="ID,ID", help="stop when one of these is generated")
    p.add_argument("--json", action="store_true", help='print one JSON object {"token_ids": [...], ...}')
    p.add_argument("--trace-out", metavar="FILE.npz", default=None,
                   help="record the routing trace (expert ids per token and MoE layer, prefetch guesses, phase)")
    add_config_flags(p, ("engine", "cache"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kimi_local.cache.traces import DECODE
    from kimi_local.engine.sampling import SamplingParams

    config = load_config(args)
    model_dir = resolve_model_dir(args.model, config)
    loaded = load_with_progress(model_dir, config)
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
        max_new_tokens=args.max_new_tokens, stop_ids=frozenset(args.stop_ids or ()),
    )
    recorder = None
    if args.trace_out:
        from kimi_local.cache.recorder import TraceRecorder

        c = loaded.model.config
        recorder = TraceRecorder(c.moe_layer_ids, c.n_routed_experts, c.num_experts_per_tok)
        loaded.model.routing_hooks.append(recorder)
    t0 = time.perf_counter()
    ids = []
    try:
        for token in loaded.engine.generate(args.prompt_ids, params):
            ids.append(token)
            if recorder is not None:
                recorder.phase = DECODE  # every later step decodes
            if not args.json:
                print(token, end=" ", flush=True)
    finally:
        loaded.close()
    seconds = time.perf_counter() - t0
    if recorder is not None:
        recorder.save(args.trace_out)
    if args.json:
        print(json.dumps({"token_ids": ids, "prompt_tokens": len(args.prompt_ids), "seconds": round(seconds, 4)}))
    else:
        print()
        print(f"{len(ids)} tokens in {seconds:.2f} s", file=sys.stderr)
    return 0
