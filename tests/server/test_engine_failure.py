from kimi_local.server.errors import engine_failure


def test_engine_failures_name_shard_and_tensor_but_no_directories():
    error = engine_failure("CheckpointError: /home/me/models/Kimi-K2/model-7-of-61.safetensors: truncated shard: "
                           "tensor 'model.layers.3.mlp.experts.17.up_proj.weight' ends at byte 99")
    assert error.status == 500 and error.code == "engine_error"
    assert error.message == ("generation failed: CheckpointError: model-7-of-61.safetensors: truncated shard: "
                             "tensor 'model.layers.3.mlp.experts.17.up_proj.weight' ends at byte 99")
    assert "/home" not in error.openai_body()["error"]["message"]
    assert engine_failure("OSError: [Errno 5] Input/output error").message.endswith("Input/output error")
    assert engine_failure(None).message == "generation failed: unknown error"
