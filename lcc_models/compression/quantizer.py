"""The one fake-quantization primitive, for weights now and activations and KV caches later.

    dequantized = fake_quantize(weight, bits=3, group_size=128, symmetric=False)

Round-to-nearest over groups of ``group_size`` consecutive values along the last
dimension, returned in the input's dtype after dequantization. Every later layer thus
computes with exactly the values that a real low-bit kernel would produce. Asymmetric quantization maps each group's
[min(x, 0), max(x, 0)] onto the integers 0 .. 2^bits - 1 with a per-group scale and an
integer zero point; symmetric quantization maps [-max|x|, max|x|] onto
-2^(bits-1) .. 2^(bits-1) - 1 with a scale alone. Either way a group contains at most 2^bits
distinct values, and 0 is one of them, so pruned weights stay exactly zero. (Widening the
range to include 0 follows GPTQ's quantizer; for real weight groups, which span 0, it
changes nothing.)
"""

from __future__ import annotations

import torch

# Bits of storage per scale and per zero point when counting effective bits per weight:
# scales in fp16, zero points as bits-wide integers.
SCALE_BITS = 16


def fake_quantize(values: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """Quantize and dequantize ``values`` in groups along the last dimension."""
    width = values.shape[-1]
    if group_size == -1:
        group_size = width
    if group_size <= 0 or width % group_size:
        raise ValueError(f"group_size {group_size} does not divide the last dimension {width}")
    groups = values.reshape(-1, group_size).float()

    if symmetric:
        max_level = 2 ** (bits - 1) - 1
        scale = (groups.abs().amax(dim=1, keepdim=True) / max_level).clamp_min(1e-8)
        quantized = torch.clamp(torch.round(groups / scale), -max_level - 1, max_level)
        dequantized = quantized * scale
    else:
        max_level = 2**bits - 1
        low = groups.amin(dim=1, keepdim=True).clamp_max(0.0)
        high = groups.amax(dim=1, keepdim=True).clamp_min(0.0)
        scale = ((high - low) / max_level).clamp_min(1e-8)
        zero_point = torch.clamp(torch.round(-low / scale), 0, max_level)
        quantized = torch.clamp(torch.round(groups / scale) + zero_point, 0, max_level)
        dequantized = (quantized - zero_point) * scale

    return dequantized.reshape(values.shape).to(values.dtype)


def bits_per_weight(bits: int, group_size: int, in_features: int, symmetric: bool) -> float:
    """Return storage bits per weight, counting each group's scale and (if asymmetric) zero point."""
    group = in_features if group_size == -1 else group_size
    overhead = SCALE_BITS + (0 if symmetric else bits)
    return bits + overhead / group
