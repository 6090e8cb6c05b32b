import json

from kimi_local.cli import main
from kimi_local.engine.engine import Engine
from kimi_local.engine.sampling import SamplingParams
from kimi_local.model.checkpoint import Checkpoint
from kimi_local.model.deepseek import KimiModel
from kimi_local.model.experts import TorchReferenceExperts


def test_generate_json_prints_the_engine_stream(tiny_checkpoint, capsys):
    code = main(["generate", "--model", str(tiny_checkpoint), "--prompt-ids", "1,2,3", "--max-new-tokens", "5",
                 "--temperature", "0", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ckpt = Checkpoint.open(tiny_checkpoint)
    engine = Engine(KimiModel.from_checkpoint(ckpt, TorchReferenceExperts(ckpt)), 64, 1)
    assert out["token_ids"] == list(engine.generate([1, 2, 3], SamplingParams(temperature=0, max_new_tokens=5)))


def test_errors_are_one_line(tmp_path, capsys):
    code = main(["generate", "--model", str(tmp_path / "missing"), "--prompt-ids", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().count("\n") == 0 and str(tmp_path / "missing") in err and "Traceback" not in err


def test_trace_out_records_the_routing(tiny_checkpoint, tmp_path, capsys):
    from kimi_local.cache.traces import DECODE, PREFILL, load_trace

    trace_path = tmp_path / "trace.npz"
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt-ids", "1,2,3,4", "--max-new-tokens", "6",
                 "--temperature", "0", "--json", "--trace-out", str(trace_path)]) == 0
    trace = load_trace(trace_path)
    config = Checkpoint.open(tiny_checkpoint).config
    # 4 prompt tokens + 5 decode steps (the 6th token is sampled from the 5th step's logits)
    assert trace.experts.shape == (1, 9, len(config.moe_layer_ids), config.num_experts_per_tok)
    assert list(trace.phase[0]) == [PREFILL] * 4 + [DECODE] * 5
    assert ((trace.experts >= 0) & (trace.experts < config.n_routed_experts)).all()
    assert trace.pred is not None and (trace.pred[0, :, 1:] >= 0).all()  # layers after the first MoE layer are predicted
