"""Magnitude pruning: zero the weights of smallest |W| within each comparison group.

The group is each output row of the weight matrix (``prune_scope=row``, the comparison
Wanda uses, so that every output neuron keeps the same number of inputs) or the whole
matrix (``prune_scope=layer``). In a row of n weights, floor(sparsity * n) are zeroed.
"""

from __future__ import annotations

import torch

from lcc_models.compression.base import CompressionMethod, TargetLayer
from lcc_models.compression.layers import CompressedLinear


def prune_lowest(weight: torch.Tensor, score: torch.Tensor, sparsity: float, scope: str) -> torch.Tensor:
    """Zero, in place, the ``sparsity`` fraction of ``weight`` with the lowest ``score``; return the kept mask."""
    if scope == "row":
        num_pruned = int(weight.shape[1] * sparsity)
        # Ties at the threshold are broken by position, so exactly num_pruned go per row.
        pruned_index = torch.argsort(score, dim=1, stable=True)[:, :num_pruned]
        keep = torch.ones_like(weight, dtype=torch.bool)
        keep.scatter_(1, pruned_index, False)
    else:
        num_pruned = int(weight.numel() * sparsity)
        pruned_index = torch.argsort(score.flatten(), stable=True)[:num_pruned]
        keep = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
        keep[pruned_index] = False
        keep = keep.view_as(weight)
    weight.mul_(keep)
    return keep


class MagnitudePruning(CompressionMethod):
    name = "prune:magnitude"

    def __init__(self, sparsity: float, scope: str) -> None:
        self.sparsity = sparsity
        self.scope = scope

    def apply(self, layer: CompressedLinear) -> None:
        weight = layer.weight.data
        prune_lowest(weight, weight.abs(), self.sparsity, self.scope)
        layer.add_step(f"prune=magnitude sparsity={self.sparsity:g} scope={self.scope}")

    def check(self, layers: list[TargetLayer]) -> None:
        return None
