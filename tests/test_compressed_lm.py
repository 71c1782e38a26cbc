"""The lcc_compressed model: compression at load time, its reference, and the KL it reports."""

import re

import pytest
import torch

from lcc_models.compressed_lm import CompressedHFLM
from lcc_models.compression.layers import CompressedLinear
from lcc_models.spec import ModelArgumentError

TARGET_TYPES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def load(model_dir, **model_args):
    return CompressedHFLM(pretrained=str(model_dir), device="cpu", dtype="float32", **model_args)


def random_ids(vocab_size, length=64, batch=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (batch, length), generator=generator)


def test_kl_is_zero_without_compression(tiny_model_dir):
    lm = load(tiny_model_dir)
    stats = lm.sequence_kl(random_ids(lm.model.config.vocab_size, batch=2))
    assert stats.kl.max() < 1e-6
    assert stats.kl_ref.max() < 1e-6
    assert stats.top1_agree.min() == 1.0
    assert not any(isinstance(module, CompressedLinear) for module in lm.model.modules())


def test_quantized_model_drifts_from_reference(tiny_model_dir):
    lm = load(tiny_model_dir, w_bits=3)
    stats = lm.sequence_kl(random_ids(lm.model.config.vocab_size))
    assert stats.kl.mean() > 1e-4
    assert stats.kl_ref.mean() > 1e-4
    assert stats.nll.shape == (1, 63)


def test_reference_mode_reproduces_uncompressed_model(tiny_model_dir):
    plain = load(tiny_model_dir)
    compressed = load(tiny_model_dir, prune="magnitude", sparsity=0.5, w_bits=4)
    ids = random_ids(plain.model.config.vocab_size)
    with torch.no_grad():
        expected = plain.model(ids).logits
        from lcc_models.compression.layers import reference_mode

        with reference_mode(compressed.model):
            in_reference_mode = compressed.model(ids).logits
        after = compressed.model(ids).logits
    torch.testing.assert_close(in_reference_mode, expected)
    assert not torch.allclose(after, expected)


def test_print_model_shows_compression(tiny_model_dir):
    lm = load(tiny_model_dir, prune="magnitude", sparsity=0.25, w_bits=4, w_group_size=64, w_sym=True)
    text = str(lm.model)
    assert "CompressedLinear(in_features=128, out_features=128, bias=False, prune=magnitude sparsity=0.25 scope=row; w_bits=4 group=64 sym rtn)" in text
    assert "lm_head): Linear" in text
    assert "embed_tokens): Embedding" in text


def test_magnitude_pruning_exact_per_row_in_model(tiny_model_dir):
    lm = load(tiny_model_dir, prune="magnitude", sparsity=0.5)
    layers = [module for module in lm.model.modules() if isinstance(module, CompressedLinear)]
    assert {layer.qualified_name.rpartition(".")[2] for layer in layers} == TARGET_TYPES
    assert len(layers) == 14
    for layer in layers:
        zeros_per_row = (layer.weight == 0).sum(dim=1)
        assert torch.all(zeros_per_row == layer.in_features // 2), layer.qualified_name


def test_model_info_records_spec_and_measurements(tiny_model_dir):
    lm = load(tiny_model_dir, prune="magnitude", sparsity=0.5, w_bits=3)
    info = lm.get_model_info()
    compression = info["compression"]
    assert compression["spec"]["order"] == ["prune:magnitude", "quantize_weights:rtn"]
    assert compression["spec"]["w_group_size"] == 128
    assert set(compression["layer_types"]) == TARGET_TYPES
    for stats in compression["layer_types"].values():
        # Pruned zeros stay zero through quantization; rounding may add a few more.
        assert stats["sparsity"] >= 0.5
        assert stats["bits_per_weight"] == pytest.approx(3 + 19 / 128)
    assert compression["overall"]["layers"] == 14
    assert info["reference"] == "uncompressed weights of pretrained"


def test_unquantized_layers_count_dtype_bits(tiny_model_dir):
    lm = load(tiny_model_dir, prune="magnitude", sparsity=0.3)
    overall = lm.get_model_info()["compression"]["overall"]
    assert overall["bits_per_weight"] == 32.0
    assert overall["sparsity"] == pytest.approx(0.3, abs=0.01)


def test_targets_narrow_compression(tiny_model_dir):
    lm = load(tiny_model_dir, w_bits=4, targets="q_proj+model.layers.1.mlp.down_proj")
    names = sorted(module.qualified_name for module in lm.model.modules() if isinstance(module, CompressedLinear))
    assert names == ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]


def test_targets_matching_nothing_is_an_error(tiny_model_dir):
    with pytest.raises(ModelArgumentError, match=r"invalid targets pattern 'lm_head'.*down_proj.*never compressed"):
        load(tiny_model_dir, w_bits=4, targets="lm_head")


def test_unknown_model_arg_is_an_error(tiny_model_dir):
    with pytest.raises(ModelArgumentError) as error:
        load(tiny_model_dir, w_bit=3)
    message = str(error.value)
    assert "unknown model argument w_bit=3" in message
    assert "Did you mean w_bits" in message
    assert "w_group_size" in message


def test_config_attribute_is_accepted_as_override(tiny_model_dir):
    lm = load(tiny_model_dir, rms_norm_eps=1e-3)
    assert lm.model.config.rms_norm_eps == 1e-3


def test_group_size_must_divide_input_width(tiny_model_dir):
    with pytest.raises(ModelArgumentError) as error:
        load(tiny_model_dir, w_bits=4, w_group_size=96)
    message = str(error.value)
    assert "invalid w_group_size=96" in message
    assert "input width 128 of model.layers.0.self_attn.q_proj" in message
    assert re.search(r"use 32, 64, 128 or -1", message)


def test_invalid_kl_chunk_size(tiny_model_dir):
    with pytest.raises(ModelArgumentError, match="invalid kl_chunk_size=0"):
        load(tiny_model_dir, kl_chunk_size=0)


def test_external_reference_matches_internal(tiny_model_dir):
    internal = load(tiny_model_dir, w_bits=3)
    external = load(tiny_model_dir, w_bits=3, reference=str(tiny_model_dir))
    ids = random_ids(internal.model.config.vocab_size, seed=4)
    expected = internal.sequence_kl(ids)
    actual = external.sequence_kl(ids)
    torch.testing.assert_close(torch.from_numpy(actual.kl), torch.from_numpy(expected.kl), rtol=1e-4, atol=1e-6)
    assert external.get_model_info()["reference"] == str(tiny_model_dir)
    # An external reference makes the in-model copy of the original weights unnecessary.
    assert all(module.reference_weight is None for module in external.model.modules() if isinstance(module, CompressedLinear))


def test_reference_with_other_tokenizer_is_an_error(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from conftest import save_tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.add_tokens(["<extra-token>"])
    other = save_tiny_llama(tmp_path / "other", tokenizer)
    with pytest.raises(ModelArgumentError, match="uses a different tokenizer"):
        load(tiny_model_dir, w_bits=4, reference=str(other))
