"""Invalid --model_args for lcc_compressed fail with an error naming the value and the accepted ones."""

import pytest

from lcc_models.spec import CompressionSpec, ModelArgumentError


@pytest.mark.parametrize(
    ("model_args", "expected"),
    [
        ({"w_bits": 1}, ["w_bits=1", "integers from 2 to 8"]),
        ({"w_bits": 9}, ["w_bits=9", "integers from 2 to 8"]),
        ({"w_bits": "three"}, ["w_bits='three'", "integers from 2 to 8"]),
        ({"w_bits": True}, ["w_bits=True", "integers from 2 to 8"]),
        ({"prune": "magnitude", "sparsity": 1.2}, ["sparsity=1.2", "floats in [0, 1)"]),
        ({"prune": "magnitude", "sparsity": -0.1}, ["sparsity=-0.1", "floats in [0, 1)"]),
        ({"prune": "magnitud", "sparsity": 0.5}, ["prune='magnitud'", "accepted values are magnitude", "Did you mean magnitude?"]),
        ({"prune": "magnitude", "sparsity": 0.5, "prune_scope": "column"}, ["prune_scope='column'", "row, layer"]),
        ({"w_bits": 4, "w_group_size": 0}, ["w_group_size=0", "-1 for one group per output channel"]),
        ({"w_bits": 4, "w_sym": "maybe"}, ["w_sym='maybe'", "true and false"]),
        ({"prune": "magnitude"}, ["prune=magnitude needs sparsity"]),
        ({"sparsity": 0.5}, ["sparsity=0.5 has no effect without prune"]),
        ({"w_group_size": 64}, ["w_group_size=64 has no effect without w_bits"]),
        ({"targets": "q_proj"}, ["targets=q_proj has no effect without a method that compresses linear layers"]),
        ({"prune": "random", "nm": "2:4"}, ["invalid nm=2:4 with prune=random", "prune=magnitude, prune=wanda and prune=sparsegpt"]),
        ({"prune": "wanda", "nm": "4:2"}, ["nm='4:2'", "N:M with integers 0 < N < M"]),
        ({"prune": "wanda", "nm": "2-4"}, ["nm='2-4'", "such as 2:4"]),
        ({"prune": "wanda", "nm": "2:4", "sparsity": 0.5}, ["sparsity=0.5 conflicts with nm=2:4", "1 - N/M = 0.5"]),
        ({"nm": "2:4"}, ["nm=2:4 has no effect without prune="]),
        ({"prune": "sparsegpt", "sparsity": 0.5, "prune_scope": "row"}, ["prune_scope=row is not accepted with prune=sparsegpt"]),
        ({"salient_frac": 0.02}, ["salient_frac=0.02 has no effect without w_bits"]),
        ({"w_bits": 4, "salient_frac": 1.5}, ["salient_frac=1.5", "floats in [0, 1)"]),
        ({"w_bits": 4, "salient_bits": 4}, ["salient_bits=4", "integers from 5 to 8"]),
        ({"w_bits": 4, "salient_by": "gradient"}, ["salient_by='gradient'", "magnitude, activation"]),
        ({"a_bits": 9}, ["a_bits=9", "integers from 4 to 8"]),
        ({"a_bits": 3}, ["a_bits=3", "integers from 4 to 8"]),
        ({"kv_bits": 1}, ["kv_bits=1", "integers from 2 to 8"]),
        ({"kv_group_size": 32}, ["kv_group_size=32 has no effect without kv_bits"]),
        ({"kv_bits": 4, "kv_group_size": 0}, ["kv_group_size=0", "divides the head dimension"]),
        ({"kv_noise_std": -0.1}, ["kv_noise_std=-0.1", "floats in [0, inf)"]),
        ({"w_bits": 4, "w_method": "awq"}, ["w_method='awq'", "rtn, gptq"]),
        ({"w_bits": 4, "gptq_damp": 0.1}, ["gptq_damp=0.1 has no effect without w_method=gptq"]),
        ({"w_bits": 4, "w_method": "gptq", "gptq_damp": 0}, ["gptq_damp=0", "floats in (0, 1)"]),
        ({"w_method": "gptq"}, ["w_method=gptq has no effect without w_bits"]),
        ({"prune": "magnitude", "sparsity": 0.5, "calib_nsamples": 16}, ["calib_nsamples=16 has no effect without a method that reads calibration data"]),
        ({"prune": "wanda", "sparsity": 0.5, "calib_nsamples": 0}, ["calib_nsamples=0", "integers >= 1"]),
        ({"prune": "wanda", "sparsity": 0.5, "calib_data": "/no/such/file.txt"}, ["calib_data='/no/such/file.txt'", "c4, wikitext, or the path of a local"]),
        ({"w_bits": 4, "seed": 3}, ["seed=3 has no effect without prune=random, kv_noise_std"]),
    ],
)
def test_invalid_compression_args(model_args, expected):
    with pytest.raises(ModelArgumentError) as error:
        CompressionSpec.from_model_args(model_args)
    for fragment in expected:
        assert fragment in str(error.value)


def test_valid_args_split_from_hf_args():
    spec, rest = CompressionSpec.from_model_args(
        {"pretrained": "x", "dtype": "bfloat16", "prune": "magnitude", "sparsity": 0.5, "w_bits": "3", "w_sym": "false"}
    )
    assert rest == {"pretrained": "x", "dtype": "bfloat16"}
    assert spec.prune == "magnitude"
    assert spec.sparsity == 0.5
    assert spec.w_bits == 3
    assert spec.w_group_size == 128
    assert spec.w_sym is False
    assert spec.steps() == ["prune:magnitude", "quantize_weights:rtn"]
    assert spec.to_dict()["order"] == ["prune:magnitude", "quantize_weights:rtn"]


def test_no_compression_keys_means_disabled():
    spec, _ = CompressionSpec.from_model_args({"pretrained": "x", "prune": "none"})
    assert not spec.enabled
    assert spec.steps() == []


def test_full_combination_order_and_defaults():
    spec, _ = CompressionSpec.from_model_args(
        {"prune": "wanda", "nm": "2:4", "w_bits": 4, "w_method": "gptq", "salient_by": "activation",
         "a_bits": 8, "kv_bits": 4, "kv_noise_std": 0.01}
    )
    assert spec.steps() == [
        "prune:wanda",
        "quantize_weights:gptq+salient",
        "quantize_activations:per_token",
        "quantize_kv_cache:per_token",
        "kv_cache_noise:gaussian",
    ]
    assert spec.target_sparsity == 0.5
    assert spec.salient_frac == 0.02
    assert spec.salient_bits == 8
    assert (spec.calib_data, spec.calib_nsamples, spec.calib_seqlen) == ("c4", 128, 2048)
    assert spec.needs_calibration
    assert spec.to_dict()["nm"] == "2:4"


@pytest.mark.parametrize(
    ("model_args", "needs"),
    [
        ({"prune": "magnitude", "sparsity": 0.5}, False),
        ({"prune": "random", "sparsity": 0.1, "seed": 4}, False),
        ({"prune": "wanda", "sparsity": 0.5}, True),
        ({"prune": "sparsegpt", "nm": "2:4"}, True),
        ({"w_bits": 3, "salient_frac": 0.02}, False),
        ({"w_bits": 3, "salient_by": "activation"}, True),
        ({"w_bits": 3, "w_method": "gptq"}, True),
        ({"a_bits": 8, "kv_bits": 4}, False),
    ],
)
def test_which_specs_need_calibration(model_args, needs):
    spec, _ = CompressionSpec.from_model_args(model_args)
    assert spec.needs_calibration is needs


def test_local_calibration_file_accepted(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text("some text")
    spec, _ = CompressionSpec.from_model_args({"prune": "wanda", "sparsity": 0.5, "calib_data": str(path)})
    assert spec.calib_data == str(path)


def test_every_compression_key_has_a_parser():
    from lcc_models import spec

    assert set(spec._PARSERS) == set(spec.COMPRESSION_KEYS)
