"""The one fake-quantization primitive, shared by weights, activations and the KV cache.

    dequantized = fake_quantize(weight, bits=3, group_size=128, symmetric=False)

Round-to-nearest over groups of ``group_size`` consecutive values along the last
dimension, returned in the input's dtype after dequantization. Every later layer thus
computes with exactly the values that a real low-bit kernel would produce.

Each group is mapped onto the integer levels 0 .. 2^bits - 1 with a scale and a zero
point. Asymmetric quantization maps [min(x, 0), max(x, 0)] onto those levels with an
integer zero point. Symmetric quantization fixes the zero point at 2^(bits-1) and maps
[-max|x|, max|x|] with a scale alone, which uses the levels -2^(bits-1) .. 2^(bits-1) - 1
around it. Either way a group contains at most 2^bits distinct values, and 0 is one of
them, so pruned weights stay exactly zero. (Widening the range to include 0 follows
GPTQ's quantizer; for real weight groups, which span 0, it changes nothing.)

``bits`` may be a tensor with one entry per group, which mixed precision uses to keep
some groups at more bits than the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Bits of storage per scale and per zero point when counting effective bits per weight:
# scales in fp16, zero points as bits-wide integers.
SCALE_BITS = 16


@dataclass
class QuantizationGrid:
    """Scale, zero point and top level of each group, each of shape [groups, 1]."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    max_level: torch.Tensor

    def quantize(self, values: torch.Tensor) -> torch.Tensor:
        """Round ``values`` [groups, n] (float32) to the grid and return them dequantized."""
        levels = torch.clamp(torch.round(values / self.scale) + self.zero_point, torch.zeros_like(self.max_level), self.max_level)
        return (levels - self.zero_point) * self.scale


def group_grid(groups: torch.Tensor, bits: int | torch.Tensor, symmetric: bool) -> QuantizationGrid:
    """Return the round-to-nearest grid of each row of ``groups`` [groups, n] (float32)."""
    bits_column = torch.as_tensor(bits, device=groups.device, dtype=torch.float32).reshape(-1, 1)
    bits_column = bits_column.expand(groups.shape[0], 1)
    max_level = 2.0**bits_column - 1
    if symmetric:
        half = 2.0 ** (bits_column - 1)
        scale = (groups.abs().amax(dim=1, keepdim=True) / (half - 1)).clamp_min(1e-8)
        return QuantizationGrid(scale, half, max_level)
    low = groups.amin(dim=1, keepdim=True).clamp_max(0.0)
    high = groups.amax(dim=1, keepdim=True).clamp_min(0.0)
    scale = ((high - low) / max_level).clamp_min(1e-8)
    zero_point = torch.clamp(torch.round(-low / scale), torch.zeros_like(max_level), max_level)
    return QuantizationGrid(scale, zero_point, max_level)


def fake_quantize(values: torch.Tensor, bits: int | torch.Tensor, group_size: int, symmetric: bool) -> torch.Tensor:
    """Quantize and dequantize ``values`` in groups along the last dimension.

    ``bits`` is an integer, or a tensor with ``values.numel() // group_size`` entries in
    row-major group order (for a weight: [out_features, in_features // group_size]).
    """
    width = values.shape[-1]
    if group_size == -1:
        group_size = width
    if group_size <= 0 or width % group_size:
        raise ValueError(f"group_size {group_size} does not divide the last dimension {width}")
    groups = values.reshape(-1, group_size).float()
    dequantized = group_grid(groups, bits, symmetric).quantize(groups)
    return dequantized.reshape(values.shape).to(values.dtype)


def bits_per_weight(bits: int, group_size: int, in_features: int, symmetric: bool) -> float:
    """Return storage bits per weight, counting each group's scale and (if asymmetric) zero point."""
    group = in_features if group_size == -1 else group_size
    overhead = SCALE_BITS + (0 if symmetric else bits)
    return bits + overhead / group


def mean_bits_per_weight(group_bits: torch.Tensor, group_size: int, in_features: int, symmetric: bool) -> float:
    """Return storage bits per weight averaged over groups that each have their own ``bits``."""
    group = in_features if group_size == -1 else group_size
    overhead = SCALE_BITS + (0.0 if symmetric else group_bits.float())
    return float((group_bits.float() + overhead / group).mean())
