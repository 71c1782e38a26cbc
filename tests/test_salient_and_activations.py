"""Mixed precision keeps exactly the top-scoring groups; a_bits quantizes each token separately."""

import pytest
import torch
from torch import nn

from lcc_models.compression.activations import ActivationQuantization
from lcc_models.compression.base import LayerStatistics
from lcc_models.compression.layers import CompressedLinear, reference_mode
from lcc_models.compression.quantizer import bits_per_weight, fake_quantize
from lcc_models.compression.rtn import RoundToNearest
from lcc_models.compression.salient import SalientGroups


def compressed_layer(in_features=64, out_features=8, seed=0):
    torch.manual_seed(seed)
    return CompressedLinear.from_linear(nn.Linear(in_features, out_features, bias=False), "block.0.proj")


def test_salient_groups_are_top_by_max_magnitude():
    weight = torch.randn(8, 64) * 0.1
    # Plant three groups (of 16) with the largest weights: row 1 group 0, row 5 group 3, row 7 group 2.
    weight[1, 3] = 5.0
    weight[5, 50] = -4.0
    weight[7, 40] = 3.0
    salient = SalientGroups(fraction=3 / 32, bits=8, score="magnitude")
    group_bits = salient.group_bits(weight, 3, 16, None)
    assert group_bits.shape == (8, 4)
    expected = torch.full((8, 4), 3)
    expected[1, 0] = expected[5, 3] = expected[7, 2] = 8
    assert torch.equal(group_bits, expected)


def test_salient_activation_score_weights_features():
    weight = torch.ones(2, 8)
    weight[0, 0] = 2.0  # largest weight, but on a silent feature
    norms = torch.tensor([0.0, 1, 1, 1, 10.0, 1, 1, 1])  # feature 4 is loud
    statistics = LayerStatistics(tokens=1, squared_sum=norms**2)
    by_activation = SalientGroups(0.25, 8, "activation").group_bits(weight, 4, 4, statistics)
    by_magnitude = SalientGroups(0.25, 8, "magnitude").group_bits(weight, 4, 4, None)
    assert by_magnitude.tolist() == [[8, 4], [4, 4]]
    assert by_activation.tolist() == [[4, 8], [4, 4]]


def test_mixed_precision_quantizes_groups_at_their_bits():
    layer = compressed_layer()
    original = layer.weight.detach().clone()
    salient = SalientGroups(fraction=0.25, bits=8, score="magnitude")
    group_bits = salient.group_bits(original, 3, 16, None)
    RoundToNearest(3, 16, symmetric=False, salient=salient).apply(layer, None)

    groups = layer.weight.detach().reshape(-1, 16)
    for group, original_group, bits in zip(groups, original.reshape(-1, 16), group_bits.flatten()):
        torch.testing.assert_close(group, fake_quantize(original_group.unsqueeze(0), int(bits), 16, False)[0])
    assert layer.salient_groups == 8
    assert layer.quantization_groups == 32
    expected_bits = 0.25 * bits_per_weight(8, 16, 64, False) + 0.75 * bits_per_weight(3, 16, 64, False)
    assert layer.bits_per_weight == pytest.approx(expected_bits)


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_activation_quantization_per_token(bits):
    layer = compressed_layer(in_features=64, out_features=4)
    ActivationQuantization(bits).apply(layer, None)
    captured = []
    original_linear = torch.nn.functional.linear

    def spy(inputs, weight, bias=None):
        captured.append(inputs)
        return original_linear(inputs, weight, bias)

    torch.manual_seed(bits)
    # Tokens with very different ranges: one scale for all would flatten the quiet ones.
    inputs = torch.randn(2, 5, 64) * torch.logspace(-3, 1, 5).reshape(1, 5, 1)
    torch.nn.functional.linear = spy
    try:
        output = layer(inputs)
    finally:
        torch.nn.functional.linear = original_linear
    quantized = captured[0].reshape(-1, 64)
    for row in quantized:
        assert torch.unique(row).numel() <= 2**bits
    torch.testing.assert_close(quantized, fake_quantize(inputs.reshape(-1, 64), bits, -1, False))
    # The quietest token keeps its own scale, so its values do not all round to zero.
    assert torch.count_nonzero(quantized[0]) > 32
    torch.testing.assert_close(output, original_linear(captured[0], layer.weight))


def test_reference_mode_skips_activation_quantization():
    layer = compressed_layer()
    ActivationQuantization(4).apply(layer, None)
    inputs = torch.randn(3, 64)
    with reference_mode(layer):
        reference = layer(inputs)
    torch.testing.assert_close(reference, inputs @ layer.reference_weight.T, rtol=0, atol=0)
    assert not torch.equal(layer(inputs), reference)
