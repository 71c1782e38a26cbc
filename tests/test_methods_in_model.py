"""Every compression method through lcc_compressed on a tiny LLaMA: what lands in the model and its info."""

import pytest
import torch

from lcc_models.compressed_lm import CompressedHFLM
from lcc_models.compression.layers import CompressedLinear, reference_mode
from lcc_models.spec import ModelArgumentError

CALIBRATION = {"calib_nsamples": 4, "calib_seqlen": 64}


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    from lcc_tasks.text_sources import python_documentation

    path = tmp_path_factory.mktemp("calibration") / "calibration.txt"
    path.write_text(python_documentation()[:200_000], encoding="utf-8")
    return str(path)


def load(model_dir, **model_args):
    return CompressedHFLM(pretrained=str(model_dir), device="cpu", dtype="float32", **model_args)


def random_ids(vocab_size, length=48, seed=0):
    return torch.randint(3, vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))


def compressed_layers(lm):
    return [module for module in lm.model.modules() if isinstance(module, CompressedLinear)]


@pytest.mark.parametrize(
    ("model_args", "order"),
    [
        ({"prune": "wanda", "sparsity": 0.5}, ["prune:wanda"]),
        ({"prune": "sparsegpt", "sparsity": 0.5}, ["prune:sparsegpt"]),
        ({"w_bits": 4, "w_method": "gptq", "gptq_act_order": "true"}, ["quantize_weights:gptq"]),
        ({"w_bits": 3, "salient_by": "activation"}, ["quantize_weights:rtn+salient"]),
    ],
)
def test_calibrated_methods_run(tiny_model_dir, calibration_file, model_args, order):
    lm = load(tiny_model_dir, calib_data=calibration_file, **CALIBRATION, **model_args)
    compression = lm.get_model_info()["compression"]
    assert compression["spec"]["order"] == order
    assert compression["calibration_seconds"] > 0
    stats = lm.sequence_kl(random_ids(lm.model.config.vocab_size))
    assert stats.kl.mean() > 0


def test_wanda_row_sparsity_exact(tiny_model_dir, calibration_file):
    lm = load(tiny_model_dir, prune="wanda", sparsity=0.5, calib_data=calibration_file, **CALIBRATION)
    for layer in compressed_layers(lm):
        assert torch.all((layer.weight == 0).sum(dim=1) == layer.in_features // 2), layer.qualified_name


def test_calibration_feeds_compressed_outputs(tiny_model_dir, calibration_file, monkeypatch):
    # The statistics of block 1 must come from block 0 as it is after compression.
    from lcc_models.compression import walk

    seen = []
    original = walk.collect_statistics

    def recording(block, layers, inputs, needs):
        seen.append([hidden.clone() for hidden in inputs.hidden_states])
        return original(block, layers, inputs, needs)

    monkeypatch.setattr(walk, "collect_statistics", recording)
    lm = load(tiny_model_dir, prune="wanda", sparsity=0.5, calib_data=calibration_file, **CALIBRATION)
    from lcc_models.compression.calibration import calibration_tokens, read_documents

    tokens = calibration_tokens(lm.tokenizer, read_documents(calibration_file), "", 4, 64, 0)
    with torch.no_grad():
        after = lm.model(input_ids=tokens[:1], output_hidden_states=True).hidden_states[1]
        with reference_mode(lm.model):
            before = lm.model(input_ids=tokens[:1], output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(seen[1][0], after, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(seen[1][0], before, rtol=1e-3, atol=1e-3)


def test_random_pruning_reproducible(tiny_model_dir):
    first = load(tiny_model_dir, prune="random", sparsity=0.1, seed=5)
    second = load(tiny_model_dir, prune="random", sparsity=0.1, seed=5)
    for left, right in zip(compressed_layers(first), compressed_layers(second)):
        assert torch.equal(left.weight == 0, right.weight == 0)
    sparsity = first.get_model_info()["compression"]["overall"]["sparsity"]
    assert sparsity == pytest.approx(0.1, abs=0.01)


def test_n_of_m_in_model(tiny_model_dir):
    lm = load(tiny_model_dir, prune="magnitude", nm="2:4")
    for layer in compressed_layers(lm):
        groups = layer.weight.reshape(layer.out_features, -1, 4)
        assert torch.all((groups != 0).sum(dim=2) <= 2)
    assert lm.get_model_info()["compression"]["spec"]["nm"] == "2:4"


def test_wanda_then_w4_keeps_zeros(tiny_model_dir, calibration_file):
    lm = load(tiny_model_dir, prune="wanda", sparsity=0.5, w_bits=4, calib_data=calibration_file, **CALIBRATION)
    compression = lm.get_model_info()["compression"]
    assert compression["spec"]["order"] == ["prune:wanda", "quantize_weights:rtn"]
    # Quantization may round more weights to zero, never fewer.
    assert compression["overall"]["sparsity"] >= 0.5
    assert compression["overall"]["bits_per_weight"] == pytest.approx(4 + 20 / 128)
    assert "prune=wanda sparsity=0.5 scope=row; w_bits=4 group=128 asym rtn" in str(lm.model)


def test_mixed_precision_reports_fraction_and_bits(tiny_model_dir):
    lm = load(tiny_model_dir, w_bits=3, w_group_size=32, salient_frac=0.05)
    overall = lm.get_model_info()["compression"]["overall"]
    layers = compressed_layers(lm)
    groups = sum(layer.quantization_groups for layer in layers)
    salient = sum(round(0.05 * layer.quantization_groups) for layer in layers)
    assert overall["salient_fraction"] == pytest.approx(salient / groups)
    low, high = 3 + 19 / 32, 8 + 24 / 32
    expected_bits = sum(
        layer.weight.numel() * (high * layer.salient_groups + low * (layer.quantization_groups - layer.salient_groups))
        / layer.quantization_groups
        for layer in layers
    ) / sum(layer.weight.numel() for layer in layers)
    assert overall["bits_per_weight"] == pytest.approx(expected_bits)


def test_mixed_precision_lowers_kl(tiny_model_dir):
    ids = random_ids(4096, length=64)
    plain = load(tiny_model_dir, w_bits=3).sequence_kl(ids).kl.mean()
    mixed = load(tiny_model_dir, w_bits=3, salient_frac=0.2).sequence_kl(ids).kl.mean()
    assert mixed < plain


def test_weight_activation_quantization(tiny_model_dir):
    lm = load(tiny_model_dir, w_bits=8, a_bits=4)
    assert lm.get_model_info()["compression"]["spec"]["order"] == ["quantize_weights:rtn", "quantize_activations:per_token"]
    w8a4 = lm.sequence_kl(random_ids(lm.model.config.vocab_size)).kl.mean()
    w8 = load(tiny_model_dir, w_bits=8).sequence_kl(random_ids(lm.model.config.vocab_size)).kl.mean()
    assert w8a4 > w8


def test_kv_cache_quantization_leaves_weights(tiny_model_dir):
    plain = load(tiny_model_dir)
    lm = load(tiny_model_dir, kv_bits=3)
    assert not compressed_layers(lm)
    for (name, tensor), (_, expected) in zip(lm.model.state_dict().items(), plain.model.state_dict().items()):
        assert torch.equal(tensor, expected), name
    assert lm.get_model_info()["compression"]["kv_cache"]["kv_bits"] == 3
    assert lm.get_model_info()["compression"]["overall"] is None
    assert lm.sequence_kl(random_ids(lm.model.config.vocab_size)).kl.mean() > 0


def test_zero_noise_is_exactly_reference(tiny_model_dir):
    lm = load(tiny_model_dir, kv_noise_std=0.0)
    stats = lm.sequence_kl(random_ids(lm.model.config.vocab_size))
    assert (stats.kl == 0).all()
    noisy = load(tiny_model_dir, kv_noise_std=0.5).sequence_kl(random_ids(lm.model.config.vocab_size))
    assert noisy.kl.mean() > 0


def test_calibration_length_above_limit_rejected_before_load(tiny_model_dir, calibration_file, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(HFLM, "_create_model", fail)
    with pytest.raises(ModelArgumentError, match=r"invalid calib_seqlen=8192: the model accepts at most 4096 positions"):
        load(tiny_model_dir, prune="wanda", sparsity=0.5, calib_data=calibration_file, calib_seqlen=8192)


def test_unreachable_hub_calibration_rejected_before_load(tiny_model_dir, monkeypatch):
    import datasets
    from lm_eval.models.huggingface import HFLM

    from lcc_models.compression.calibration import CalibrationDataError

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded")

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to the hub")

    monkeypatch.setattr(HFLM, "_create_model", fail)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(CalibrationDataError, match="calib_data=<local file>"):
        load(tiny_model_dir, prune="wanda", sparsity=0.5)


def test_prequantized_checkpoint_against_dense_reference(tiny_model_dir, tmp_path):
    # A checkpoint quantized elsewhere, evaluated against the dense model it came from,
    # gives the same KL as compressing in place.
    in_place = load(tiny_model_dir, w_bits=3)
    saved = tmp_path / "w3-checkpoint"
    in_place.model.save_pretrained(saved)
    in_place.tokenizer.save_pretrained(saved)
    external = load(saved, reference=str(tiny_model_dir))
    ids = random_ids(in_place.model.config.vocab_size)
    expected = in_place.sequence_kl(ids)
    actual = external.sequence_kl(ids)
    torch.testing.assert_close(actual.kl, expected.kl, rtol=1e-4, atol=1e-6)
    assert external.get_model_info()["reference"] == str(tiny_model_dir)


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ({"w_bits": 4, "w_group_size": 100}, r"invalid w_group_size=100: it does not divide the input width 128"),
        ({"kv_bits": 4, "kv_group_size": 48}, r"invalid kv_group_size=48: it does not divide head_dim=64"),
        ({"w_bits": 4, "targets": "foo_proj"}, r"invalid targets pattern 'foo_proj'"),
        ({"prune": "magnitude", "nm": "2:3"}, r"invalid nm=2:3: M=3 does not divide the input width 128"),
    ],
)
def test_structural_errors_before_load(tiny_model_dir, monkeypatch, model_args, message):
    from lm_eval.models.huggingface import HFLM

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(HFLM, "_create_model", fail)
    with pytest.raises(ModelArgumentError, match=message):
        load(tiny_model_dir, **model_args)


def test_calibration_shortage_before_load(tiny_model_dir, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from lcc_models.compression.calibration import CalibrationDataError

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(HFLM, "_create_model", fail)
    short = tmp_path / "short.txt"
    short.write_text("only a few words of text")
    with pytest.raises(CalibrationDataError, match=r"calib_nsamples=4 were requested"):
        load(tiny_model_dir, prune="wanda", sparsity=0.5, calib_data=str(short), **CALIBRATION)


def test_unused_calibration_settings_not_recorded(tiny_model_dir):
    spec = load(tiny_model_dir, w_bits=4).get_model_info()["compression"]["spec"]
    assert spec["calib_data"] is None
    assert spec["calib_nsamples"] is None
