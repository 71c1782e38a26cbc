"""Interface that every compression method implements to plug into the one walk over the model.

    class MyMethod(CompressionMethod):
        name = "quantize_weights:mine"
        def check(self, layers): ...   # reject bad settings before any weight changes
        def apply(self, layer): ...    # modify layer.weight.data in place, then layer.add_step(...)

``lcc_models.compression.walk.compress_model`` finds the decoder blocks, selects the
target linear layers and calls every method's ``check`` on all of them. Then, block by
block, it wraps each target in a ``CompressedLinear`` and calls ``apply`` of each method
in the fixed order of ``CompressionSpec.steps()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lcc_models.compression.layers import CompressedLinear


@dataclass
class TargetLayer:
    """A linear layer selected for compression, and where it sits in the model."""

    qualified_name: str  # e.g. "model.layers.0.self_attn.q_proj"
    layer_type: str  # the last name component, e.g. "q_proj"
    block_index: int
    parent: nn.Module
    attribute: str  # name of the layer in its parent module
    linear: nn.Linear


class CompressionMethod:
    """Base class of the methods applied by ``compress_model``."""

    name = "unnamed"

    def check(self, layers: list[TargetLayer]) -> None:
        """Raise ``ModelArgumentError`` if the method cannot compress one of ``layers``."""
        raise NotImplementedError

    def apply(self, layer: CompressedLinear) -> None:
        """Compress ``layer.weight`` in place and record what was done with ``layer.add_step``."""
        raise NotImplementedError
