"""SparseGPT pruning: zero weights and let the remaining ones compensate for the output error.

    pruned, keep = sparsegpt_prune(weight, statistics.hessian, sparsity=0.5)
    pruned, keep = sparsegpt_prune(weight, statistics.hessian, sparsity=0.5, nm=(2, 4))

SparseGPT comes from Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be
Accurately Pruned in One-Shot". It walks over the input columns with the same machinery
as GPTQ (see gptq.py): U is the upper Cholesky factor of H^-1 for H = 2 X^T X / tokens,
and when column j is done, the error e = (W[:, j] - P[:, j]) / U[j, j] of its pruned
entries is spread over the later columns by W[:, j+1:] -= e * U[j, j+1:]. Here P is
column j with its pruned entries set to exactly 0 and the others unchanged.

Which weights to prune is decided per block of ``block_size`` columns, from the weights
as they stand when the block starts (the paper's adaptive mask selection). The score is
w^2 / U[j, j]^2. Because U[j, j]^2 = [(H restricted to columns j..)^-1]_jj, this is the
optimal brain surgeon estimate of the output error caused by removing w. Unstructured
pruning removes the ``sparsity`` fraction of the block's weights with the lowest score,
compared over all rows of the block. N:M pruning instead removes the M - N lowest scores in
every group of M consecutive columns of each row, selected when the group's first column
comes up.
"""

from __future__ import annotations

import logging

import torch

from lcc_models.compression.gptq import check_weight_and_hessian, float32_working_copies, inverse_hessian_cholesky
from lcc_models.compression.base import HESSIAN, CompressionMethod, LayerStatistics, TargetLayer
from lcc_models.compression.layers import CompressedLinear
from lcc_models.compression.magnitude import check_n_of_m_fits, prune_lowest, prune_n_of_m
from lcc_models.spec import ModelArgumentError

logger = logging.getLogger(__name__)


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` [out_features, in_features] with SparseGPT and return the new weight and the kept mask.

    ``hessian`` is 2 X^T X / tokens of the layer input X. The work runs in float32 on the
    weight's device, and neither input is modified. The new weight has the input's dtype,
    and it is exactly 0 wherever the bool mask is False. Dead inputs (diag(H) == 0) get a
    zero weight column, and those zeros may count as kept if the score does not select them.

    ``nm=(N, M)`` follows the hardware convention: at most N non-zero weights in every M
    consecutive input weights of a row, so (2, 4) keeps 2 and prunes 2. The ``prunen`` and
    ``prunem`` arguments of SparseGPT's and Wanda's published code count the pruned weights
    instead, so their prunen=1, prunem=4 is nm=(3, 4) here.
    With ``nm``, ``sparsity`` is ignored, M must divide in_features, and ``block_size``
    must be a multiple of M so that no group of M straddles two blocks.
    """
    check_weight_and_hessian(weight, hessian, damp, block_size)
    _check_sparsity(sparsity, nm, weight.shape[1], block_size)

    working_weight, working_hessian, dead = float32_working_copies(weight, hessian, damp)
    upper = inverse_hessian_cholesky(working_hessian, damp)
    keep = _prune_columns(working_weight, upper, sparsity, nm, block_size)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "SparseGPT pruned %d of %d weights of a [%d, %d] weight (%d dead inputs)",
            int((~keep).sum()),
            keep.numel(),
            weight.shape[0],
            weight.shape[1],
            int(dead.sum()),
        )
    return working_weight.to(weight.dtype), keep


def _check_sparsity(sparsity: float, nm: tuple[int, int] | None, in_features: int, block_size: int) -> None:
    if nm is None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
            raise ValueError(f"invalid sparsity={sparsity}: expected a fraction of weights to prune, 0 <= sparsity < 1")
        return
    if (
        len(nm) != 2
        or not all(isinstance(value, int) and not isinstance(value, bool) for value in nm)
        or not 0 < nm[0] < nm[1]
    ):
        raise ValueError(
            f"invalid nm={nm!r}: expected (N, M) with integers 0 < N < M, keeping N weights in every M, such as (2, 4)"
        )
    n, m = nm
    if in_features % m:
        raise ValueError(f"invalid nm={n}:{m}: M={m} does not divide in_features={in_features}")
    if block_size % m:
        raise ValueError(
            f"invalid block_size={block_size} for nm={n}:{m}: block_size must be a multiple of M={m}, such as 128"
        )


def _prune_columns(
    weight: torch.Tensor, upper: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, block_size: int
) -> torch.Tensor:
    """Run the SparseGPT column loop on ``weight`` (float32, modified in place) and return the kept mask."""
    in_features = weight.shape[1]
    keep = torch.ones_like(weight, dtype=torch.bool)
    for start in range(0, in_features, block_size):
        end = min(start + block_size, in_features)
        block = weight[:, start:end].clone()
        block_upper = upper[start:end, start:end]
        block_errors = torch.zeros_like(block)
        block_keep = keep[:, start:end]
        inverse_diagonal_squared = torch.diagonal(block_upper) ** 2

        if nm is None:
            score = block**2 / inverse_diagonal_squared
            # prune_lowest zeroes its first argument in place, so it gets a scratch copy.
            block_keep.copy_(prune_lowest(score.clone(), score, sparsity, "layer"))

        for i in range(end - start):
            if nm is not None and i % nm[1] == 0:
                columns = slice(i, i + nm[1])
                score = block[:, columns] ** 2 / inverse_diagonal_squared[columns]
                block_keep[:, columns] = prune_n_of_m(score.clone(), score, num_kept=nm[0], group_size=nm[1])

            values = block[:, i]
            pruned_values = values.masked_fill(~block_keep[:, i], 0.0)
            error = (values - pruned_values) / block_upper[i, i]
            block[:, i + 1 :] -= torch.outer(error, block_upper[i, i + 1 :])
            block[:, i] = pruned_values
            block_errors[:, i] = error

        weight[:, start:end] = block
        weight[:, end:] -= block_errors @ upper[start:end, end:]
    return keep


class SparseGPTPruning(CompressionMethod):
    """``prune=sparsegpt``: SparseGPT over each target layer's calibration Hessian."""

    name = "prune:sparsegpt"
    statistics = (HESSIAN,)

    def __init__(self, sparsity: float, nm: tuple[int, int] | None, block_size: int = 128, damp: float = 0.01) -> None:
        self.sparsity = sparsity
        self.nm = nm
        self.block_size = block_size
        self.damp = damp

    def check(self, layers: list[TargetLayer]) -> None:
        check_n_of_m_fits(self.nm, layers)
        if self.nm is not None and self.block_size % self.nm[1]:
            raise ModelArgumentError(
                f"invalid nm={self.nm[0]}:{self.nm[1]} with prune=sparsegpt: M={self.nm[1]} must divide the "
                f"block of {self.block_size} columns that SparseGPT prunes at a time; use M in 2, 4, 8, 16, 32, 64, 128"
            )

    def apply(self, layer: CompressedLinear, statistics: LayerStatistics | None) -> None:
        weight = layer.weight.data
        pruned, _ = sparsegpt_prune(
            weight, statistics.hessian, sparsity=self.sparsity, nm=self.nm, block_size=self.block_size, damp=self.damp
        )
        weight.copy_(pruned)
        pattern = f"{self.nm[0]}:{self.nm[1]}" if self.nm else f"sparsity={self.sparsity:g}"
        layer.add_step(f"prune=sparsegpt {pattern}")
