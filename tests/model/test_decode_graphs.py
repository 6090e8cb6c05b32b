"""DecodeRunner (per-layer decode segments between expert calls) against the model's own decode path.

On the CPU the runner runs eagerly; the Triton latent kernel is replaced by its torch reference where a test
wants the CUDA attention path (whole slot-major cache, per-slot lengths). The `gpu` tests compare captured
CUDA graphs with eager segments and with the model's forward on a GPU.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from kimi_local.config import Config, EngineSection
from kimi_local.engine.engine import Engine
from kimi_local.engine.sampling import SamplingParams
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import Batch, KimiModel, KVCache
from kimi_local.model.decode_graphs import DecodeRunner, Segment
from kimi_local.model.experts import TorchReferenceExperts
from kimi_local.model.placement import Placement
from kimi_local.model.presets import PRESETS
from kimi_local.model.writer import write_checkpoint

CUDA = torch.device("cuda")
PROMPTS = [[5, 17, 300, 2, 999, 45, 77], [9, 8], [1, 2, 3, 4, 5], [700, 3, 3, 12, 40, 41, 42, 43, 44]]


class RecordingExperts(TorchReferenceExperts):
    """The reference backend, remembering every prefetch hint."""

    def __init__(self, source):
        super().__init__(source)
        self.prefetched: list[tuple[int, list]] = []

    def prefetch(self, layer_idx, expert_ids):
        self.prefetched.append((layer_idx, expert_ids.tolist()))


def build(path, **kwargs) -> KimiModel:
    ckpt = Checkpoint.open(path)
    return KimiModel.from_checkpoint(ckpt, RecordingExperts(ckpt), **kwargs)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return build(tiny_checkpoint)


@contextlib.contextmanager
def stand_in_kernel(model, kernel):
    """Every layer's latent attention kernel replaced by `kernel` (None: the model's torch path)."""
    saved = [layer.self_attn.latent_attention for layer in model.layers]
    for layer in model.layers:
        layer.self_attn.latent_attention = kernel
    try:
        yield
    finally:
        for layer, k in zip(model.layers, saved):
            layer.self_attn.latent_attention = k


def scenario(model, monkeypatch, runner: str = "", toggle_prefetch_at: int | None = None) -> dict:
    """Three requests of different lengths in four slots (one idle), one aborted mid-decode, one arriving late
    into a freed slot; `runner` "eager" or "captured": the engine decodes through a DecodeRunner, else through
    forward. Returns everything the paths must agree on."""
    hooked, forward_kinds, runner_calls = [], [], []
    real_forward = model.forward

    def forward(batch, cache, logits_rows=None):
        forward_kinds.append("prefill" if batch.is_prefill else "decode")
        return real_forward(batch, cache, logits_rows)

    def make_runner(cache):
        inner = DecodeRunner(model, cache, capture=runner == "captured")

        def run(batch):
            runner_calls.append(len(batch.slots))
            return inner(batch)

        return run

    def hook(layer_idx, ids, predicted):
        hooked.append((layer_idx, ids.tolist(), None if predicted is None else predicted.tolist()))

    with monkeypatch.context() as m:
        m.setattr(model, "forward", forward)
        if runner:
            m.setattr(model, "decode_runner", make_runner)
        model.routing_hooks.append(hook)
        model.experts.prefetched.clear()
        try:
            engine = Engine(model, 64, max_batch=4, prefill_chunk=3)
            budgets = (12, 4, 30)
            requests = [engine.add_request(p, SamplingParams(temperature=0, max_new_tokens=n))
                        for p, n in zip(PROMPTS, budgets)]
            steps = 0
            while engine.has_work():
                engine.step()
                steps += 1
                if steps == 9:
                    engine.abort(requests[2].request_id)
                if steps == 12:
                    requests.append(engine.add_request(PROMPTS[3], SamplingParams(temperature=0, max_new_tokens=6)))
                if steps == toggle_prefetch_at:
                    model.prefetch_enabled = not model.prefetch_enabled
        finally:
            model.routing_hooks.remove(hook)
            model.prefetch_enabled = True
    return {"ids": [r.output_ids for r in requests], "reasons": [r.finish_reason for r in requests],
            "hooked": hooked, "prefetched": list(model.experts.prefetched), "forward": forward_kinds,
            "runner": runner_calls, "decode_steps": engine.stats.decode_steps}


@pytest.fixture(scope="module")
def baseline(model):
    with pytest.MonkeyPatch.context() as m:
        return scenario(model, m)


@pytest.mark.parametrize("kernel", ["reference kernel", "torch path"])
def test_runner_decodes_like_forward(model, baseline, monkeypatch, kernel):
    """Same greedy tokens, routing-hook ids, predictions and prefetch hints as the model's forward, with idle
    slots, an abort and a late request; the engine sends every decode step to the runner."""
    from kimi_local.kernels.triton_mla import mla_decode_reference

    with stand_in_kernel(model, mla_decode_reference if kernel == "reference kernel" else None):
        got = scenario(model, monkeypatch, "eager")
    assert baseline["reasons"] == ["length", "length", "abort", "length"]
    assert 0 < len(baseline["ids"][2]) < 30  # aborted mid-decode
    assert got["ids"] == baseline["ids"] and got["reasons"] == baseline["reasons"]
    assert got["hooked"] == baseline["hooked"]
    assert any(p is not None for _, _, p in got["hooked"])
    assert got["prefetched"] == baseline["prefetched"] and got["prefetched"]
    assert "decode" not in got["forward"] and got["forward"] == [k for k in baseline["forward"] if k == "prefill"]
    assert len(got["runner"]) == got["decode_steps"] == baseline["decode_steps"]
    assert {1, 2} <= set(got["runner"])  # batches smaller than the slot count: idle rows


def test_prefetch_switched_off_mid_run(model, monkeypatch):
    """No hint and no prediction after prefetching is switched off (captured: see the gpu test)."""
    with pytest.MonkeyPatch.context() as m:
        expected = scenario(model, m, toggle_prefetch_at=10)
    got = scenario(model, monkeypatch, "eager", toggle_prefetch_at=10)
    assert got["ids"] == expected["ids"]
    assert got["hooked"] == expected["hooked"] and got["prefetched"] == expected["prefetched"]
    assert expected["hooked"][-1][2] is None and any(p is not None for _, _, p in expected["hooked"])


def test_slots_outside_the_batch_keep_their_cache(model):
    """A batch of two of three running sequences (the engine's one-by-one retry leaves slots out, and slot 2 is
    free): logits and written KV rows match forward; every other cache row is left bit for bit."""
    c = model.config
    prompts = {0: PROMPTS[0], 1: PROMPTS[2], 3: PROMPTS[3]}
    cache = KVCache.allocate(c, 4, 32, model.dtype, "cpu")
    for slot, prompt in prompts.items():
        n = len(prompt)
        model(Batch(torch.tensor(prompt), torch.arange(n), torch.full((n,), slot), True), cache)
    for layer_kv, layer_pe in zip(cache.kv, cache.pe):
        layer_kv[2].normal_(), layer_pe[2].normal_()  # a free slot with stale rows
    twin = KVCache([t.clone() for t in cache.kv], [t.clone() for t in cache.pe])
    before = KVCache([t.clone() for t in cache.kv], [t.clone() for t in cache.pe])
    batch = Batch(torch.tensor([11, 22]), torch.tensor([len(prompts[3]), len(prompts[0])]), torch.tensor([3, 0]), False)

    logits = DecodeRunner(model, cache, capture=False)(batch)
    expected = model(batch, twin)
    assert logits.shape == (2, c.vocab_size)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    for new, ref, old in ((cache.kv, twin.kv, before.kv), (cache.pe, twin.pe, before.pe)):
        for layer_new, layer_ref, layer_old in zip(new, ref, old):
            assert torch.equal(layer_new[[1, 2]], layer_old[[1, 2]])
            torch.testing.assert_close(layer_new, layer_ref, rtol=1e-5, atol=1e-5)
            assert not torch.equal(layer_new[3, len(prompts[3])], layer_old[3, len(prompts[3])])


class FakeGraph:
    """A CUDA graph's replay, emulated on the CPU: the recorded function runs again and its results land in the
    tensors the capture returned. A replay also poisons every other segment's outputs with NaN, as the graphs'
    shared memory pool may: the runner must already have copied out what it keeps."""

    def __init__(self, segment: Segment, all_segments: list[Segment]):
        self.segment, self.all_segments = segment, all_segments

    def replay(self):
        for other in self.all_segments:
            if other.graph is not None and other is not self.segment:
                for t in outputs(other.static_out):
                    t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1)
        fresh = self.segment.fn(self.segment.static_in, None)
        for old, new in zip(outputs(self.segment.static_out), outputs(fresh), strict=True):
            old.copy_(new)


def outputs(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if t is not None]


@pytest.fixture
def emulated_graphs(monkeypatch):
    """DecodeRunner(capture=True) on the CPU records its segments as FakeGraphs; `fail_at` names a segment
    whose capture raises."""
    state = {"fail_at": None, "runners": [], "captured": []}
    real_init = DecodeRunner.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        state["runners"].append(self)

    def capture(self, example, stream, pool):
        if self.name == state["fail_at"]:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.static_in = example.clone()
        self.static_out = self.fn(self.static_in, None)
        self.graph = FakeGraph(self, state["captured"])
        state["captured"].append(self)

    monkeypatch.setattr(DecodeRunner, "graph_device", "cpu")
    monkeypatch.setattr(DecodeRunner, "_capture_resources", staticmethod(lambda device: (None, None)))
    monkeypatch.setattr(DecodeRunner, "__init__", init)
    monkeypatch.setattr(Segment, "capture", capture)
    return state


def test_emulated_graph_replays_decode_like_forward(model, baseline, monkeypatch, emulated_graphs):
    """The captured mode's protocol (static inputs, outputs rewritten in place by every replay, other segments'
    outputs clobbered) with the whole-cache attention a graph needs, on the CPU."""
    got = scenario(model, monkeypatch, "captured")
    runner = emulated_graphs["runners"][-1]
    assert runner.is_captured and all(s.graph is not None for s in runner.segments)
    assert len(emulated_graphs["captured"]) == len(model.layers) + 1
    assert got["ids"] == baseline["ids"] and got["hooked"] == baseline["hooked"]
    assert got["prefetched"] == baseline["prefetched"]


def test_failed_capture_leaves_the_runner_eager(model, baseline, monkeypatch, emulated_graphs, caplog):
    emulated_graphs["fail_at"] = "layer 1"
    with caplog.at_level(logging.WARNING, logger="kimi_local.model.decode_graphs"):
        got = scenario(model, monkeypatch, "captured")
    assert not emulated_graphs["runners"][-1].is_captured
    assert "segment 'layer 1' failed" in caplog.text and "run eagerly" in caplog.text
    assert got["ids"] == baseline["ids"] and got["hooked"] == baseline["hooked"]


@pytest.mark.parametrize("batch, match", [
    (Batch(torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([0, 0]), True), "decode batches"),
    (Batch(torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([1, 1]), False), "distinct slots"),
    (Batch(torch.tensor([1]), torch.tensor([3]), torch.tensor([4]), False), "distinct slots"),
    (Batch(torch.tensor([1]), torch.tensor([32]), torch.tensor([0]), False), "positions"),
    (Batch(torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([0]), False), "one input id"),
])
def test_bad_batches_are_refused(model, batch, match):
    runner = DecodeRunner(model, KVCache.allocate(model.config, 4, 32, model.dtype, "cpu"), capture=False)
    with pytest.raises(ValueError, match=match):
        runner(batch)


def test_cache_must_fit_the_model(model):
    short = KVCache.allocate(model.config, 2, 8, model.dtype, ("cpu",) * 2)
    with pytest.raises(ValueError, match="cache has 2 layers"):
        DecodeRunner(model, short)


def test_no_runner_without_cuda_layers_or_when_switched_off(model):
    cache = KVCache.allocate(model.config, 2, 8, model.dtype, "cpu")
    assert model.cuda_graphs is True
    assert model.decode_runner(cache) is None  # every layer on the CPU: forward decodes
    model.cuda_graphs = False
    try:
        assert model.decode_runner(cache) is None
    finally:
        model.cuda_graphs = True


@pytest.mark.parametrize("switch", [True, False])
def test_loader_passes_the_config_switch(tiny_checkpoint, switch):
    from kimi_local.engine.loader import load

    config = Config(engine=EngineSection(device="cpu", expert_backend="torch", max_context=32, max_batch=1,
                                         cuda_graphs=switch))
    loaded = load(tiny_checkpoint, config)
    try:
        assert loaded.model.cuda_graphs is switch
    finally:
        loaded.close()


# -- on a GPU ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pow2_checkpoint(tmp_path_factory):
    """tiny with power-of-two latent widths, so that CUDA attention runs the Triton latent kernel."""
    return write_checkpoint({**PRESETS["tiny"], "kv_lora_rank": 128}, tmp_path_factory.mktemp("pow2") / "c", seed=1)


def engine_tokens(model, max_batch=4, **engine_kwargs):
    """Greedy tokens of three concurrent requests (one slot idle) and the engine that made them."""
    engine = Engine(model, 64, max_batch=max_batch, prefill_chunk=4, **engine_kwargs)
    requests = [engine.add_request(p, SamplingParams(temperature=0, max_new_tokens=12)) for p in PROMPTS[:3]]
    while engine.has_work():
        engine.step()
    return [r.output_ids for r in requests], engine


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["tiny", "pow2"])
@pytest.mark.parametrize("max_batch", [4, 6])  # 4: the fp8 GEMV; 6 rows: the GEMM variant
def test_captured_graphs_equal_eager_segments_on_cuda(tiny_checkpoint, pow2_checkpoint, which, max_batch):
    path = tiny_checkpoint if which == "tiny" else pow2_checkpoint
    model = build(path, dtype=torch.bfloat16, device=CUDA)
    assert (model.layers[0].self_attn.latent_attention is not None) == (which == "pow2")
    captured, engine = engine_tokens(model, max_batch)
    assert isinstance(engine._decode_runner, DecodeRunner) and engine._decode_runner.is_captured
    eager_model = build(path, dtype=torch.bfloat16, device=CUDA)
    eager_model.decode_runner = lambda cache: DecodeRunner(eager_model, cache, capture=False)
    eager, _ = engine_tokens(eager_model, max_batch)
    assert captured == eager

    # one step side by side on identical caches
    c = model.config
    caches = [KVCache.allocate(c, max_batch, 32, torch.bfloat16, CUDA) for _ in range(2)]
    for cache in caches:
        for slot, prompt in enumerate(PROMPTS[:2]):
            n = len(prompt)
            model(Batch(torch.tensor(prompt, device=CUDA), torch.arange(n, device=CUDA),
                        torch.full((n,), slot, device=CUDA), True), cache)
    batch = Batch(torch.tensor([3, 4], device=CUDA), torch.tensor([len(PROMPTS[1]), len(PROMPTS[0])], device=CUDA),
                  torch.tensor([1, 0], device=CUDA), False)
    graphs, plain = DecodeRunner(model, caches[0], capture=True), DecodeRunner(model, caches[1], capture=False)
    for _ in range(2):  # the first call captures, the second replays
        a, b = graphs(batch), plain(batch)
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert graphs.is_captured and not plain.is_captured


@pytest.mark.gpu
def test_engine_with_graphs_decodes_like_forward_on_cuda(pow2_checkpoint):
    """float32 activations (fp8 weights): the graphs' padded slot-major step against forward's batch."""
    model = build(pow2_checkpoint, dtype=torch.float32, device=CUDA)
    with_graphs, engine = engine_tokens(model)
    assert engine._decode_runner.is_captured
    model.cuda_graphs = False
    without, engine = engine_tokens(model)
    assert engine._decode_runner is None
    assert with_graphs == without


@pytest.mark.gpu
def test_failed_capture_falls_back_to_eager(tiny_checkpoint, monkeypatch, caplog):
    model = build(tiny_checkpoint, dtype=torch.float32, device=CUDA)
    expected, _ = engine_tokens(model)

    def broken(self, *args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(Segment, "capture", broken)
    with caplog.at_level(logging.WARNING, logger="kimi_local.model.decode_graphs"):
        got, engine = engine_tokens(model)
    assert not engine._decode_runner.is_captured
    assert "run eagerly" in caplog.text and "not permitted" in caplog.text
    assert got == expected


@pytest.mark.gpu
def test_split_placement_graphs_cuda_layers_only(tiny_checkpoint):
    """Layers on CUDA, CPU, CUDA with lm_head on the CPU: the CUDA segments are captured, the rest run eagerly,
    predictions cross the device boundary; tokens as forward's."""
    split = Placement((CUDA, torch.device("cpu"), CUDA), CUDA, torch.device("cpu"), torch.float32)
    model = build(tiny_checkpoint, placement=split)
    with_graphs, engine = engine_tokens(model)
    runner = engine._decode_runner
    assert [s.graph is not None for s in runner.segments] == [True, False, True, False]
    model.cuda_graphs = False
    without, _ = engine_tokens(model)
    assert with_graphs == without


@pytest.mark.gpu
def test_captured_runner_routes_like_forward_and_rebuilds_on_prefetch_switch(pow2_checkpoint, monkeypatch):
    """float32 on CUDA: hooks, predictions and prefetch hints as forward's; the graphs are recorded again when
    prefetching is switched off (the prediction is part of them)."""
    model = build(pow2_checkpoint, dtype=torch.float32, device=CUDA)
    with pytest.MonkeyPatch.context() as m:
        expected = scenario(model, m, toggle_prefetch_at=10)
    got = scenario(model, monkeypatch, "captured", toggle_prefetch_at=10)
    assert got["ids"] == expected["ids"] and got["reasons"] == expected["reasons"]
    assert got["hooked"] == expected["hooked"] and got["prefetched"] == expected["prefetched"]
    assert expected["hooked"][-1][2] is None and len(got["runner"]) == got["decode_steps"]
