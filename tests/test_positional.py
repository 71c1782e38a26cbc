"""Bucket assignment, token-weighted aggregation and the mean curve, on hand-built cases."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from lcc_tasks import positional


def stats_from(kl, kl_ref=None, top1=None, nll=None, nll_ref=None, js=None):
    kl = np.asarray(kl, dtype=np.float32)
    zeros = np.zeros_like(kl)
    return SimpleNamespace(
        kl=kl,
        kl_ref=zeros if kl_ref is None else np.asarray(kl_ref, dtype=np.float32),
        top1_agree=np.ones_like(kl) if top1 is None else np.asarray(top1, dtype=np.float32),
        nll=zeros if nll is None else np.asarray(nll, dtype=np.float32),
        nll_ref=zeros if nll_ref is None else np.asarray(nll_ref, dtype=np.float32),
        js=zeros if js is None else np.asarray(js, dtype=np.float32),
    )


def bucket_pair(value):
    return [value["sum"], value["tokens"]]


def test_bucket_edges_equal_width():
    assert positional.bucket_edges(32768, 8) == [0, 4096, 8192, 12288, 16384, 20480, 24576, 28672, 32768]
    assert positional.bucket_metric_names([0, 4096, 8192]) == ["kl_pos_0_4096", "kl_pos_4096_8192"]


def test_bucket_edges_explicit():
    assert positional.bucket_edges(100, edges=[0, 10, 50, 100]) == [0, 10, 50, 100]


@pytest.mark.parametrize(
    ("num_buckets", "edges", "message"),
    [
        (3, None, "positive divisor of seq_len 32"),
        (0, None, "positive divisor"),
        (None, [5, 10], "starting at 0"),
        (None, [0, 10, 10], "strictly increasing"),
        (None, [0, 40], "end after seq_len 32"),
    ],
)
def test_bucket_edges_rejects_invalid(num_buckets, edges, message):
    with pytest.raises(ValueError, match=message):
        positional.bucket_edges(32, num_buckets, edges)


def test_summarize_sequence_assigns_buckets():
    # 8 tokens -> 7 positions; buckets [0, 4) and [4, 8) hold positions 0..3 and 4..6.
    stats = stats_from(kl=[1, 2, 3, 4, 10, 20, 30], top1=[1, 0, 1, 1, 0, 0, 1], nll=[1] * 7, nll_ref=[0.5] * 7)
    values = positional.summarize_sequence(stats, [0, 4, 8], curve_stride=2)

    assert values["kl_pos_0_4"] == {"kl": 2.5, "tokens": 4, "sum": 10.0}
    assert values["kl_pos_4_8"] == {"kl": 20.0, "tokens": 3, "sum": 60.0}
    assert values["tokens_pos_0_4"] == 4
    assert values["tokens_pos_4_8"] == 3
    assert values["kl"]["sum"] == 70.0
    assert values["kl"]["tokens"] == 7
    assert values["top1_agree"] == [4.0, 7]
    assert values["ppl_ratio"] == [7.0, 3.5, 7]
    assert values["kl"]["curve"]["tokens"] == [2, 2, 2, 1]
    assert values["kl"]["curve"]["kl"] == [3.0, 7.0, 30.0, 30.0]


def test_aggregation_is_token_weighted():
    long_sequence = positional.summarize_sequence(stats_from(kl=[1.0] * 7), [0, 4, 8], curve_stride=4)
    short_sequence = positional.summarize_sequence(stats_from(kl=[4.0] * 3), [0, 4, 8], curve_stride=4)

    # 7 positions at KL 1 and 3 at KL 4: (7 + 12) / 10, not the mean of the sequence means (2.5).
    kl = positional.mean_of_sums([[item["kl"]["sum"], item["kl"]["tokens"]] for item in (long_sequence, short_sequence)])
    assert kl == pytest.approx(1.9)
    # The short sequence never reaches the second bucket, which averages the long one alone.
    assert short_sequence["kl_pos_4_8"] == {"kl": None, "tokens": 0, "sum": 0.0}
    second_bucket = [bucket_pair(long_sequence["kl_pos_4_8"]), bucket_pair(short_sequence["kl_pos_4_8"])]
    first_bucket = [bucket_pair(long_sequence["kl_pos_0_4"]), bucket_pair(short_sequence["kl_pos_0_4"])]
    assert positional.mean_of_sums(second_bucket) == pytest.approx(1.0)
    assert positional.mean_of_sums(first_bucket) == pytest.approx(16 / 7)


def test_mean_of_sums_without_tokens_is_nan():
    assert math.isnan(positional.mean_of_sums([[0.0, 0]]))


def test_ppl_ratio_from_nll_sums():
    # mean NLL 2.0 against 1.5 over 4 tokens -> exp(0.5)
    assert positional.ppl_ratio([[5.0, 4.0, 2], [3.0, 2.0, 2]]) == pytest.approx(math.exp(0.5))


def test_mean_curve_over_sequences_of_unequal_length():
    first = positional.summarize_sequence(stats_from(kl=[1, 1, 1, 1, 5, 5]), [0, 6], curve_stride=2)
    second = positional.summarize_sequence(stats_from(kl=[3, 3]), [0, 6], curve_stride=2)
    curve = positional.mean_curve([first["kl"], second["kl"]], curve_stride=2)

    assert curve["num_sequences"] == 2
    assert curve["position_start"] == [0, 2, 4]
    assert curve["tokens"] == [4, 2, 2]
    assert curve["kl"] == pytest.approx([2.0, 1.0, 5.0])
