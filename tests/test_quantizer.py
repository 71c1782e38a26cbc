"""Round-to-nearest fake quantization: levels per group, zero handling, storage cost."""

import pytest
import torch

from lcc_models.compression.quantizer import bits_per_weight, fake_quantize


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_group_levels_at_most_2_pow_bits(bits, symmetric, group_size):
    torch.manual_seed(bits)
    weight = torch.randn(16, 256) * torch.rand(16, 1) * 3
    quantized = fake_quantize(weight, bits, group_size, symmetric)
    width = 256 if group_size == -1 else group_size
    groups = quantized.reshape(-1, width)
    for group in groups:
        assert torch.unique(group).numel() <= 2**bits


def test_quantization_error_shrinks_with_bits():
    torch.manual_seed(0)
    weight = torch.randn(64, 128)
    errors = [(fake_quantize(weight, bits, 128, False) - weight).abs().mean().item() for bits in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.01


def test_zero_stays_zero_and_group_extremes_are_kept():
    torch.manual_seed(1)
    weight = torch.randn(8, 128)
    weight[:, ::3] = 0.0
    quantized = fake_quantize(weight, 3, 32, symmetric=False)
    assert torch.all(quantized[:, ::3] == 0)
    # Round-to-nearest moves no weight by more than half a quantization step.
    groups, original = quantized.reshape(-1, 32), weight.reshape(-1, 32)
    step = (original.amax(1, keepdim=True) - original.amin(1, keepdim=True)) / (2**3 - 1)
    assert torch.all((groups - original).abs() <= step / 2 + 1e-6)


def test_all_zero_group_and_dtype_preserved():
    weight = torch.zeros(4, 64, dtype=torch.bfloat16)
    quantized = fake_quantize(weight, 4, 64, symmetric=False)
    assert quantized.dtype == torch.bfloat16
    assert torch.all(quantized == 0)


def test_group_size_must_divide_width():
    with pytest.raises(ValueError, match="does not divide"):
        fake_quantize(torch.randn(4, 100), 4, 128, symmetric=False)


def test_bits_per_weight_counts_scale_and_zero_point():
    assert bits_per_weight(3, 128, 4096, symmetric=False) == pytest.approx(3 + 19 / 128)
    assert bits_per_weight(4, 128, 4096, symmetric=True) == pytest.approx(4 + 16 / 128)
    assert bits_per_weight(4, -1, 4096, symmetric=False) == pytest.approx(4 + 20 / 4096)
