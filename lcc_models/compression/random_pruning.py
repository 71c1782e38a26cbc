"""Random pruning: zero a seeded random ``sparsity`` fraction of each row (or of the matrix).

The scores come from torch's CPU generator, seeded from ``seed`` and the layer's qualified
name, and are then moved to the weight's device. The CPU generator gives the same numbers
on every machine, so the same seed gives the same mask on a laptop and on a GPU server.
"""

from __future__ import annotations

import zlib

import torch

from lcc_models.compression.base import CompressionMethod, LayerStatistics
from lcc_models.compression.layers import CompressedLinear
from lcc_models.compression.magnitude import prune_lowest


def random_scores(shape: torch.Size, seed: int, qualified_name: str) -> torch.Tensor:
    """Return uniform scores for one layer, reproducible from ``seed`` and the layer's name."""
    generator = torch.Generator(device="cpu")
    # crc32 rather than hash(): Python salts str hashes per process.
    generator.manual_seed(seed * 1_000_003 + zlib.crc32(qualified_name.encode("utf-8")))
    return torch.rand(shape, generator=generator)


class RandomPruning(CompressionMethod):
    name = "prune:random"

    def __init__(self, sparsity: float, scope: str, seed: int) -> None:
        self.sparsity = sparsity
        self.scope = scope
        self.seed = seed

    def apply(self, layer: CompressedLinear, statistics: LayerStatistics | None) -> None:
        weight = layer.weight.data
        scores = random_scores(weight.shape, self.seed, layer.qualified_name).to(weight.device)
        prune_lowest(weight, scores, self.sparsity, self.scope)
        layer.add_step(f"prune=random sparsity={self.sparsity:g} scope={self.scope} seed={self.seed}")
