import numpy as np
import pytest

from kimi_local.cache.recorder import TraceRecorder
from kimi_local.cache.simulate import access_stream
from kimi_local.cache.traces import DECODE, PADDING, PREFILL, load_trace
from kimi_local.engine.engine import Engine
from kimi_local.engine.sampling import SamplingParams
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import KimiModel
from kimi_local.model.experts import TorchReferenceExperts


def test_records_a_generation(tiny_checkpoint, tmp_path):
    with Checkpoint.open(tiny_checkpoint) as ckpt:
        c = ckpt.config
        model = KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt))
        recorder = TraceRecorder(c.moe_layer_ids, c.n_routed_experts, c.num_experts_per_tok)
        seen = []
        model.routing_hooks.append(lambda layer, ids, pred: seen.append((layer, ids.clone())))
        model.routing_hooks.append(recorder)
        for prompt in ([5, 17, 300, 2, 9], [1, 2, 3]):
            recorder.new_sequence()
            for _ in Engine(model, 64, 1, prefill_chunk=2).generate(prompt, SamplingParams(temperature=0,
                                                                                       max_new_tokens=4)):
                recorder.phase = DECODE
    path = tmp_path / "t.npz"
    recorder.save(path)
    trace = load_trace(path)
    assert trace.experts.shape == (2, 8, 2, 4)  # longest: 5 prompt + 3 decoded (the 4th token runs no step)
    assert trace.phase[0].tolist() == [PREFILL] * 5 + [DECODE] * 3
    assert trace.phase[1].tolist() == [PREFILL] * 3 + [DECODE] * 3 + [PADDING] * 2
    first_layer_ids = np.concatenate([ids.numpy() for layer, ids in seen if layer == 1])
    assert np.array_equal(trace.experts[0, :, 0], first_layer_ids[:8])  # same ids, token order kept
    assert trace.pred is not None and (trace.pred[0, 5:, 1] >= 0).all()  # layer 2 was predicted while decoding
    assert access_stream(trace).keys.size > 0


def test_refuses_bad_hook_input():
    recorder = TraceRecorder([1, 2], 16, 4)
    with pytest.raises(ValueError, match=r"must be \[N, 4\]"):
        import torch

        recorder(1, torch.zeros((3, 2), dtype=torch.int64), None)
    with pytest.raises(ValueError, match="nothing was recorded"):
        recorder.trace()
