"""Wanda pruning: prune the weights whose magnitude times input-feature norm is lowest.

    score[i, j] = |W[i, j]| * ||X_j||_2

X_j is input feature j of the layer over all calibration tokens (Sun et al. 2024, "A
Simple and Effective Pruning Approach for Large Language Models"). Weights compete within
each output row by default (``prune_scope=row``, as in the paper), or within N:M groups.
"""

from __future__ import annotations

import torch

from lcc_models.compression.base import FEATURE_NORMS, LayerStatistics
from lcc_models.compression.magnitude import MagnitudePruning


def wanda_score(weight: torch.Tensor, feature_norms: torch.Tensor) -> torch.Tensor:
    """Return |W| * ||X_j||, broadcasting the per-input norms over the output rows."""
    return weight.abs().float() * feature_norms.to(weight.device).float().unsqueeze(0)


class WandaPruning(MagnitudePruning):
    """Magnitude pruning with Wanda's activation-weighted score."""

    name = "prune:wanda"
    method = "wanda"
    statistics = (FEATURE_NORMS,)

    def score(self, weight: torch.Tensor, statistics: LayerStatistics | None) -> torch.Tensor:
        return wanda_score(weight, statistics.feature_norms())
