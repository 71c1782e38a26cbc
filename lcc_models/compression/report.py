"""Measurements of what compression did, taken on the weights afterwards rather than from the spec.

Sparsity is the fraction of weights that are exactly zero. Bits per weight count the
quantized value plus each group's scale (16 bits) and zero point (as many bits as the
group's values, if asymmetric), spread over the group. With mixed precision each group
counts its own bits. Weights that are not quantized count as their dtype's width. Zeros
from pruning are not subtracted: a dense kernel stores them.
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
    groups: int = 0
    salient_groups: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        values = {
            "layers": self.layers,
            "weights": self.weights,
            "sparsity": self.zeros / self.weights if self.weights else 0.0,
            "bits_per_weight": self.bit_total / self.weights if self.weights else 0.0,
            "seconds": round(self.seconds, 3),
        }
        if self.groups:
            values["salient_fraction"] = self.salient_groups / self.groups
        return values


@dataclass
class CompressionReport:
    spec: CompressionSpec
    by_type: dict[str, LayerTypeStats] = field(default_factory=dict)
    seconds: float = 0.0
    calibration_seconds: float = 0.0
    kv_cache: dict[str, Any] | None = None

    def overall(self) -> LayerTypeStats:
        total = LayerTypeStats(seconds=self.seconds)
        for stats in self.by_type.values():
            total.layers += stats.layers
            total.weights += stats.weights
            total.zeros += stats.zeros
            total.bit_total += stats.bit_total
            total.groups += stats.groups
            total.salient_groups += stats.salient_groups
        return total

    def as_dict(self) -> dict[str, Any]:
        values = {
            "spec": self.spec.to_dict(),
            "layer_types": {name: stats.as_dict() for name, stats in self.by_type.items()},
            # None when no linear layer was compressed (KV-cache methods alone).
            "overall": self.overall().as_dict() if self.by_type else None,
            "calibration_seconds": round(self.calibration_seconds, 3),
        }
        if self.kv_cache is not None:
            values["kv_cache"] = self.kv_cache
        return values

    def log_summary(self) -> None:
        if not self.by_type:
            logger.info("Compression applied (%s) to no linear layer; KV cache: %s", " -> ".join(self.spec.steps()), self.kv_cache)
            return
        salient = self.spec.salient_frac is not None
        header = ("layer type", "layers", "sparsity", "bits/weight", *(("salient",) if salient else ()), "seconds")
        rows = [header]
        for name, stats in [*self.by_type.items(), ("all", self.overall())]:
            values = stats.as_dict()
            salient_cell = (f"{values.get('salient_fraction', 0.0):.4f}",) if salient else ()
            rows.append(
                (
                    name,
                    str(values["layers"]),
                    f"{values['sparsity']:.4f}",
                    f"{values['bits_per_weight']:.3f}",
                    *salient_cell,
                    f"{values['seconds']:.2f}",
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
        extra = []
        if self.calibration_seconds:
            extra.append(f"calibration forward passes: {self.calibration_seconds:.2f} s")
        if self.kv_cache is not None:
            extra.append(f"KV cache: {self.kv_cache}")
        logger.info(
            "Compression applied (%s):\n%s%s",
            " -> ".join(self.spec.steps()),
            "\n".join(lines),
            "".join(f"\n{line}" for line in extra),
        )


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
        stats.groups += getattr(module, "quantization_groups", 0)
        stats.salient_groups += getattr(module, "salient_groups", 0)
    return report
