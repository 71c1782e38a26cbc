"""Magnitude pruning, and the mask rules that every score-based pruning method shares.

    keep = prune_lowest(weight, weight.abs(), sparsity=0.5, scope="row")
    keep = prune_n_of_m(weight, weight.abs(), num_kept=2, group_size=4)

The comparison group is each output row of the weight matrix (``prune_scope=row``, the
comparison Wanda uses, so that every output neuron keeps the same number of inputs) or
the whole matrix (``prune_scope=layer``). In a row of n weights, floor(sparsity * n) are
zeroed. N:M sparsity keeps the N largest scores in every M consecutive input weights of
each row, the pattern that sparse tensor cores accelerate (2:4).
"""

from __future__ import annotations

import torch

from lcc_models.compression.base import CompressionMethod, LayerStatistics
from lcc_models.compression.layers import CompressedLinear
from lcc_models.spec import ModelArgumentError


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


def prune_n_of_m(weight: torch.Tensor, score: torch.Tensor, num_kept: int, group_size: int) -> torch.Tensor:
    """Zero, in place, all but the ``num_kept`` highest scores in every ``group_size`` consecutive weights of a row."""
    rows, columns = weight.shape
    if columns % group_size:
        raise ValueError(f"N:M groups of {group_size} do not divide the input width {columns}")
    grouped_score = score.reshape(rows, columns // group_size, group_size)
    pruned_index = torch.argsort(grouped_score, dim=2, stable=True)[..., : group_size - num_kept]
    keep = torch.ones_like(grouped_score, dtype=torch.bool)
    keep.scatter_(2, pruned_index, False)
    keep = keep.reshape(rows, columns)
    weight.mul_(keep)
    return keep


def prune_by_score(
    weight: torch.Tensor, score: torch.Tensor, sparsity: float | None, scope: str, nm: tuple[int, int] | None
) -> torch.Tensor:
    """Apply N:M sparsity when ``nm`` is set, else unstructured sparsity in ``scope``; return the kept mask."""
    if nm is not None:
        return prune_n_of_m(weight, score, *nm)
    return prune_lowest(weight, score, sparsity, scope)


def pruning_description(method: str, sparsity: float | None, scope: str, nm: tuple[int, int] | None) -> str:
    if nm is not None:
        return f"prune={method} {nm[0]}:{nm[1]}"
    return f"prune={method} sparsity={sparsity:g} scope={scope}"


def check_n_of_m_fits(nm: tuple[int, int] | None, layers: list) -> None:
    """Raise ``ModelArgumentError`` if M does not divide the input width of every target layer."""
    if nm is None:
        return
    misfits = [layer for layer in layers if layer.linear.in_features % nm[1]]
    if misfits:
        raise ModelArgumentError(
            f"invalid nm={nm[0]}:{nm[1]}: M={nm[1]} does not divide the input width {misfits[0].linear.in_features} "
            f"of {misfits[0].qualified_name}; accepted values have an M that divides every target input width"
        )


class MagnitudePruning(CompressionMethod):
    name = "prune:magnitude"
    method = "magnitude"

    def __init__(self, sparsity: float | None, scope: str, nm: tuple[int, int] | None = None) -> None:
        self.sparsity = sparsity
        self.scope = scope
        self.nm = nm

    def check(self, layers: list) -> None:
        check_n_of_m_fits(self.nm, layers)

    def score(self, weight: torch.Tensor, statistics: LayerStatistics | None) -> torch.Tensor:
        """Return the pruning score of every weight; the lowest scores are pruned."""
        return weight.abs()

    def apply(self, layer: CompressedLinear, statistics: LayerStatistics | None) -> None:
        weight = layer.weight.data
        prune_by_score(weight, self.score(weight, statistics), self.sparsity, self.scope, self.nm)
        layer.add_step(pruning_description(self.method, self.sparsity, self.scope, self.nm))
