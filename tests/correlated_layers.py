"""Layers with correlated inputs, the test case of GPTQ and SparseGPT."""

import torch


def correlated_layer(seed: int, rows: int = 32, in_features: int = 256, tokens: int = 512, rank: int = 48):
    """Return inputs X [tokens, in_features], their Hessian 2 X^T X / tokens and a weight [rows, in_features].

    X = Z A plus a small independent part, with Z ~ N(0, 1) of rank ``rank`` < in_features.
    The columns are then scaled unevenly, as real activations are, so that GPTQ's act_order matters.
    """
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, rank, generator=generator)
    mixing = torch.randn(rank, in_features, generator=generator)
    inputs = latent @ mixing + 0.1 * torch.randn(tokens, in_features, generator=generator)
    inputs = inputs * (0.1 + 2 * torch.rand(in_features, generator=generator))
    hessian = 2 * inputs.T @ inputs / tokens
    weight = torch.randn(rows, in_features, generator=generator)
    return inputs, hessian, weight
