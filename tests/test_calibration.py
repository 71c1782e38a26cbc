"""Calibration data: loading, sampling, and the block-by-block capture of activations."""

import json

import pytest
import torch

from lcc_models.compression.blocks import find_decoder_blocks
from lcc_models.compression.calibration import (
    CalibrationDataError,
    calibration_tokens,
    capture_block_inputs,
    read_documents,
    run_block,
)


def tiny_llama(num_key_value_heads=2, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def test_jsonl_missing_text_names_file_and_line(tmp_path):
    path = tmp_path / "calibration.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n\n" + json.dumps({"context": "no text field"}) + "\n")
    with pytest.raises(CalibrationDataError, match=r"calibration\.jsonl, line 3: expected a JSON object with a string field 'text'"):
        read_documents(str(path))


def test_jsonl_invalid_json_names_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(CalibrationDataError, match=r"broken\.jsonl, line 2: invalid JSON"):
        read_documents(str(path))


def test_plain_text_file_is_one_document(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\n\nsecond paragraph\n")
    assert read_documents(str(path)) == ["first line\n\nsecond paragraph\n"]


def test_hub_failure_names_local_alternative(monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(CalibrationDataError, match=r"calib_data=c4 .*pass calib_data=<local file>"):
        read_documents("c4")


def test_windows_shape_bos_and_seed(demo_tokenizer):
    documents = [" ".join(f"value_{index}_{position} = {index * position}" for position in range(40)) for index in range(30)]
    tokens = calibration_tokens(demo_tokenizer, documents, "test", nsamples=6, seqlen=64, seed=1)
    assert tokens.shape == (6, 64)
    assert tokens.dtype == torch.long
    if demo_tokenizer.bos_token_id is not None:
        assert torch.all(tokens[:, 0] == demo_tokenizer.bos_token_id)
    again = calibration_tokens(demo_tokenizer, documents, "test", nsamples=6, seqlen=64, seed=1)
    other = calibration_tokens(demo_tokenizer, documents, "test", nsamples=6, seqlen=64, seed=2)
    assert torch.equal(tokens, again)
    assert not torch.equal(tokens, other)
    assert len({tuple(row.tolist()) for row in tokens}) == 6


def test_too_little_text_is_an_error(demo_tokenizer):
    with pytest.raises(CalibrationDataError, match=r"calib_nsamples=50 were requested"):
        calibration_tokens(demo_tokenizer, ["short text"], "tiny.txt", nsamples=50, seqlen=64, seed=0)


@pytest.mark.parametrize("num_key_value_heads", [4, 2])
def test_block_by_block_matches_full_forward(num_key_value_heads):
    model = tiny_llama(num_key_value_heads)
    _, blocks = find_decoder_blocks(model)
    tokens = torch.randint(0, 300, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        inputs = capture_block_inputs(model, blocks, tokens)
        expected = [model(input_ids=sample.unsqueeze(0), output_hidden_states=True).hidden_states for sample in tokens]
        for block_index, block in enumerate(blocks):
            for sample_index, hidden in enumerate(inputs.hidden_states):
                torch.testing.assert_close(hidden, expected[sample_index][block_index], rtol=1e-5, atol=1e-5)
            inputs.hidden_states = run_block(block, inputs)


@pytest.mark.parametrize(
    "model_args",
    [
        {"prune": "wanda", "sparsity": 0.5},
        {"prune": "sparsegpt", "nm": "2:4"},
        {"w_bits": 4, "w_group_size": 32, "w_method": "gptq", "salient_by": "activation"},
    ],
)
def test_calibrated_methods_on_mistral_gqa(model_args):
    from transformers import MistralConfig, MistralForCausalLM

    from lcc_models.compression.walk import compress_model
    from lcc_models.spec import CompressionSpec

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=None,
    )
    model = MistralForCausalLM(config).eval()
    ids = torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    spec, _ = CompressionSpec.from_model_args(model_args)
    tokens = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(2))
    report = compress_model(model, spec, calibration_tokens=tokens)
    assert report.by_type["k_proj"].layers == 2
    assert report.by_type["k_proj"].weights == 2 * 16 * 64  # 2 kv heads of 8 channels each
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.isfinite(after).all()
    assert not torch.allclose(after, before)
