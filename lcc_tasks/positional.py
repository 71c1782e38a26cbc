"""Bucketing of per-position statistics by context length, and their aggregation.

    edges = bucket_edges(seq_len=32768, num_buckets=8)     # [0, 4096, ..., 32768]
    values = summarize_sequence(token_stats, edges, curve_stride=64)
    values["kl_pos_0_4096"]      # {"kl": mean over positions 0..4095, "tokens": 4096, "sum": ...}

Every per-sequence value is a sum together with the number of positions behind it, so
that aggregating over sequences gives token-weighted means (a sequence contributes to a
bucket in proportion to the positions it has there). Only numpy is needed here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lcc_tasks import statistics

# Statistics of lcc_tasks.kl.TokenKL that the curve keeps, in this order.
CURVE_FIELDS = ("kl", "kl_ref", "top1_agree", "nll", "nll_ref", "js")
# Per-token KL percentiles reported for the whole sequence: metric name and quantile.
QUANTILES = {"kl_median": 0.5, "kl_p90": 0.9, "kl_p99": 0.99}
QUANTILE_METRICS = tuple(QUANTILES)
# Metrics computed from the per-bucket KL sums of every document.
BUCKET_SERIES_METRICS = ("kl_slope", "kl_slope_ci95_low", "kl_slope_ci95_high", "kl_growth")


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


def bucket_token_names(edges: Sequence[int]) -> list[str]:
    """Return ``tokens_pos_<start>_<end>``, the metric with the number of positions behind each bucket."""
    return [f"tokens_pos_{start}_{end}" for start, end in zip(edges, edges[1:])]


def summarize_sequence(stats: Any, edges: Sequence[int], curve_stride: int) -> dict[str, Any]:
    """Reduce one sequence's per-position statistics to the task's per-sequence metric values.

    ``stats`` has the float arrays of ``lcc_tasks.kl.TokenKL`` for one sequence, each of
    length T - 1 (position t predicts token t + 1). A sequence shorter than the task's
    length has no tokens in the buckets it does not reach. Values are JSON-friendly, so
    that ``--log_samples`` writes them as they are, and each is a sum with its token count
    so that aggregation gives token-weighted means.
    """
    arrays = {name: np.asarray(getattr(stats, name), dtype=np.float64) for name in CURVE_FIELDS}
    positions = arrays["kl"].shape[0]
    # Change in the probability of the actual next token, compressed minus reference.
    delta_p = np.exp(-arrays["nll"]) - np.exp(-arrays["nll_ref"])
    whole = _window_summary(arrays, delta_p, 0, positions)
    buckets = [_window_summary(arrays, delta_p, start, end) for start, end in zip(edges, edges[1:])]
    bucket_sums = [bucket["kl_sum"] for bucket in buckets]
    bucket_tokens = [bucket["tokens"] for bucket in buckets]

    values: dict[str, Any] = {
        "kl": {
            "mean": whole["kl_sum"] / positions if positions else None,
            "sum": whole["kl_sum"],
            "tokens": positions,
            "curve": _curve_sums(arrays, curve_stride),
            "buckets": buckets,
        },
        "kl_ci95_low": [whole["kl_sum"], positions],
        "kl_ci95_high": [whole["kl_sum"], positions],
        "kl_ref": [whole["kl_ref_sum"], positions],
        "js": [whole["js_sum"], positions],
        "top1_agree": [whole["top1_sum"], positions],
        "rms_dp": [whole["dp_sq_sum"], positions],
        "ppl_ratio": [float(arrays["nll"].sum()), float(arrays["nll_ref"].sum()), positions],
        "kl_max": whole["kl_max"],
    }
    for name in QUANTILE_METRICS:
        values[name] = whole["hist"]
    for name in BUCKET_SERIES_METRICS:
        values[name] = {"sums": bucket_sums, "tokens": bucket_tokens}
    for kl_name, tokens_name, bucket in zip(bucket_metric_names(edges), bucket_token_names(edges), buckets):
        mean = bucket["kl_sum"] / bucket["tokens"] if bucket["tokens"] else None
        values[kl_name] = {"kl": mean, "tokens": bucket["tokens"], "sum": bucket["kl_sum"]}
        values[tokens_name] = bucket["tokens"]
    return values


def _window_summary(arrays: dict[str, np.ndarray], delta_p: np.ndarray, start: int, end: int) -> dict[str, Any]:
    kl = arrays["kl"][start:end]
    return {
        "tokens": int(kl.shape[0]),
        "kl_sum": float(kl.sum()),
        "kl_ref_sum": float(arrays["kl_ref"][start:end].sum()),
        "js_sum": float(arrays["js"][start:end].sum()),
        "top1_sum": float(arrays["top1_agree"][start:end].sum()),
        "dp_sq_sum": float(np.square(delta_p[start:end]).sum()),
        "kl_max": float(kl.max()) if kl.shape[0] else None,
        "hist": statistics.log_histogram(kl),
    }


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
