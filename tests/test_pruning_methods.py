"""Wanda, random and N:M pruning against their definitions, on small hand-built layers."""

import pytest
import torch
from torch import nn

from lcc_models.compression.calibration import BlockInputs, collect_statistics
from lcc_models.compression.base import FEATURE_NORMS
from lcc_models.compression.layers import CompressedLinear
from lcc_models.compression.magnitude import MagnitudePruning, prune_n_of_m
from lcc_models.compression.random_pruning import RandomPruning
from lcc_models.compression.wanda import WandaPruning


def compressed_layer(in_features=24, out_features=6, seed=0, name="block.0.proj"):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=False)
    return CompressedLinear.from_linear(linear, name)


def wanda_statistics(layer, inputs):
    block = nn.Sequential(layer)
    return collect_statistics(block, [layer], BlockInputs(inputs, {}), {FEATURE_NORMS})[layer.qualified_name]


def test_wanda_mask_equals_brute_force():
    layer = compressed_layer()
    torch.manual_seed(1)
    # Features with very different scales, so that Wanda's mask differs from magnitude's.
    scales = torch.logspace(-2, 1, layer.in_features)
    inputs = [torch.randn(1, 10, layer.in_features) * scales for _ in range(3)]
    original = layer.weight.detach().clone()
    statistics = wanda_statistics(layer, inputs)
    WandaPruning(0.5, "row").apply(layer, statistics)

    tokens = torch.cat([chunk.reshape(-1, layer.in_features) for chunk in inputs])
    pruned_per_row = int(0.5 * layer.in_features)
    for row in range(layer.out_features):
        scores = []
        for column in range(layer.in_features):
            norm = sum(float(tokens[t, column]) ** 2 for t in range(tokens.shape[0])) ** 0.5
            scores.append((abs(float(original[row, column])) * norm, column))
        expected_pruned = {column for _, column in sorted(scores)[:pruned_per_row]}
        actual_pruned = {column for column in range(layer.in_features) if layer.weight[row, column] == 0}
        assert actual_pruned == expected_pruned, f"row {row}"
    magnitude_layer = compressed_layer()
    MagnitudePruning(0.5, "row").apply(magnitude_layer, None)
    assert not torch.equal(magnitude_layer.weight == 0, layer.weight == 0)


def test_statistics_count_every_token():
    layer = compressed_layer(in_features=8)
    inputs = [torch.ones(1, 5, 8), 2 * torch.ones(1, 3, 8)]
    statistics = wanda_statistics(layer, inputs)
    assert statistics.tokens == 8
    torch.testing.assert_close(statistics.feature_norms(), torch.full((8,), (5 + 3 * 4) ** 0.5))


@pytest.mark.parametrize(("kept", "group"), [(2, 4), (1, 4), (2, 8), (4, 8)])
def test_n_of_m_pattern_exact(kept, group):
    torch.manual_seed(kept * group)
    weight = torch.randn(16, 64)
    original = weight.clone()
    prune_n_of_m(weight, weight.abs(), kept, group)
    groups = weight.reshape(16, 64 // group, group)
    nonzero = (groups != 0).sum(dim=2)
    assert torch.all(nonzero == kept)
    # The kept weights are the largest of their group, unchanged.
    original_groups = original.abs().reshape(16, 64 // group, group)
    kept_min = torch.where(groups != 0, original_groups, torch.inf).amin(dim=2)
    pruned_max = torch.where(groups == 0, original_groups, -torch.inf).amax(dim=2)
    assert torch.all(kept_min >= pruned_max)
    torch.testing.assert_close(weight[weight != 0], original[weight != 0])


def test_wanda_n_of_m_uses_activation_scores():
    layer = compressed_layer(in_features=16, out_features=4)
    # Feature 0 of every group of 4 is 100x louder: Wanda keeps it even where its weight is small.
    scales = torch.tensor([100.0, 1.0, 1.0, 1.0] * 4)
    statistics = wanda_statistics(layer, [torch.randn(1, 50, 16) * scales])
    with torch.no_grad():
        layer.weight[:, ::4] = 0.05 * torch.sign(layer.weight[:, ::4]) + 1e-3
    WandaPruning(None, "row", (1, 4)).apply(layer, statistics)
    groups = layer.weight.reshape(4, 4, 4)
    assert torch.all((groups != 0).sum(dim=2) == 1)
    assert torch.all(groups[:, :, 0] != 0)


@pytest.mark.parametrize("sparsity", [0.1, 0.37, 0.5, 0.9])
def test_random_sparsity_per_row(sparsity):
    layer = compressed_layer(in_features=50, out_features=20)
    RandomPruning(sparsity, "row", seed=3).apply(layer, None)
    zeros_per_row = (layer.weight == 0).sum(dim=1).float() / layer.in_features
    assert torch.all((zeros_per_row - sparsity).abs() <= 1 / layer.in_features)


def test_random_mask_reproducible_by_seed():
    masks = []
    for seed in (7, 7, 8):
        layer = compressed_layer(in_features=40, out_features=10)
        RandomPruning(0.5, "row", seed=seed).apply(layer, None)
        masks.append(layer.weight == 0)
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


def test_random_mask_depends_on_layer_name():
    first = compressed_layer(name="model.layers.0.mlp.up_proj")
    second = compressed_layer(name="model.layers.1.mlp.up_proj")
    for layer in (first, second):
        RandomPruning(0.5, "row", seed=0).apply(layer, None)
    assert not torch.equal(first.weight == 0, second.weight == 0)


def test_random_scores_fixed_values():
    # Recorded with torch 2.13 (CPU Mersenne Twister). If these change, masks published
    # with a seed can no longer be reproduced.
    from lcc_models.compression.random_pruning import random_scores

    scores = random_scores(torch.Size([2, 3]), 0, "model.layers.0.self_attn.q_proj")
    expected = torch.tensor([[0.7664101720, 0.0651340485, 0.3874132633], [0.7990334630, 0.4530515075, 0.6374660134]])
    torch.testing.assert_close(scores, expected)
