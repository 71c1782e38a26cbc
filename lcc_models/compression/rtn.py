"""Weight-only round-to-nearest quantization in groups (``w_bits`` with ``w_method=rtn``).

Per-group asymmetric RTN with groups of 128 input weights is the weight-only setting of
Li et al. 2024, "Evaluating Quantized Large Language Models". Weights already pruned to
zero stay exactly zero, because ``fake_quantize`` keeps 0 among the levels of every group.
With ``salient_frac`` the top-scoring groups keep ``salient_bits`` (see ``salient.py``).
The group-size check and the bookkeeping here serve GPTQ as well.
"""

from __future__ import annotations

import torch

from lcc_models.compression.base import CompressionMethod, LayerStatistics, TargetLayer
from lcc_models.compression.layers import CompressedLinear
from lcc_models.compression.quantizer import fake_quantize, mean_bits_per_weight
from lcc_models.compression.salient import SalientGroups
from lcc_models.spec import ModelArgumentError


def check_group_size(group_size: int, layers: list[TargetLayer]) -> None:
    """Raise ``ModelArgumentError`` unless ``group_size`` divides the input width of every target."""
    if group_size == -1:
        return
    misfits = [layer for layer in layers if layer.linear.in_features % group_size]
    if not misfits:
        return
    widths = sorted({layer.linear.in_features for layer in layers})
    divisors = [size for size in (32, 64, 128, 256) if all(width % size == 0 for width in widths)]
    suggestion = f"{', '.join(map(str, divisors))} or -1" if divisors else "-1"
    first = misfits[0]
    raise ModelArgumentError(
        f"invalid w_group_size={group_size}: it does not divide the input width "
        f"{first.linear.in_features} of {first.qualified_name}"
        f"{f' (nor of {len(misfits) - 1} more target layers)' if len(misfits) > 1 else ''}. "
        f"Accepted values divide every target input width ({', '.join(map(str, widths))}): "
        f"use {suggestion} (-1 means one group per output channel)"
    )


class WeightQuantization(CompressionMethod):
    """Shared settings of the weight quantizers: bits, groups, symmetry and salient groups."""

    method = "unnamed"

    def __init__(self, bits: int, group_size: int, symmetric: bool, salient: SalientGroups | None = None) -> None:
        self.bits = bits
        self.group_size = group_size
        self.symmetric = symmetric
        self.salient = salient
        self.name = f"quantize_weights:{self.method}{'+salient' if salient else ''}"
        self.statistics = salient.statistics if salient else ()

    def check(self, layers: list[TargetLayer]) -> None:
        check_group_size(self.group_size, layers)

    def group_bits(self, layer: CompressedLinear, statistics: LayerStatistics | None) -> torch.Tensor:
        """Return the bits of every weight group, [out_features, groups per row]."""
        if self.salient is not None:
            return self.salient.group_bits(layer.weight.data, self.bits, self.group_size, statistics)
        groups = 1 if self.group_size == -1 else layer.in_features // self.group_size
        return torch.full((layer.out_features, groups), self.bits, dtype=torch.int64, device=layer.weight.device)

    def record(self, layer: CompressedLinear, group_bits: torch.Tensor, details: str = "") -> None:
        """Store the storage cost and the salient-group counts on ``layer`` and describe the step."""
        layer.bits_per_weight = mean_bits_per_weight(group_bits, self.group_size, layer.in_features, self.symmetric)
        layer.quantization_groups = group_bits.numel()
        layer.salient_groups = int((group_bits != self.bits).sum()) if self.salient else 0
        group = "channel" if self.group_size == -1 else str(self.group_size)
        kind = "sym" if self.symmetric else "asym"
        salient = f" {self.salient.describe()}" if self.salient else ""
        layer.add_step(f"w_bits={self.bits} group={group} {kind} {self.method}{details}{salient}")


class RoundToNearest(WeightQuantization):
    method = "rtn"

    def apply(self, layer: CompressedLinear, statistics: LayerStatistics | None) -> None:
        weight = layer.weight.data
        group_bits = self.group_bits(layer, statistics)
        weight.copy_(fake_quantize(weight, group_bits.flatten(), self.group_size, self.symmetric))
        self.record(layer, group_bits)
