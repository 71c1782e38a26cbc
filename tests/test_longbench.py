"""LongBench KL tasks on local JSONL files in LongBench's schema, through the harness's Python API."""

import json
import math

import pytest

import lm_eval
from lcc_tasks import curves
from lcc_tasks.text_sources import TextSourceError, read_jsonl_records

BUCKET_WIDTH = 1024  # 8 buckets over the 8k tasks


def longbench_record(dataset, index, words):
    context = " ".join(f"item_{index}_{position} = value_{position % 97}" for position in range(words))
    return {
        "context": context,
        "input": f"What is item_{index}_0?",
        "answers": ["value_0"],
        "length": words,
        "dataset": dataset,
        "language": "en",
        "_id": f"{dataset}-{index}",
    }


@pytest.fixture(scope="module")
def longbench_file(tmp_path_factory):
    # qasper: one document shorter than the first bucket, two of middle length and one
    # that is longer than the task and must be cut at the end. qasper_e: two documents.
    records = [
        longbench_record("qasper", 0, 40),
        longbench_record("qasper", 1, 400),
        longbench_record("qasper", 2, 600),
        longbench_record("qasper", 3, 3000),
        longbench_record("qasper_e", 0, 300),
        longbench_record("qasper_e", 1, 500),
    ]
    path = tmp_path_factory.mktemp("longbench") / "longbench.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def run(model_dir, tasks, task_manager, **kwargs):
    return lm_eval.simple_evaluate(
        model="lcc_compressed",
        model_args={"pretrained": str(model_dir), "dtype": "float32", "w_bits": 3},
        tasks=tasks,
        task_manager=task_manager,
        device="cpu",
        **kwargs,
    )


def test_longbench_task_statistics(long_context_model_dir, longbench_file, task_manager_factory):
    manager = task_manager_factory(pretrained=str(long_context_model_dir), longbench_file=str(longbench_file))
    results = run(long_context_model_dir, ["longbench_kl_qasper_8k"], manager, bootstrap_iters=200, log_samples=True)
    metrics = results["results"]["longbench_kl_qasper_8k"]
    samples = results["samples"]["longbench_kl_qasper_8k"]
    assert results["n-samples"]["longbench_kl_qasper_8k"]["effective"] == 4

    # Documents are evaluated from their first token; the longest is cut at 8,192 tokens.
    lengths = sorted(sample["doc"]["num_tokens"] for sample in samples)
    assert lengths[-1] == 8192
    assert lengths[0] < BUCKET_WIDTH

    # Each bucket averages only the documents that reach it, and reports its token count.
    bucket_tokens = [metrics[f"tokens_pos_{start}_{start + BUCKET_WIDTH},none"] for start in range(0, 8192, BUCKET_WIDTH)]
    assert sum(bucket_tokens) == sum(length - 1 for length in lengths)
    assert bucket_tokens[-1] == BUCKET_WIDTH - 1  # only the cut document reaches the last bucket
    last = metrics[f"kl_pos_{8192 - BUCKET_WIDTH}_8192,none"]
    only_long = [sample for sample in samples if sample["doc"]["num_tokens"] == 8192][0]
    assert last == pytest.approx(only_long[f"kl_pos_{8192 - BUCKET_WIDTH}_8192"]["kl"], rel=1e-9)

    # Whole-sequence statistics, with the bootstrap stderr and interval.
    assert metrics["kl_ci95_low,none"] <= metrics["kl,none"] <= metrics["kl_ci95_high,none"]
    assert metrics["kl_stderr,none"] > 0
    assert 0 < metrics["js,none"] <= math.log(2)
    assert metrics["kl_median,none"] <= metrics["kl_p90,none"] <= metrics["kl_p99,none"] <= metrics["kl_max,none"]
    assert metrics["rms_dp,none"] > 0
    assert math.isfinite(metrics["kl_slope,none"])
    assert metrics["kl_slope_ci95_low,none"] <= metrics["kl_slope_ci95_high,none"]
    assert metrics["kl_growth,none"] > 0

    # Per-document output: every sample carries its per-bucket KL and token counts.
    short = [sample for sample in samples if sample["doc"]["num_tokens"] == lengths[0]][0]
    assert short[f"kl_pos_0_{BUCKET_WIDTH}"]["tokens"] == lengths[0] - 1
    assert short[f"kl_pos_{BUCKET_WIDTH}_{2 * BUCKET_WIDTH}"] == {"kl": None, "tokens": 0, "sum": 0.0}

    curve = curves.take_curves(["longbench_kl_qasper_8k"])["longbench_kl_qasper_8k"]
    buckets = curve["buckets"]
    assert [bucket["documents"] for bucket in buckets][0] == 4
    assert buckets[-1]["documents"] == 1
    assert buckets[0]["kl_ci95_low"] <= buckets[0]["kl"] <= buckets[0]["kl_ci95_high"]
    assert buckets[0]["kl_median"] <= buckets[0]["kl_max"]

    # The results and the curve file bootstrap a bucket over the same documents. One
    # document alone has no stderr, and interval bounds have no stderr of their own.
    second = f"kl_pos_{BUCKET_WIDTH}_{2 * BUCKET_WIDTH}"
    assert metrics[f"{second}_stderr,none"] == pytest.approx(buckets[1]["kl_stderr"])
    assert metrics[f"kl_pos_{8192 - BUCKET_WIDTH}_8192_stderr,none"] == "N/A"
    assert metrics["kl_ci95_low_stderr,none"] == "N/A"
    assert only_long["kl"]["mean"] == pytest.approx(only_long["kl"]["sum"] / 8191)


def test_longbench_e_reads_its_own_rows(long_context_model_dir, longbench_file, task_manager_factory):
    manager = task_manager_factory(pretrained=str(long_context_model_dir), longbench_file=str(longbench_file))
    results = run(long_context_model_dir, ["longbench_e_kl_qasper_8k"], manager, bootstrap_iters=0)
    assert results["n-samples"]["longbench_e_kl_qasper_8k"]["effective"] == 2
    curves.take_curves()


def test_longbench_folder_of_subset_files(long_context_model_dir, longbench_file, task_manager_factory, tmp_path):
    records = [json.loads(line) for line in longbench_file.read_text().splitlines()]
    (tmp_path / "qasper.jsonl").write_text(
        "".join(json.dumps(record) + "\n" for record in records if record["dataset"] == "qasper")
    )
    manager = task_manager_factory(pretrained=str(long_context_model_dir), longbench_file=str(tmp_path))
    results = run(long_context_model_dir, ["longbench_kl_qasper_8k"], manager, limit=2, bootstrap_iters=0)
    assert results["n-samples"]["longbench_kl_qasper_8k"]["effective"] == 2
    curves.take_curves()


def test_jsonl_without_context_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(longbench_record("qasper", 0, 5)) + "\n" + json.dumps({"input": "no context"}) + "\n")
    with pytest.raises(TextSourceError, match=r"broken\.jsonl, line 2: expected a JSON object with a string field 'context'"):
        read_jsonl_records(path, "context")


def test_missing_subset_rows_explained(long_context_model_dir, longbench_file, task_manager_factory):
    manager = task_manager_factory(pretrained=str(long_context_model_dir), longbench_file=str(longbench_file))
    with pytest.raises(TextSourceError, match=r"no rows with dataset='trec'"):
        run(long_context_model_dir, ["longbench_kl_trec_8k"], manager, bootstrap_iters=0)


def test_group_lists_every_subset(task_manager_factory):
    manager = task_manager_factory(pretrained="unused")
    names = set(manager.all_tasks)
    for group in ("lcc_kl", "longbench_kl", "longbench_e_kl", "longbench_kl_32k", "longbench_e_kl_8k"):
        assert group in names, group
    assert len([name for name in names if name.startswith("longbench_kl_") and name.endswith("_32k")]) == 17
    assert "longbench_e_kl_repobench-p_16k" in names
