"""Bucketing of per-position statistics by context length, and their aggregation.

    edges = bucket_edges(seq_len=32768, num_buckets=8)     # [0, 4096, ..., 32768]
    values = summarize_sequence(token_stats, edges, curve_stride=64)
    values["kl_pos_0_4096"]      # [sum of KL over positions 0..4095, number of positions]

Every per-sequence value is a sum together with the number of positions behind it, so
that aggregating over sequences gives token-weighted means (a sequence contributes to a
bucket in proportion to the positions it has there). Only numpy is needed here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# Statistics of lcc_tasks.kl.TokenKL that the curve keeps, in this order.
CURVE_FIELDS = ("kl", "kl_ref", "top1_agree", "nll", "nll_ref")


def bucket_edges(seq_len: int, num_buckets: int | None = 8, edges: Sequence[int] | None = None) -> list[int]:
    """Return increasing bucket edges over token positions ``[0, seq_len)``.

    Explicit ``edges`` must start at 0 and increase strictly; a last edge below
    ``seq_len`` leaves the later positions out of every bucket. Otherwise
    ``num_buckets`` buckets of equal width are made; ``seq_len`` must be divisible by it.
    """
    if edges is not None:
        edges = [int(edge) for edge in edges]
        if len(edges) < 2 or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(
                f"bucket_edges must be at least two strictly increasing token positions starting at 0, got {edges}"
            )
        if edges[-1] > seq_len:
            raise ValueError(f"bucket_edges {edges} end after seq_len {seq_len}; the last edge must be <= seq_len")
        return edges
    if num_buckets is None or num_buckets < 1 or seq_len % num_buckets:
        raise ValueError(
            f"num_buckets must be a positive divisor of seq_len {seq_len}, got {num_buckets}; "
            "set bucket_edges in the task's metadata for buckets of unequal width"
        )
    width = seq_len // num_buckets
    return [index * width for index in range(num_buckets + 1)]


def bucket_metric_names(edges: Sequence[int]) -> list[str]:
    """Return ``kl_pos_<start>_<end>`` for each bucket (token positions, end exclusive)."""
    return [f"kl_pos_{start}_{end}" for start, end in zip(edges, edges[1:])]


def summarize_sequence(stats: Any, edges: Sequence[int], curve_stride: int) -> dict[str, Any]:
    """Reduce one sequence's per-position statistics to the task's per-sequence metric values.

    ``stats`` has the float arrays of ``lcc_tasks.kl.TokenKL`` for one sequence, each of
    length T - 1 (position t predicts token t + 1). Values are JSON-friendly lists so that
    ``--log_samples`` writes them as they are.
    """
    arrays = {name: np.asarray(getattr(stats, name), dtype=np.float64) for name in CURVE_FIELDS}
    positions = arrays["kl"].shape[0]
    kl = arrays["kl"]
    values: dict[str, Any] = {
        "kl": {
            "sum": float(kl.sum()),
            "tokens": positions,
            "curve": _curve_sums(arrays, curve_stride),
        },
        "kl_ref": [float(arrays["kl_ref"].sum()), positions],
        "top1_agree": [float(arrays["top1_agree"].sum()), positions],
        "ppl_ratio": [float(arrays["nll"].sum()), float(arrays["nll_ref"].sum()), positions],
    }
    for name, start, end in zip(bucket_metric_names(edges), edges, edges[1:]):
        window = kl[start:end]
        values[name] = [float(window.sum()), int(window.shape[0])]
    return values


def _curve_sums(arrays: dict[str, np.ndarray], stride: int) -> dict[str, list]:
    positions = arrays["kl"].shape[0]
    point_of_position = np.arange(positions) // stride
    num_points = int(point_of_position[-1]) + 1 if positions else 0
    curve: dict[str, list] = {
        "tokens": np.bincount(point_of_position, minlength=num_points).tolist(),
    }
    for name in CURVE_FIELDS:
        curve[name] = np.bincount(point_of_position, weights=arrays[name], minlength=num_points).tolist()
    return curve


def mean_of_sums(items: Iterable[Sequence[float]]) -> float:
    """Token-weighted mean from per-sequence ``[sum, tokens]`` pairs; NaN when no tokens."""
    total = 0.0
    tokens = 0
    for value_sum, count in items:
        total += value_sum
        tokens += count
    return total / tokens if tokens else math.nan


def ppl_ratio(items: Iterable[Sequence[float]]) -> float:
    """Compressed over reference perplexity from per-sequence ``[nll_sum, nll_ref_sum, tokens]``."""
    nll = 0.0
    nll_ref = 0.0
    tokens = 0
    for nll_sum, nll_ref_sum, count in items:
        nll += nll_sum
        nll_ref += nll_ref_sum
        tokens += count
    return math.exp((nll - nll_ref) / tokens) if tokens else math.nan


def mean_curve(items: Iterable[dict[str, Any]], curve_stride: int) -> dict[str, Any]:
    """Combine the per-sequence ``kl`` values into token-weighted mean curves.

    Point ``i`` covers token positions ``[i * curve_stride, (i + 1) * curve_stride)``
    (the last point may be shorter) and is the mean over every sequence that reaches it.
    """
    token_sums: np.ndarray | None = None
    field_sums: dict[str, np.ndarray] = {}
    sequences = 0
    for item in items:
        sequences += 1
        curve = item["curve"]
        tokens = np.asarray(curve["tokens"], dtype=np.float64)
        token_sums = _add_padded(token_sums, tokens)
        for name in CURVE_FIELDS:
            field_sums[name] = _add_padded(field_sums.get(name), np.asarray(curve[name], dtype=np.float64))
    if token_sums is None:
        return {"curve_stride": curve_stride, "num_sequences": 0, "position_start": [], "tokens": []}

    starts = np.arange(token_sums.shape[0]) * curve_stride
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {name: (field_sums[name] / token_sums).tolist() for name in CURVE_FIELDS}
    return {
        "curve_stride": curve_stride,
        "num_sequences": sequences,
        "position_start": starts.tolist(),
        "tokens": token_sums.astype(np.int64).tolist(),
        **means,
    }


def _add_padded(total: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    if total is None:
        return values.copy()
    if total.shape[0] < values.shape[0]:
        total = np.pad(total, (0, values.shape[0] - total.shape[0]))
    total[: values.shape[0]] += values
    return total
