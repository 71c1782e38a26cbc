"""Invalid --model_args for lcc_compressed fail with an error naming the value and the accepted ones."""

import pytest

from lcc_models.spec import CompressionSpec, ModelArgumentError


@pytest.mark.parametrize(
    ("model_args", "expected"),
    [
        ({"w_bits": 1}, ["w_bits=1", "an integer from 2 to 8"]),
        ({"w_bits": 9}, ["w_bits=9", "an integer from 2 to 8"]),
        ({"w_bits": "three"}, ["w_bits='three'", "an integer from 2 to 8"]),
        ({"w_bits": True}, ["w_bits=True", "an integer from 2 to 8"]),
        ({"prune": "magnitude", "sparsity": 1.2}, ["sparsity=1.2", "floats in [0, 1)"]),
        ({"prune": "magnitude", "sparsity": -0.1}, ["sparsity=-0.1", "floats in [0, 1)"]),
        ({"prune": "magnitud", "sparsity": 0.5}, ["prune='magnitud'", "accepted values are magnitude", "Did you mean magnitude?"]),
        ({"prune": "magnitude", "sparsity": 0.5, "prune_scope": "column"}, ["prune_scope='column'", "row, layer"]),
        ({"w_bits": 4, "w_group_size": 0}, ["w_group_size=0", "-1 for one group per output channel"]),
        ({"w_bits": 4, "w_sym": "maybe"}, ["w_sym='maybe'", "true and false"]),
        ({"prune": "magnitude"}, ["prune=magnitude needs sparsity"]),
        ({"sparsity": 0.5}, ["sparsity=0.5 has no effect without prune"]),
        ({"w_group_size": 64}, ["w_group_size=64 has no effect without w_bits"]),
        ({"targets": "q_proj"}, ["targets=q_proj has no effect without a compression method"]),
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


def test_every_compression_key_has_a_parser():
    from lcc_models import spec

    assert set(spec._PARSERS) == set(spec.COMPRESSION_KEYS)
