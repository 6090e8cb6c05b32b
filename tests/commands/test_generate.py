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
