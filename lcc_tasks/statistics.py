"""Statistics that tell a real change of KL with context from noise: bootstrap intervals, quantiles, slope.

    histogram = log_histogram(kl_values)                   # sparse, mergeable across documents
    median = histogram_quantile(histogram, 0.5)
    result = bootstrap(sums, tokens, mean_ratio, iters=1000, seed=0)   # over documents
    result.value, result.stderr, result.ci_low, result.ci_high

Documents are the unit of resampling: the positions of one document are strongly
correlated, so resampling tokens would make intervals far too narrow. Every statistic is
a function of per-document sums and token counts (one column per bucket), so a bootstrap
replicate only needs the documents' multiplicities. Percentiles of per-token KL come
from a histogram with ``BINS_PER_DECADE`` logarithmic bins per factor of 10, so a
reported quantile is the geometric centre of its bin: within a factor 10^(1/100), about
2.3%, of the exact value. Values at or below ``ZERO_THRESHOLD`` count as exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

# 50 bins per decade keep a --log_samples line small and quantiles within 2.3%.
BINS_PER_DECADE = 50
# Values at or below this count as zero: they are below float32 rounding of a KL sum.
ZERO_THRESHOLD = 1e-12
ZERO_BIN = -(10**9)  # bin index of the zero values, below every log bin


def log_histogram(values: np.ndarray) -> dict[str, list[int]]:
    """Return a sparse histogram of non-negative ``values``: ``{"bins": [...], "counts": [...]}`` (JSON-friendly)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    bins = np.full(values.shape, ZERO_BIN, dtype=np.int64)
    positive = values > ZERO_THRESHOLD
    bins[positive] = np.floor(np.log10(values[positive]) * BINS_PER_DECADE).astype(np.int64)
    unique, counts = np.unique(bins, return_counts=True)
    return {"bins": unique.tolist(), "counts": counts.tolist()}


def merge_histograms(histograms: Iterable[dict[str, list[int]]]) -> dict[int, int]:
    """Return the sum of sparse histograms as ``{bin: count}``."""
    total: dict[int, int] = {}
    for histogram in histograms:
        for bin_index, count in zip(histogram["bins"], histogram["counts"]):
            total[bin_index] = total.get(bin_index, 0) + count
    return total


def histogram_quantile(histogram: dict[int, int], quantile: float) -> float:
    """Return the ``quantile`` (0..1) of a merged histogram as its bin's geometric centre; NaN if empty."""
    total = sum(histogram.values())
    if total == 0:
        return math.nan
    # The smallest value whose cumulative count reaches quantile * total, as numpy's "lower" method.
    rank = max(math.ceil(quantile * total), 1)
    cumulative = 0
    for bin_index in sorted(histogram):
        cumulative += histogram[bin_index]
        if cumulative >= rank:
            return 0.0 if bin_index == ZERO_BIN else 10 ** ((bin_index + 0.5) / BINS_PER_DECADE)
    return math.nan  # unreachable: the loop ends with cumulative == total >= rank


@dataclass(frozen=True)
class BootstrapResult:
    """A statistic on all documents, with its bootstrap standard error and 95% percentile interval."""

    value: float
    stderr: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "stderr": self.stderr, "ci95_low": self.ci_low, "ci95_high": self.ci_high}


# A statistic maps summed values [..., k] and summed token counts [..., k] to [...]. The
# leading dimensions are bootstrap replicates, so it must be vectorized over them.
Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


def bootstrap(
    sums: np.ndarray, tokens: np.ndarray, statistic: Statistic, iters: int = 1000, seed: int = 0
) -> BootstrapResult:
    """Evaluate ``statistic`` on all documents and on ``iters`` resamples of them with replacement.

    ``sums`` and ``tokens`` are [documents, k]: per document, the sum of a per-token value
    and the number of tokens, in each of k columns (buckets). The interval is the 2.5th
    to 97.5th percentile of the replicates that are finite; NaN when there are none.
    """
    sums = np.asarray(sums, dtype=np.float64).reshape(len(sums), -1)
    tokens = np.asarray(tokens, dtype=np.float64).reshape(len(tokens), -1)
    documents = sums.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        value = float(statistic(sums.sum(axis=0), tokens.sum(axis=0)))
        if documents < 2 or iters < 1:
            return BootstrapResult(value, math.nan, math.nan, math.nan)
        rng = np.random.default_rng(seed)
        replicates = []
        # Chunks keep the [replicates, documents] multiplicity matrix small.
        for start in range(0, iters, 1000):
            count = min(1000, iters - start)
            multiplicity = rng.multinomial(documents, np.full(documents, 1.0 / documents), size=count).astype(np.float64)
            replicates.append(statistic(multiplicity @ sums, multiplicity @ tokens))
        samples = np.concatenate(replicates)
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return BootstrapResult(value, math.nan, math.nan, math.nan)
    low, high = np.percentile(samples, [2.5, 97.5])
    return BootstrapResult(value, float(samples.std(ddof=1)), float(low), float(high))


def mean_ratio(sums: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Token-weighted mean over all columns: sum of values / number of tokens."""
    return sums.sum(axis=-1) / tokens.sum(axis=-1)


def slope_statistic(centres: np.ndarray) -> Statistic:
    """Return the least-squares slope of bucket means against ``centres``, skipping buckets without tokens."""
    centres = np.asarray(centres, dtype=np.float64)

    def slope(sums: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        present = tokens > 0
        means = np.where(present, sums / np.where(present, tokens, 1.0), 0.0)
        weight = present.astype(np.float64)
        count = weight.sum(axis=-1)
        centre_mean = (weight * centres).sum(axis=-1) / count
        value_mean = (weight * means).sum(axis=-1) / count
        deviation = (centres - centre_mean[..., None]) * weight
        denominator = (deviation * (centres - centre_mean[..., None])).sum(axis=-1)
        numerator = (deviation * (means - value_mean[..., None])).sum(axis=-1)
        # Fewer than two buckets with tokens have no slope.
        return np.where(count >= 2, numerator / np.where(denominator > 0, denominator, np.nan), np.nan)

    return slope


def growth_statistic(last_bucket: int) -> Statistic:
    """Return the mean of bucket ``last_bucket`` over the mean of bucket 0 (NaN where either has no tokens)."""

    def growth(sums: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        first = sums[..., 0] / tokens[..., 0]
        last = sums[..., last_bucket] / tokens[..., last_bucket]
        return last / first

    return growth
