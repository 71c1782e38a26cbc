"""Magnitude pruning: exact sparsity per row, and the smallest weights go first."""

import pytest
import torch

from lcc_models.compression.magnitude import prune_lowest


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 0.99])
def test_row_scope_exact_sparsity_in_every_row(sparsity):
    torch.manual_seed(0)
    weight = torch.randn(32, 200)
    prune_lowest(weight, weight.abs(), sparsity, "row")
    expected = int(200 * sparsity)
    zeros_per_row = (weight == 0).sum(dim=1)
    assert torch.all(zeros_per_row == expected)


def test_row_scope_prunes_smallest_magnitudes():
    torch.manual_seed(1)
    weight = torch.randn(16, 64)
    original = weight.clone()
    prune_lowest(weight, weight.abs(), 0.25, "row")
    for row, original_row in zip(weight, original):
        pruned_magnitudes = original_row[row == 0].abs()
        remaining_magnitudes = original_row[row != 0].abs()
        assert pruned_magnitudes.max() <= remaining_magnitudes.min()
    torch.testing.assert_close(weight[weight != 0], original[weight != 0])


def test_row_scope_breaks_ties_to_exact_count():
    weight = torch.ones(4, 10)
    prune_lowest(weight, weight.abs(), 0.5, "row")
    assert torch.all((weight == 0).sum(dim=1) == 5)


def test_layer_scope_compares_whole_matrix():
    weight = torch.tensor([[0.1, 0.2, 0.3, 0.4], [10.0, 20.0, 30.0, 40.0]])
    keep = prune_lowest(weight, weight.abs(), 0.5, "layer")
    # Whole-matrix comparison empties the small row; per-row comparison would not.
    assert torch.all(weight[0] == 0)
    assert torch.all(weight[1] != 0)
    assert keep.sum() == 4
