"""The chunked KL computation against torch's own definitions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lcc_tasks.kl import token_kl


class LogitsHead(torch.nn.Module):
    """An lm_head stand-in whose 'hidden states' already are the logits."""

    def forward(self, hidden):
        return hidden


def random_case(batch=2, positions=17, vocab=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, positions + 1, vocab, generator=generator) * 3
    logits_ref = logits + torch.randn(batch, positions + 1, vocab, generator=generator)
    targets = torch.randint(0, vocab, (batch, positions), generator=generator)
    return logits, logits_ref, targets


def expected_stats(logits, logits_ref, targets):
    log_p = F.log_softmax(logits[:, :-1].double(), -1)
    log_q = F.log_softmax(logits_ref[:, :-1].double(), -1)
    # F.kl_div(input, target, log_target=True) = sum exp(target) * (target - input) = D_KL(target || input)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    kl_ref = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
    nll = F.nll_loss(log_p.transpose(1, 2), targets, reduction="none")
    nll_ref = F.nll_loss(log_q.transpose(1, 2), targets, reduction="none")
    agree = (log_p.argmax(-1) == log_q.argmax(-1)).double()
    return kl, kl_ref, nll, nll_ref, agree


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 17, 100])
def test_token_kl_matches_kl_div(chunk_size):
    logits, logits_ref, targets = random_case()
    stats = token_kl(logits, logits_ref, LogitsHead(), LogitsHead(), targets, chunk_size=chunk_size)
    kl, kl_ref, nll, nll_ref, agree = expected_stats(logits, logits_ref, targets)

    np.testing.assert_allclose(stats.kl, kl.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.kl_ref, kl_ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.nll, nll.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.nll_ref, nll_ref.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stats.top1_agree, agree.numpy())


def test_token_kl_directions_differ():
    logits, logits_ref, targets = random_case(seed=1)
    stats = token_kl(logits, logits_ref, LogitsHead(), LogitsHead(), targets, chunk_size=5)
    # KL is asymmetric: on random distributions the two directions never coincide.
    assert not np.allclose(stats.kl, stats.kl_ref)


def test_token_kl_zero_for_identical_models():
    logits, _, targets = random_case(seed=2)
    stats = token_kl(logits, logits.clone(), LogitsHead(), LogitsHead(), targets, chunk_size=4)
    assert stats.kl.max() == 0.0
    assert stats.kl_ref.max() == 0.0
    assert stats.top1_agree.min() == 1.0
    np.testing.assert_array_equal(stats.nll, stats.nll_ref)


def test_token_kl_shapes_and_sequence_view():
    logits, logits_ref, targets = random_case(batch=3, positions=9)
    stats = token_kl(logits, logits_ref, LogitsHead(), LogitsHead(), targets, chunk_size=4)
    assert stats.kl.shape == (3, 9)
    single = stats.sequence(2)
    assert single.kl.shape == (9,)
    np.testing.assert_array_equal(single.nll_ref, stats.nll_ref[2])
    assert "positions=9" in repr(single)


def test_token_kl_rejects_mismatched_shapes():
    logits, logits_ref, targets = random_case(positions=5)
    with pytest.raises(ValueError, match="do not match targets"):
        token_kl(logits, logits_ref, LogitsHead(), LogitsHead(), targets[:, :3])
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        token_kl(logits, logits_ref, LogitsHead(), LogitsHead(), targets, chunk_size=0)


def test_token_kl_with_real_lm_head():
    torch.manual_seed(3)
    head = torch.nn.Linear(8, 30, bias=False)
    head_ref = torch.nn.Linear(8, 30, bias=False)
    hidden = torch.randn(1, 12, 8)
    hidden_ref = torch.randn(1, 12, 8)
    targets = torch.randint(0, 30, (1, 11))
    stats = token_kl(hidden, hidden_ref, head, head_ref, targets, chunk_size=5)
    kl, kl_ref, *_ = expected_stats(head(hidden).detach(), head_ref(hidden_ref).detach(), targets)
    np.testing.assert_allclose(stats.kl, kl.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.kl_ref, kl_ref.numpy(), rtol=1e-5, atol=1e-6)
