"""SparseGPT on small layers with correlated inputs, checked against magnitude pruning and a plain OBS loop.

OBS is the optimal brain surgeon update that SparseGPT applies column by column.
"""

import pytest
import torch

from lcc_models.compression.magnitude import prune_lowest, prune_n_of_m
from lcc_models.compression.sparsegpt import sparsegpt_prune
from correlated_layers import correlated_layer

pytestmark = pytest.mark.usefixtures("single_thread")


def output_error(inputs: torch.Tensor, weight: torch.Tensor, compressed: torch.Tensor) -> float:
    """Return ||X W^T - X W'^T|| relative to ||X W^T||."""
    reference = inputs @ weight.T
    return float((reference - inputs @ compressed.float().T).norm() / reference.norm())


def reference_sparsegpt(weight, hessian, *, sparsity, nm, block_size, damp):
    """Prune column by column with the optimal brain surgeon update, using explicit inverses in float64.

    With F the columns from j on, the score of w in column j is w^2 / [H_F^-1]_jj, and
    removing the pruned entries of column j changes the columns F by
    -(w_j - p_j) / [H_F^-1]_jj * [H_F^-1]_j,F. Masks are chosen per block of
    ``block_size`` columns (unstructured) or per group of M columns (N:M) from the current weights.
    """
    current = weight.double().clone()
    hessian = hessian.double().clone()
    in_features = current.shape[1]
    hessian += damp * hessian.diagonal().mean() * torch.eye(in_features, dtype=torch.float64)
    inverses = [torch.linalg.inv(hessian[column:, column:]) for column in range(in_features)]
    inverse_diagonal = torch.tensor([inverse[0, 0] for inverse in inverses], dtype=torch.float64)
    keep = torch.ones_like(current, dtype=torch.bool)

    for start in range(0, in_features, block_size):
        end = min(start + block_size, in_features)
        if nm is None:
            score = current[:, start:end] ** 2 / inverse_diagonal[start:end]
            num_pruned = int(score.numel() * sparsity)
            lowest = torch.argsort(score.flatten(), stable=True)[:num_pruned]
            block_keep = torch.ones(score.numel(), dtype=torch.bool)
            block_keep[lowest] = False
            keep[:, start:end] = block_keep.reshape(score.shape)

        for column in range(start, end):
            if nm is not None and (column - start) % nm[1] == 0:
                columns = slice(column, column + nm[1])
                score = current[:, columns] ** 2 / inverse_diagonal[columns]
                lowest = torch.argsort(score, dim=1, stable=True)[:, : nm[1] - nm[0]]
                keep[:, columns] = True
                keep[:, columns].scatter_(1, lowest, False)

            inverse = inverses[column]
            kept_values = torch.where(keep[:, column], current[:, column], 0.0)
            error = (current[:, column] - kept_values) / inverse[0, 0]
            current[:, column:] -= torch.outer(error, inverse[0])
            current[:, column] = kept_values
    return current.float(), keep


def prune_by_magnitude(weight, *, sparsity=None, nm=None):
    pruned = weight.clone()
    if nm is None:
        prune_lowest(pruned, pruned.abs(), sparsity, "row")
    else:
        prune_n_of_m(pruned, pruned.abs(), num_kept=nm[0], group_size=nm[1])
    return pruned


def test_sparsegpt_output_error_below_magnitude():
    inputs, hessian, weight = correlated_layer(seed=1)
    pruned, _ = sparsegpt_prune(weight, hessian, sparsity=0.5)
    magnitude = prune_by_magnitude(weight, sparsity=0.5)
    # Measured ratio on this layer (torch 2.13, CPU): 0.31.
    assert output_error(inputs, weight, pruned) < 0.6 * output_error(inputs, weight, magnitude)


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (2, 8)])
def test_sparsegpt_n_of_m_error_below_magnitude(nm):
    inputs, hessian, weight = correlated_layer(seed=2)
    pruned, _ = sparsegpt_prune(weight, hessian, sparsity=1 - nm[0] / nm[1], nm=nm)
    magnitude = prune_by_magnitude(weight, nm=nm)
    # Measured ratios on this layer (torch 2.13, CPU): 0.32 for 2:4, 0.53 for 1:4 and 0.50 for 2:8.
    assert output_error(inputs, weight, pruned) < 0.75 * output_error(inputs, weight, magnitude)


@pytest.mark.parametrize("nm, block_size", [(None, 16), (None, 64), ((2, 4), 16), ((1, 4), 64)])
def test_sparsegpt_matches_sequential_obs(nm, block_size):
    inputs, hessian, weight = correlated_layer(seed=3, rows=8, in_features=64, tokens=256, rank=16)
    pruned, keep = sparsegpt_prune(weight, hessian, sparsity=0.5, nm=nm, block_size=block_size)
    expected, expected_keep = reference_sparsegpt(
        weight, hessian, sparsity=0.5, nm=nm, block_size=block_size, damp=0.01
    )
    assert torch.equal(keep, expected_keep)
    torch.testing.assert_close(pruned, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_sparsegpt_sparsity_matches_target(sparsity):
    _, hessian, weight = correlated_layer(seed=4, rows=32, in_features=192)
    pruned, keep = sparsegpt_prune(weight, hessian, sparsity=sparsity, block_size=128)
    # Each block prunes floor(sparsity * its weights): blocks of 128 and 64 columns here.
    expected = int(32 * 128 * sparsity) + int(32 * 64 * sparsity)
    assert int((~keep).sum()) == expected
    assert abs(float((~keep).float().mean()) - sparsity) <= 2 / keep.numel()


@pytest.mark.parametrize("nm", [(1, 4), (2, 4), (2, 8)])
def test_sparsegpt_n_of_m_pattern_exact(nm):
    _, hessian, weight = correlated_layer(seed=5, rows=16, in_features=128)
    n, m = nm
    pruned, keep = sparsegpt_prune(weight, hessian, sparsity=1 - n / m, nm=nm, block_size=32)
    kept_per_group = keep.reshape(16, 128 // m, m).sum(dim=2)
    nonzero_per_group = (pruned != 0).reshape(16, 128 // m, m).sum(dim=2)
    assert torch.all(kept_per_group == n)
    assert torch.all(nonzero_per_group <= n)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_pruned_zero_and_mask_consistent(nm):
    _, hessian, weight = correlated_layer(seed=6, rows=16, in_features=128)
    pruned, keep = sparsegpt_prune(weight, hessian, sparsity=0.5, nm=nm)
    assert keep.dtype == torch.bool
    assert keep.shape == weight.shape
    assert torch.all(pruned[~keep] == 0)
    assert torch.all(pruned[keep] != 0)
    # The optimal brain surgeon update changes the kept weights, unlike magnitude pruning.
    assert not torch.allclose(pruned[keep], weight[keep])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sparsegpt_dtype_and_shape_preserved(dtype):
    _, hessian, weight = correlated_layer(seed=7, rows=8, in_features=64)
    pruned, keep = sparsegpt_prune(weight.to(dtype), hessian, sparsity=0.5)
    assert pruned.dtype == dtype
    assert pruned.shape == weight.shape
    assert torch.all(pruned[~keep] == 0)


def test_sparsegpt_dead_input_column_is_zero():
    inputs, _, weight = correlated_layer(seed=8, rows=8, in_features=64)
    inputs[:, 9] = 0
    hessian = 2 * inputs.T @ inputs / inputs.shape[0]
    pruned, keep = sparsegpt_prune(weight, hessian, sparsity=0.25)
    assert torch.all(pruned[:, 9] == 0)
    assert torch.isfinite(pruned).all()
    # A dead input's weights score 0, so they are the first pruned.
    assert not keep[:, 9].any()


def test_sparsegpt_inputs_not_modified():
    _, hessian, weight = correlated_layer(seed=9, rows=8, in_features=64)
    hessian[:, 4] = 0
    hessian[4, :] = 0
    weight_before, hessian_before = weight.clone(), hessian.clone()
    sparsegpt_prune(weight, hessian, sparsity=0.5)
    sparsegpt_prune(weight, hessian, sparsity=0.5, nm=(2, 4))
    assert torch.equal(weight, weight_before)
    assert torch.equal(hessian, hessian_before)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"nm": (2, 3)}, "M=3 does not divide in_features=64"),
        ({"nm": (2, 4), "block_size": 30}, "block_size=30 for nm=2:4"),
        ({"nm": (4, 4)}, "invalid nm"),
        ({"nm": (0, 4)}, "invalid nm"),
        ({"nm": (3, 2)}, "invalid nm"),
        ({"nm": (2, 4, 8)}, "invalid nm"),
        ({"sparsity": 1.0}, "invalid sparsity=1.0"),
        ({"sparsity": -0.1}, "invalid sparsity=-0.1"),
        ({"block_size": 0}, "invalid block_size=0"),
        ({"hessian": torch.eye(32)}, "invalid hessian of shape"),
    ],
)
def test_sparsegpt_invalid_arguments_raise(change, message):
    arguments = {"hessian": torch.eye(64), "sparsity": 0.5, "nm": None, "block_size": 128}
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        sparsegpt_prune(torch.randn(8, 64), **arguments)
