"""Measurements of what compression did, taken on the weights afterwards rather than from the spec.

Sparsity is the fraction of weights that are exactly zero. Bits per weight count the
quantized value plus each group's scale (16 bits) and zero point (``w_bits`` bits, if
asymmetric), spread over the group. Weights that are not quantized count as their dtype's
width. Zeros from pruning are not subtracted: a dense kernel stores them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lcc_models.compression.layers import CompressedLinear
from lcc_models.spec import CompressionSpec

logger = logging.getLogger(__name__)


@dataclass
class LayerTypeStats:
    layers: int = 0
    weights: int = 0
    zeros: int = 0
    bit_total: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "weights": self.weights,
            "sparsity": self.zeros / self.weights if self.weights else 0.0,
            "bits_per_weight": self.bit_total / self.weights if self.weights else 0.0,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class CompressionReport:
    spec: CompressionSpec
    by_type: dict[str, LayerTypeStats] = field(default_factory=dict)
    seconds: float = 0.0

    def overall(self) -> LayerTypeStats:
        total = LayerTypeStats(seconds=self.seconds)
        for stats in self.by_type.values():
            total.layers += stats.layers
            total.weights += stats.weights
            total.zeros += stats.zeros
            total.bit_total += stats.bit_total
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "layer_types": {name: stats.as_dict() for name, stats in self.by_type.items()},
            "overall": self.overall().as_dict(),
        }

    def log_summary(self) -> None:
        rows = [("layer type", "layers", "sparsity", "bits/weight", "seconds")]
        for name, stats in [*self.by_type.items(), ("all", self.overall())]:
            values = stats.as_dict()
            rows.append(
                (
                    name,
                    str(values["layers"]),
                    f"{values['sparsity']:.4f}",
                    f"{values['bits_per_weight']:.3f}",
                    f"{values['seconds']:.2f}",
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
        logger.info("Compression applied (%s):\n%s", " -> ".join(self.spec.steps()), "\n".join(lines))


def measure(model: nn.Module, spec: CompressionSpec, seconds: dict[str, float], total_seconds: float) -> CompressionReport:
    report = CompressionReport(spec=spec, seconds=total_seconds)
    for module in model.modules():
        if not isinstance(module, CompressedLinear):
            continue
        layer_type = module.qualified_name.rpartition(".")[2]
        stats = report.by_type.setdefault(layer_type, LayerTypeStats(seconds=seconds.get(layer_type, 0.0)))
        weight = module.weight.detach()
        numel = weight.numel()
        stats.layers += 1
        stats.weights += numel
        stats.zeros += int((weight == 0).sum().item())
        stats.bit_total += getattr(module, "bits_per_weight", weight.element_size() * 8) * numel
    return report
