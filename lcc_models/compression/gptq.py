"""GPTQ weight quantization, and the inverse-Hessian machinery that SparseGPT shares.

    dequantized = gptq_quantize(weight, statistics.hessian, bits=3, group_size=128, symmetric=False)
    dequantized = gptq_quantize(weight, hessian, bits=4, group_size=128, symmetric=True, act_order=True, keep_mask=keep)

GPTQ comes from Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers". It minimizes the layer's output error
||X W^T - X Q^T||^2 row by row. Every row has the same Hessian H = 2 X^T X / tokens,
which ``LayerStatistics.hessian`` stores. The columns (input features) are quantized one
at a time, and the error of each is spread over the columns not yet quantized. With U the
upper Cholesky factor of H^-1 (H^-1 = U^T U), quantizing column j does

    err = (W[:, j] - Q[:, j]) / U[j, j]
    W[:, j+1:] -= err * U[j, j+1:]

which is the optimal brain surgeon update on the columns that remain (the paper's
Cholesky reformulation). Updates to columns after the current block of ``block_size``
columns are deferred and applied as one matrix product per block (the paper's lazy batch
updates). This changes the result only by float rounding.

Each group is rounded with ``group_grid`` and ``QuantizationGrid.quantize`` from
quantizer.py, the same quantizer that round-to-nearest (``fake_quantize``) uses, so both
methods put weights on the same kind of grid.
"""

from __future__ import annotations

import logging
import math

import torch

from lcc_models.compression.base import HESSIAN, LayerStatistics
from lcc_models.compression.layers import CompressedLinear
from lcc_models.compression.quantizer import QuantizationGrid, group_grid
from lcc_models.compression.rtn import WeightQuantization
from lcc_models.compression.salient import SalientGroups

logger = logging.getLogger(__name__)

# A symmetric grid needs 2 bits to have a level on each side of 0. The upper limit is
# only a sanity bound, because the project's w_bits and salient_bits stop at 8.
MIN_BITS = 2
MAX_BITS = 16


def check_weight_and_hessian(weight: torch.Tensor, hessian: torch.Tensor, damp: float, block_size: int) -> None:
    """Raise ``ValueError`` unless ``weight`` is a float matrix, ``hessian`` [in, in], damp >= 0 and block_size > 0."""
    if weight.dim() != 2 or not weight.dtype.is_floating_point:
        raise ValueError(
            f"invalid weight of shape {tuple(weight.shape)} and dtype {weight.dtype}: "
            "expected a floating-point matrix [out_features, in_features]"
        )
    in_features = weight.shape[1]
    if tuple(hessian.shape) != (in_features, in_features):
        raise ValueError(
            f"invalid hessian of shape {tuple(hessian.shape)}: expected [in_features, in_features] = "
            f"[{in_features}, {in_features}] for a weight of shape {tuple(weight.shape)}"
        )
    if not (math.isfinite(damp) and damp >= 0):
        raise ValueError(f"invalid damp={damp}: expected a finite number >= 0, such as 0.01")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"invalid block_size={block_size!r}: expected a positive integer, such as 128")


def float32_working_copies(
    weight: torch.Tensor, hessian: torch.Tensor, damp: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return float32 copies of ``weight`` and the dampened ``hessian`` on the weight's device, and the dead inputs.

    A dead input (diag(H) == 0) never took a non-zero value on the calibration tokens, so
    its weight column gets 0 and its diagonal entry 1, which keeps H invertible. Then
    ``damp`` times the mean of diag(H) is added to the diagonal.
    """
    working_weight = weight.detach().to(dtype=torch.float32, copy=True)
    working_hessian = hessian.detach().to(device=weight.device, dtype=torch.float32, copy=True)
    diagonal = torch.diagonal(working_hessian)
    dead = diagonal == 0
    diagonal[dead] = 1.0
    working_weight[:, dead] = 0.0
    diagonal += damp * diagonal.mean()
    return working_weight, working_hessian, dead


def inverse_hessian_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Return the upper Cholesky factor U of H^-1 (H^-1 = U^T U) for a dampened float32 ``hessian``."""
    lower, info = torch.linalg.cholesky_ex(hessian)
    if int(info) != 0:
        raise ValueError(
            f"the Hessian is not positive definite even after dampening with damp={damp} "
            f"(Cholesky failed at column {int(info) - 1}): increase damp, or collect it over more calibration tokens"
        )
    inverse = torch.cholesky_inverse(lower)
    upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
    if int(info) != 0:
        raise ValueError(
            f"the inverse Hessian is not positive definite (Cholesky failed at column {int(info) - 1}) "
            f"with damp={damp}: increase damp"
        )
    return upper


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int | torch.Tensor,
    group_size: int,
    symmetric: bool,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    keep_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Quantize ``weight`` [out_features, in_features] with GPTQ and return it dequantized, in its dtype.

    ``hessian`` is 2 X^T X / tokens of the layer input X. The work runs in float32 on the
    weight's device, and neither input is modified.

    ``group_size`` consecutive input columns (in the original column order) share a scale
    and zero point, and -1 makes the whole row one group. ``bits`` is an integer, or an
    integer tensor [out_features, in_features // group_size] ([out_features, 1] for -1)
    with the bit width of each group. Without ``act_order``, a group's grid is computed
    from its current, already error-updated weights when the first of its columns is
    quantized. With ``act_order``, the columns are quantized in order of decreasing
    diag(H), and every group's grid is computed up front from the weights before any update
    ("static groups"), so the groups remain contiguous runs of the original columns.

    Where ``keep_mask`` (bool, same shape as ``weight``) is False, the result is exactly 0.
    Those weights are zeroed before quantization and again after every error update.

    NOTE: re-zeroing discards the part of each error update that falls on pruned weights,
    so GPTQ gains less over round-to-nearest after pruning. On the 50%-pruned test layers
    of tests/test_gptq.py, its output error is 0.65-0.81 of RTN's, against 0.15-0.50 when
    the pruned weights may take non-zero values.
    """
    check_weight_and_hessian(weight, hessian, damp, block_size)
    out_features, in_features = weight.shape
    group_size = _checked_group_size(group_size, in_features)
    group_bits = _checked_bits(bits, out_features, in_features // group_size, weight.device)
    if keep_mask is not None and (keep_mask.dtype != torch.bool or keep_mask.shape != weight.shape):
        raise ValueError(
            f"invalid keep_mask of shape {tuple(keep_mask.shape)} and dtype {keep_mask.dtype}: "
            f"expected a bool tensor of the weight's shape {tuple(weight.shape)}"
        )

    working_weight, working_hessian, dead = float32_working_copies(weight, hessian, damp)
    mask = None if keep_mask is None else keep_mask.to(weight.device)
    if mask is not None:
        working_weight.mul_(mask)

    group_of_column = torch.arange(in_features, device=weight.device) // group_size
    static_grids = None
    order = None
    if act_order:
        static_grids = _group_grids(working_weight, group_bits, group_size, symmetric)
        # Dampening adds the same constant to every diagonal entry, so it leaves this order unchanged.
        order = torch.argsort(torch.diagonal(working_hessian), descending=True, stable=True)
        working_weight = working_weight[:, order]
        working_hessian = working_hessian[order][:, order]
        group_of_column = group_of_column[order]
        if mask is not None:
            mask = mask[:, order]

    upper = inverse_hessian_cholesky(working_hessian, damp)
    quantized = _quantize_columns(
        working_weight,
        upper,
        group_of_column.tolist(),
        static_grids,
        group_bits,
        group_size,
        symmetric,
        mask,
        block_size,
    )
    if order is not None:
        quantized = quantized[:, torch.argsort(order)]
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "GPTQ quantized a [%d, %d] weight (group_size=%d, act_order=%s, %d dead inputs)",
            out_features,
            in_features,
            group_size,
            act_order,
            int(dead.sum()),
        )
    return quantized.to(weight.dtype)


def _checked_group_size(group_size: int, in_features: int) -> int:
    """Return the number of columns per group, with -1 resolved to ``in_features``."""
    if group_size == -1:
        return in_features
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or in_features % group_size:
        raise ValueError(
            f"invalid group_size={group_size!r}: expected -1 (one group per row) or a positive integer "
            f"that divides in_features={in_features}"
        )
    return group_size


def _checked_bits(bits: int | torch.Tensor, out_features: int, num_groups: int, device: torch.device) -> torch.Tensor:
    """Return the bit width of every group as a float32 tensor [out_features, num_groups] on ``device``."""
    if isinstance(bits, torch.Tensor):
        if bits.dtype.is_floating_point or bits.dtype.is_complex or bits.dtype == torch.bool:
            raise ValueError(f"invalid bits tensor of dtype {bits.dtype}: expected an integer dtype")
        if tuple(bits.shape) != (out_features, num_groups):
            raise ValueError(
                f"invalid bits tensor of shape {tuple(bits.shape)}: expected one entry per group, "
                f"[out_features, in_features // group_size] = [{out_features}, {num_groups}]"
            )
        low, high = int(bits.min()), int(bits.max())
        if low < MIN_BITS or high > MAX_BITS:
            raise ValueError(
                f"invalid bits tensor with values from {low} to {high}: accepted values are integers "
                f"from {MIN_BITS} to {MAX_BITS}"
            )
        return bits.to(device=device, dtype=torch.float32)
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"invalid bits={bits!r}: accepted values are integers from {MIN_BITS} to {MAX_BITS}, "
            "or an integer tensor with one entry per group"
        )
    return torch.full((out_features, num_groups), float(bits), device=device)


def _group_grids(
    weight: torch.Tensor, group_bits: torch.Tensor, group_size: int, symmetric: bool
) -> list[QuantizationGrid]:
    """Return the grid of every group of ``weight``, one ``QuantizationGrid`` [out_features, 1] per group."""
    out_features, in_features = weight.shape
    num_groups = in_features // group_size
    # One group_grid call over all groups, in the row-major group order of group_bits.
    groups = weight.reshape(out_features * num_groups, group_size)
    grid = group_grid(groups, group_bits.reshape(-1), symmetric)
    scale = grid.scale.reshape(out_features, num_groups)
    zero_point = grid.zero_point.reshape(out_features, num_groups)
    max_level = grid.max_level.reshape(out_features, num_groups)
    return [
        QuantizationGrid(scale[:, [g]], zero_point[:, [g]], max_level[:, [g]]) for g in range(num_groups)
    ]


def _quantize_columns(
    weight: torch.Tensor,
    upper: torch.Tensor,
    group_of_column: list[int],
    static_grids: list[QuantizationGrid] | None,
    group_bits: torch.Tensor,
    group_size: int,
    symmetric: bool,
    mask: torch.Tensor | None,
    block_size: int,
) -> torch.Tensor:
    """Run the GPTQ column loop on ``weight`` (float32, modified) in its current column order and return Q.

    ``group_of_column[j]`` is the original group of column j. Without ``static_grids``,
    the columns must be in their original order, and each group's grid is computed when
    its first column comes up.
    """
    in_features = weight.shape[1]
    quantized = torch.empty_like(weight)
    grid = None
    for start in range(0, in_features, block_size):
        end = min(start + block_size, in_features)
        block = weight[:, start:end].clone()
        block_upper = upper[start:end, start:end]
        block_errors = torch.zeros_like(block)
        block_mask = None if mask is None else mask[:, start:end]

        for i in range(end - start):
            column = start + i
            if static_grids is not None:
                grid = static_grids[group_of_column[column]]
            elif column % group_size == 0:
                group = _current_group(weight, block, block_errors, upper, mask, start, i, group_size)
                grid = group_grid(group, group_bits[:, group_of_column[column]], symmetric)

            values = block[:, i]
            rounded = grid.quantize(values.unsqueeze(1)).squeeze(1)
            quantized[:, column] = rounded
            error = (values - rounded) / block_upper[i, i]
            block[:, i + 1 :] -= torch.outer(error, block_upper[i, i + 1 :])
            if block_mask is not None:
                # The update would revive pruned weights, so they are zeroed again.
                block[:, i + 1 :] *= block_mask[:, i + 1 :]
            block_errors[:, i] = error

        weight[:, end:] -= block_errors @ upper[start:end, end:]
        if mask is not None:
            weight[:, end:] *= mask[:, end:]
    return quantized


def _current_group(
    weight: torch.Tensor,
    block: torch.Tensor,
    block_errors: torch.Tensor,
    upper: torch.Tensor,
    mask: torch.Tensor | None,
    start: int,
    i: int,
    group_size: int,
) -> torch.Tensor:
    """Return the current values of the group that begins at column ``start + i``.

    Inside the block, ``block`` is up to date. A group that runs past the block's end
    still lacks the deferred updates from the block's first ``i`` columns, so they are
    added here to the part past the end.
    """
    end = start + block.shape[1]
    inside = block[:, i : i + group_size]
    if start + i + group_size <= end:
        return inside
    group_end = start + i + group_size
    pending = block_errors[:, :i] @ upper[start : start + i, end:group_end]
    outside = weight[:, end:group_end] - pending
    if mask is not None:
        outside *= mask[:, end:group_end]
    return torch.cat([inside, outside], dim=1)


class GPTQ(WeightQuantization):
    """``w_method=gptq``: GPTQ over each target layer's calibration Hessian, with optional salient groups."""

    method = "gptq"

    def __init__(
        self,
        bits: int,
        group_size: int,
        symmetric: bool,
        salient: SalientGroups | None = None,
        *,
        damp: float,
        block_size: int,
        act_order: bool,
    ) -> None:
        super().__init__(bits, group_size, symmetric, salient)
        self.damp = damp
        self.block_size = block_size
        self.act_order = act_order
        self.statistics = (HESSIAN, *self.statistics)

    def apply(self, layer: CompressedLinear, statistics: LayerStatistics | None) -> None:
        weight = layer.weight.data
        group_bits = self.group_bits(layer, statistics)
        # Weights zeroed by a pruning step before this one must stay zero.
        pruned = any(step.startswith("prune=") for step in layer.compression_steps)
        quantized = gptq_quantize(
            weight,
            statistics.hessian,
            bits=group_bits,
            group_size=self.group_size,
            symmetric=self.symmetric,
            damp=self.damp,
            block_size=self.block_size,
            act_order=self.act_order,
            keep_mask=weight != 0 if pruned else None,
        )
        weight.copy_(quantized)
        order = " act_order" if self.act_order else ""
        self.record(layer, group_bits, details=f" damp={self.damp:g}{order}")
