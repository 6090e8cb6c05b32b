"""The expert store: routed experts in a RAM cache with a byte budget (plus an optional GPU tier), misses read
from the checkpoint's shards, eviction decided by routing statistics, reads started ahead from predictions.

    store.py        ExpertStore: leases, in-flight reads, prefetch, profile, statistics
    slots.py        the RAM arena of equal page-aligned slots
    reader.py       read plans and O_DIRECT reads of one expert's six tensors
    gpu_tier.py     hot experts copied to the GPU and computed there
    backend.py      CachedExperts: the model's RoutedExperts backend over the store and a kernel
    policy.py       the eviction-policy protocol, LRU and LFU
    kimi_policy.py  the project's policy (evict the lowest estimate, with an LRU duel)
    context_model.py  its estimate: context counts, a prior recognised from earlier contexts, recency
    profile.py      per-model routing profiles for warm starts
    stats.py        the store's counters and derived figures
    traces.py       routing-trace files and the synthetic trace generator
    recorder.py     a routing hook that records traces
    simulate.py     trace replay through a policy; Belady's OPT
    bench_*.py      `kimi-local bench cache | stream | decode`
    setup.py        from the [cache] configuration to a running store
"""
