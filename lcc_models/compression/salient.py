"""Mixed precision, the long-context study's remedy: keep the most salient weight groups at more bits.

    bits = SalientGroups(fraction=0.02, bits=8, score="magnitude").group_bits(weight, 3, 128, statistics)

Within each weight matrix, the quantization groups (``w_group_size`` consecutive input
weights of one row) with the largest score keep ``salient_bits``; all other groups get
``w_bits``. The score of a group is max |w| over its weights (``salient_by=magnitude``),
or max |w| * ||X_j||_2 over its weights, the activation-weighted score of Wanda
(``salient_by=activation``). round(fraction x number of groups) groups are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lcc_models.compression.base import FEATURE_NORMS, LayerStatistics


@dataclass(frozen=True)
class SalientGroups:
    fraction: float
    bits: int
    score: str  # "magnitude" or "activation"

    @property
    def statistics(self) -> tuple[str, ...]:
        return (FEATURE_NORMS,) if self.score == "activation" else ()

    def group_scores(self, weight: torch.Tensor, group_size: int, statistics: LayerStatistics | None) -> torch.Tensor:
        """Return the score of every group, [out_features, in_features // group_size]."""
        rows, columns = weight.shape
        group = columns if group_size == -1 else group_size
        magnitudes = weight.detach().abs().float()
        if self.score == "activation":
            magnitudes = magnitudes * statistics.feature_norms().to(weight.device).float().unsqueeze(0)
        return magnitudes.reshape(rows, columns // group, group).amax(dim=2)

    def group_bits(
        self, weight: torch.Tensor, bits: int, group_size: int, statistics: LayerStatistics | None
    ) -> torch.Tensor:
        """Return the bit width of every group: ``self.bits`` for the top-scoring groups, ``bits`` elsewhere."""
        scores = self.group_scores(weight, group_size, statistics)
        count = round(self.fraction * scores.numel())
        # Stable sort of the negated scores: among equal scores the earlier group wins.
        salient_index = torch.argsort(-scores.flatten(), stable=True)[:count]
        group_bits = torch.full((scores.numel(),), bits, dtype=torch.int64, device=weight.device)
        group_bits[salient_index] = self.bits
        return group_bits.reshape(scores.shape)

    def describe(self) -> str:
        return f"salient {self.fraction:g} of groups at {self.bits} bits by {self.score}"
