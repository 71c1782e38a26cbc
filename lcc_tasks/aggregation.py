"""Aggregation of the per-document values of a positional KL task into the reported statistics.

    metric = BootstrappedMetric(pair_columns, statistics.mean_ratio, BootstrapSettings(1000, 0))
    metric(items)                    # the value, token-weighted over all documents
    metric.bootstrap_stderr(items)   # the standard error from resampling documents

The harness calls one aggregation per metric with the list of that metric's per-document
values (see ``positional.summarize_sequence``). ``bucket_report`` builds the per-bucket
table of the curve file from the per-document ``kl`` values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lcc_tasks import statistics
from lcc_tasks.positional import QUANTILES

Columns = Callable[[list[Any]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BootstrapSettings:
    """Replicates and seed of the bootstrap over documents (task metadata ``bootstrap_iters``, ``bootstrap_seed``)."""

    iters: int = 1000
    seed: int = 0


def pair_columns(items: list[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Return sums and tokens [documents, 1] from per-document ``[sum, tokens]`` values."""
    array = np.asarray([[item[0], item[1]] for item in items], dtype=np.float64).reshape(-1, 2)
    return array[:, :1], array[:, 1:]


def bucket_columns(items: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Return sums and tokens [documents, 1] of the documents that reach a bucket, from ``{"sum", "tokens", ...}``.

    Documents that do not reach the bucket are left out, so its bootstrap resamples only
    the documents behind its value, as the curve file's per-bucket intervals do.
    """
    reached = [item for item in items if item["tokens"] > 0]
    return (
        np.asarray([[item["sum"]] for item in reached], dtype=np.float64).reshape(-1, 1),
        np.asarray([[item["tokens"]] for item in reached], dtype=np.float64).reshape(-1, 1),
    )


def series_columns(items: list[dict[str, list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Return sums and tokens [documents, buckets] from per-document ``{"sums": [...], "tokens": [...]}``."""
    return (
        np.asarray([item["sums"] for item in items], dtype=np.float64),
        np.asarray([item["tokens"] for item in items], dtype=np.float64),
    )


class BootstrappedMetric:
    """An aggregation whose value, interval bound and stderr come from one statistic of document sums.

    ``part`` selects what the call returns: the statistic itself (``value``) or a bound
    of its 95% bootstrap interval (``ci95_low``, ``ci95_high``).
    """

    def __init__(
        self,
        columns: Columns,
        statistic: statistics.Statistic | Callable[[np.ndarray, np.ndarray], statistics.Statistic],
        settings: BootstrapSettings,
        part: str = "value",
        needs_data: bool = False,
    ) -> None:
        self.columns = columns
        self.statistic = statistic
        self.settings = settings
        self.part = part
        # With needs_data, ``statistic`` is a factory that picks its form from all documents' columns.
        self.needs_data = needs_data
        self.__name__ = f"lcc_bootstrapped_{part}"
        if part == "value":
            # Only the statistic itself gets a stderr column; an interval bound is not an estimate of its own.
            self.bootstrap_stderr = self._stderr

    def result(self, items: list[Any]) -> statistics.BootstrapResult:
        sums, tokens = self.columns(items)
        if sums.shape[0] == 0:
            return statistics.BootstrapResult(math.nan, math.nan, math.nan, math.nan)
        statistic = self.statistic(sums, tokens) if self.needs_data else self.statistic
        return statistics.bootstrap(sums, tokens, statistic, self.settings.iters, self.settings.seed)

    def __call__(self, items: list[Any]) -> float:
        result = self.result(items)
        return {"value": result.value, "ci95_low": result.ci_low, "ci95_high": result.ci_high}[self.part]

    def _stderr(self, items: list[Any]) -> float | str:
        return stderr_or_missing(self.result(items).stderr)


def stderr_or_missing(stderr: float) -> float | str:
    """Return ``stderr``, or the harness's "N/A" when there is none (fewer than two documents)."""
    return stderr if math.isfinite(stderr) else "N/A"


def growth_from_data(sums: np.ndarray, tokens: np.ndarray) -> statistics.Statistic:
    """Return the growth statistic whose last bucket is the last one any document reaches."""
    reached = np.flatnonzero(tokens.sum(axis=0) > 0)
    return statistics.growth_statistic(int(reached[-1]) if reached.size else 0)


def bucket_centres_in_thousands(edges: Sequence[int]) -> np.ndarray:
    """Return each bucket's centre position divided by 1000, so a slope is per 1,000 tokens."""
    return np.asarray([(start + end) / 2 / 1000 for start, end in zip(edges, edges[1:])])


def quantile_metric(quantile: float) -> Callable[[list[dict[str, list[int]]]], float]:
    def aggregate(items: list[dict[str, list[int]]]) -> float:
        return statistics.histogram_quantile(statistics.merge_histograms(items), quantile)

    aggregate.__name__ = f"kl_quantile_{quantile:g}"
    return aggregate


def max_metric(items: list[float | None]) -> float:
    present = [item for item in items if item is not None]
    return max(present) if present else math.nan


def root_mean_metric(items: list[Sequence[float]]) -> float:
    """Return sqrt(sum of squares / tokens) from per-document ``[sum of squares, tokens]``."""
    squares = sum(item[0] for item in items)
    tokens = sum(item[1] for item in items)
    return math.sqrt(squares / tokens) if tokens else math.nan


def sum_metric(items: list[int]) -> int:
    return int(sum(items))


def bucket_report(kl_items: list[dict[str, Any]], edges: Sequence[int], settings: BootstrapSettings) -> list[dict[str, Any]]:
    """Return every bucket's statistics over the documents that reach it, for the curve file."""
    report = []
    for index, (start, end) in enumerate(zip(edges, edges[1:])):
        windows = [item["buckets"][index] for item in kl_items if item["buckets"][index]["tokens"] > 0]
        tokens = sum(window["tokens"] for window in windows)
        entry: dict[str, Any] = {"start": start, "end": end, "documents": len(windows), "tokens": tokens}
        if tokens:
            sums = np.asarray([[window["kl_sum"]] for window in windows])
            counts = np.asarray([[window["tokens"]] for window in windows])
            mean = statistics.bootstrap(sums, counts, statistics.mean_ratio, settings.iters, settings.seed)
            histogram = statistics.merge_histograms(window["hist"] for window in windows)
            entry.update(
                kl=mean.value,
                kl_stderr=mean.stderr,
                kl_ci95_low=mean.ci_low,
                kl_ci95_high=mean.ci_high,
                **{name: statistics.histogram_quantile(histogram, q) for name, q in QUANTILES.items()},
                kl_max=max(window["kl_max"] for window in windows),
                kl_ref=sum(window["kl_ref_sum"] for window in windows) / tokens,
                js=sum(window["js_sum"] for window in windows) / tokens,
                top1_agree=sum(window["top1_sum"] for window in windows) / tokens,
                rms_dp=math.sqrt(sum(window["dp_sq_sum"] for window in windows) / tokens),
            )
        report.append(entry)
    return report

