"""Per-position KL divergence between two models' next-token distributions.

    hidden = decoder(input_ids).last_hidden_state          # both models, [batch, T, H]
    stats = token_kl(hidden, hidden_ref, lm_head, lm_head_ref, input_ids[:, 1:], chunk_size=1024)
    stats.kl[0, 4095]   # D_KL(P_compressed || P_reference) of the prediction made at position 4095
    stats.js[0, 4095]   # Jensen-Shannon divergence of the same two distributions

Only the decoder's hidden states (``T x H`` values per model, in the model's dtype) are
kept for a whole sequence. ``lm_head``, the fp32 ``log_softmax`` and the sums over the
vocabulary run on ``chunk_size`` positions at a time. The extra memory is therefore
O(chunk_size x vocabulary) instead of O(T x vocabulary), where fp32 logits for 32,768
positions and LLaMA-2's 32,000-token vocabulary would take 4.2 GB per model. The decoder
applies its final norm to the whole sequence itself. That output has the size of its
input, so splitting the norm into chunks would save nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TokenKL:
    """Per-position statistics of one batch of sequences, as float32 numpy arrays.

    Entry ``[b, t]`` describes the distribution over token ``t + 1`` predicted from tokens
    ``0..t``; a sequence of T tokens has T - 1 positions. All values are in nats.
    """

    kl: np.ndarray  # D_KL(P_compressed || P_reference), the direction the study reports
    kl_ref: np.ndarray  # D_KL(P_reference || P_compressed), llama.cpp's direction
    top1_agree: np.ndarray  # 1.0 where both models' most likely tokens are the same
    nll: np.ndarray  # -log P_compressed(actual next token)
    nll_ref: np.ndarray  # -log P_reference(actual next token)
    js: np.ndarray  # Jensen-Shannon divergence of the two distributions, at most log 2

    def sequence(self, index: int) -> TokenKL:
        """Return the statistics of sequence ``index`` of the batch, each of shape [T - 1]."""
        return TokenKL(*(getattr(self, name)[index] for name in self.field_names()))

    @staticmethod
    def field_names() -> tuple[str, ...]:
        return ("kl", "kl_ref", "top1_agree", "nll", "nll_ref", "js")

    def __repr__(self) -> str:
        # The harness writes responses into --log_samples files with str(); a summary
        # keeps those files small where the full arrays would add megabytes per sequence.
        return f"TokenKL(positions={self.kl.shape[-1]}, mean_kl={float(self.kl.mean()):.6g})"


@torch.no_grad()
def token_kl(
    hidden: torch.Tensor,
    hidden_ref: torch.Tensor,
    lm_head: torch.nn.Module,
    lm_head_ref: torch.nn.Module,
    targets: torch.Tensor,
    chunk_size: int = 1024,
) -> TokenKL:
    """Compute per-position KL, top-1 agreement and NLL from both models' hidden states.

    ``hidden`` and ``hidden_ref`` are the final (normed) decoder states, [batch, T, H];
    ``targets`` are the next tokens, [batch, T - 1], so position ``t`` of the hidden
    states is scored against ``targets[:, t]``. The last hidden position has no target
    and is not used.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of positions, got {chunk_size}")
    batch, positions = targets.shape
    if hidden.shape[:2] != (batch, positions + 1) or hidden_ref.shape[:2] != (batch, positions + 1):
        raise ValueError(
            f"hidden states of shape {tuple(hidden.shape)} and {tuple(hidden_ref.shape)} do not match "
            f"targets of shape {tuple(targets.shape)}: expected [batch, T, H] with T = targets.shape[1] + 1"
        )
    outputs = {name: torch.empty(batch, positions, dtype=torch.float32) for name in TokenKL.field_names()}

    for start in range(0, positions, chunk_size):
        end = min(start + chunk_size, positions)
        log_p = _log_probs(lm_head, hidden[:, start:end])
        log_q = _log_probs(lm_head_ref, hidden_ref[:, start:end]).to(log_p.device)
        chunk_targets = targets[:, start:end].to(log_p.device)
        log_ratio = log_p - log_q
        # D_KL(p||q) = sum p (log p - log q); D_KL(q||p) = sum q (log q - log p).
        # Rounding can leave a value a few ulps below zero where p == q.
        kl = (log_p.exp() * log_ratio).sum(-1).clamp_min_(0.0)
        kl_ref = (log_q.exp() * log_ratio).sum(-1).neg_().clamp_min_(0.0)
        del log_ratio
        top1_agree = (log_p.argmax(-1) == log_q.argmax(-1)).float()
        nll = -log_p.gather(-1, chunk_targets.unsqueeze(-1)).squeeze(-1)
        nll_ref = -log_q.gather(-1, chunk_targets.unsqueeze(-1)).squeeze(-1)
        js = _jensen_shannon(log_p, log_q)
        for name, value in zip(TokenKL.field_names(), (kl, kl_ref, top1_agree, nll, nll_ref, js)):
            outputs[name][:, start:end] = value.cpu()
        del log_p, log_q

    return TokenKL(**{name: value.numpy() for name, value in outputs.items()})


def _jensen_shannon(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Return JS(p, q) = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, over the last dimension."""
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    js = 0.5 * ((log_p.exp() * (log_p - log_m)).sum(-1) + (log_q.exp() * (log_q - log_m)).sum(-1))
    return js.clamp_min_(0.0)


def _log_probs(lm_head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    weight = getattr(lm_head, "weight", None)
    if weight is not None and hidden.device != weight.device:
        hidden = hidden.to(weight.device)
    return torch.log_softmax(lm_head(hidden).float(), dim=-1)
