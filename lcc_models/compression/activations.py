"""Weight-activation quantization (``a_bits``): per-token dynamic quantization of linear inputs.

At run time, each token's input vector to a target linear layer is quantized as one
asymmetric group, with a scale and zero point computed on the fly from that token. These
are the W8A8, W4A8 and W4A4 settings of Li et al. 2024, "Evaluating Quantized Large
Language Models". This method only switches the quantizer on; ``CompressedLinear.forward`` runs it.
"""

from __future__ import annotations

from lcc_models.compression.base import CompressionMethod, LayerStatistics
from lcc_models.compression.layers import CompressedLinear


class ActivationQuantization(CompressionMethod):
    name = "quantize_activations:per_token"

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def apply(self, layer: CompressedLinear, statistics: LayerStatistics | None) -> None:
        layer.activation_bits = self.bits
        layer.add_step(f"a_bits={self.bits} per-token asym dynamic")
