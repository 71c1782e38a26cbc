"""Weight-only round-to-nearest quantization in groups (the ``w_bits`` keys).

Per-group asymmetric RTN with groups of 128 input weights is the weight-only setting of
Li et al. 2024, "Evaluating Quantized Large Language Models". Weights already pruned to
zero stay exactly zero, because ``fake_quantize`` keeps 0 among the levels of every group.
"""

from __future__ import annotations

from lcc_models.compression.base import CompressionMethod, TargetLayer
from lcc_models.compression.layers import CompressedLinear
from lcc_models.compression.quantizer import bits_per_weight, fake_quantize
from lcc_models.spec import ModelArgumentError


class RoundToNearest(CompressionMethod):
    name = "quantize_weights:rtn"

    def __init__(self, bits: int, group_size: int, symmetric: bool) -> None:
        self.bits = bits
        self.group_size = group_size
        self.symmetric = symmetric

    def check(self, layers: list[TargetLayer]) -> None:
        if self.group_size == -1:
            return
        misfits = [layer for layer in layers if layer.linear.in_features % self.group_size]
        if misfits:
            widths = sorted({layer.linear.in_features for layer in layers})
            divisors = [size for size in (32, 64, 128, 256) if all(width % size == 0 for width in widths)]
            suggestion = f"{', '.join(map(str, divisors))} or -1" if divisors else "-1"
            first = misfits[0]
            raise ModelArgumentError(
                f"invalid w_group_size={self.group_size}: it does not divide the input width "
                f"{first.linear.in_features} of {first.qualified_name}"
                f"{f' (nor of {len(misfits) - 1} more target layers)' if len(misfits) > 1 else ''}. "
                f"Accepted values divide every target input width ({', '.join(map(str, widths))}): "
                f"use {suggestion} (-1 means one group per output channel)"
            )

    def apply(self, layer: CompressedLinear) -> None:
        weight = layer.weight.data
        weight.copy_(fake_quantize(weight, self.bits, self.group_size, self.symmetric))
        layer.bits_per_weight = bits_per_weight(self.bits, self.group_size, layer.in_features, self.symmetric)
        group = "channel" if self.group_size == -1 else str(self.group_size)
        kind = "sym" if self.symmetric else "asym"
        layer.add_step(f"w_bits={self.bits} group={group} {kind} rtn")
