"""Bootstrap intervals, per-token quantiles, slope and growth, on synthetic data with known true values."""

import math

import numpy as np
import pytest

from lcc_tasks import statistics


def synthetic_documents(rng, documents, true_mean=0.2, tokens=200):
    """Per-document KL sums whose document means scatter around ``true_mean``."""
    means = rng.gamma(shape=4.0, scale=true_mean / 4.0, size=documents)
    counts = np.full(documents, tokens, dtype=np.float64)
    return (means * counts)[:, None], counts[:, None]


def test_interval_shrinks_with_more_documents():
    rng = np.random.default_rng(0)
    widths = []
    for documents in (10, 40, 160, 640):
        sums, tokens = synthetic_documents(rng, documents)
        result = statistics.bootstrap(sums, tokens, statistics.mean_ratio, iters=500, seed=1)
        widths.append(result.ci_high - result.ci_low)
    assert widths == sorted(widths, reverse=True)
    # The width falls roughly as 1/sqrt(documents): 64x the documents, about 1/8 the width.
    assert widths[-1] < widths[0] / 5


def test_interval_covers_true_mean_at_stated_rate():
    rng = np.random.default_rng(42)
    trials = 300
    covered = 0
    for trial in range(trials):
        sums, tokens = synthetic_documents(rng, 40)
        result = statistics.bootstrap(sums, tokens, statistics.mean_ratio, iters=400, seed=trial)
        covered += result.ci_low <= 0.2 <= result.ci_high
    rate = covered / trials
    # Percentile intervals from 40 documents run slightly below nominal coverage.
    assert 0.88 <= rate <= 0.99, rate


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(3)
    sums, tokens = synthetic_documents(rng, 20)
    first = statistics.bootstrap(sums, tokens, statistics.mean_ratio, iters=200, seed=5)
    again = statistics.bootstrap(sums, tokens, statistics.mean_ratio, iters=200, seed=5)
    other = statistics.bootstrap(sums, tokens, statistics.mean_ratio, iters=200, seed=6)
    assert first == again
    assert first.ci_low != other.ci_low


def test_single_document_has_no_interval():
    result = statistics.bootstrap(np.array([[3.0]]), np.array([[10.0]]), statistics.mean_ratio)
    assert result.value == pytest.approx(0.3)
    assert math.isnan(result.stderr)
    assert math.isnan(result.ci_low)


def test_slope_of_linear_curve():
    centres = np.array([0.5, 1.5, 2.5, 3.5])  # bucket centres in thousands of tokens
    means = 0.1 + 0.02 * centres  # KL grows 0.02 nats per 1,000 tokens
    tokens = np.full((1, 4), 1000.0)
    slope = statistics.slope_statistic(centres)(means * tokens[0], tokens[0])
    assert float(slope) == pytest.approx(0.02)


def test_slope_skips_unreached_buckets():
    centres = np.array([0.5, 1.5, 2.5, 3.5])
    sums = np.array([10.0, 20.0, 0.0, 0.0])
    tokens = np.array([100.0, 100.0, 0.0, 0.0])
    assert float(statistics.slope_statistic(centres)(sums, tokens)) == pytest.approx(0.1)
    # One bucket alone has no slope.
    assert math.isnan(float(statistics.slope_statistic(centres)(sums * [1, 0, 0, 0], tokens * [1, 0, 0, 0])))


def test_flat_curve_slope_interval_contains_zero():
    rng = np.random.default_rng(7)
    documents, buckets = 30, 8
    tokens = np.full((documents, buckets), 512.0)
    sums = rng.gamma(4.0, 0.05 / 4.0, size=(documents, buckets)) * tokens
    centres = (np.arange(buckets) + 0.5) * 0.512
    result = statistics.bootstrap(sums, tokens, statistics.slope_statistic(centres), iters=500, seed=0)
    assert result.ci_low < 0 < result.ci_high


def test_growth_ratio_last_over_first():
    sums = np.array([[1.0, 2.0, 4.0]])
    tokens = np.array([[10.0, 10.0, 10.0]])
    growth = statistics.growth_statistic(2)(sums.sum(axis=0), tokens.sum(axis=0))
    assert float(growth) == pytest.approx(4.0)


def test_histogram_quantiles_close_to_exact():
    rng = np.random.default_rng(11)
    values = rng.lognormal(mean=-4.0, sigma=2.0, size=20000)
    histogram = statistics.merge_histograms([statistics.log_histogram(values[:7000]), statistics.log_histogram(values[7000:])])
    for quantile in (0.5, 0.9, 0.99):
        exact = np.quantile(values, quantile, method="lower")
        approximate = statistics.histogram_quantile(histogram, quantile)
        assert approximate == pytest.approx(exact, rel=0.025), quantile


def test_histogram_counts_zeros():
    histogram = statistics.merge_histograms([statistics.log_histogram(np.array([0.0, 0.0, 0.0, 1.0]))])
    assert statistics.histogram_quantile(histogram, 0.5) == 0.0
    assert statistics.histogram_quantile(histogram, 1.0) == pytest.approx(1.0, rel=0.025)
    assert math.isnan(statistics.histogram_quantile({}, 0.5))
