"""Interface that every compression method implements to plug into the one walk over the model.

    class MyMethod(CompressionMethod):
        name = "quantize_weights:mine"
        statistics = ("feature_norms",)          # what it reads from calibration, if anything
        def check(self, layers): ...             # reject bad settings before any weight changes
        def apply(self, layer, statistics): ...  # modify layer.weight.data in place, then layer.add_step(...)

``lcc_models.compression.walk.compress_model`` finds the decoder blocks, selects the
target linear layers and calls every method's ``check`` on all of them. Then, block by
block, it wraps each target in a ``CompressedLinear``. If a method needs calibration
statistics, it runs the block over the calibration inputs once to collect them for every
target of the block. Finally it calls ``apply`` of each method in the fixed order of
``CompressionSpec.steps()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lcc_models.compression.layers import CompressedLinear

# Names of the statistics a method may request in ``CompressionMethod.statistics``.
FEATURE_NORMS = "feature_norms"
HESSIAN = "hessian"


@dataclass
class TargetLayer:
    """A linear layer selected for compression, and where it sits in the model."""

    qualified_name: str  # e.g. "model.layers.0.self_attn.q_proj"
    layer_type: str  # the last name component, e.g. "q_proj"
    block_index: int
    parent: nn.Module
    attribute: str  # name of the layer in its parent module
    linear: nn.Linear


@dataclass
class LayerStatistics:
    """Statistics of one linear layer's input X [tokens, in_features] over the calibration tokens (float32)."""

    tokens: int
    squared_sum: torch.Tensor  # [in_features]: sum over tokens of X[:, j]^2
    hessian: torch.Tensor | None = None  # [in_features, in_features]: 2 X^T X / tokens, GPTQ's H

    def feature_norms(self) -> torch.Tensor:
        """Return ||X_j||_2 of every input feature j, the activation factor of Wanda's score."""
        return self.squared_sum.sqrt()


class CompressionMethod:
    """Base class of the methods applied by ``compress_model``."""

    name = "unnamed"
    statistics: tuple[str, ...] = ()  # subset of (FEATURE_NORMS, HESSIAN)

    def check(self, layers: list[TargetLayer]) -> None:
        """Raise ``ModelArgumentError`` if the method cannot compress one of ``layers``."""
        return None

    def apply(self, layer: CompressedLinear, statistics: LayerStatistics | None) -> None:
        """Compress ``layer.weight`` in place and record what was done with ``layer.add_step``.

        ``statistics`` is None unless the method lists what it needs in ``statistics``.
        """
        raise NotImplementedError
