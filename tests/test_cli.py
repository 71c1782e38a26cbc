"""The stock lm_eval command line finds lcc's model and tasks with no --include_path.

Each lm_eval start costs about 30 s, 17 s of it indexing the harness's task configs. This
file therefore keeps to one end-to-end run, and everything else is tested through the
Python API.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cli


def lm_eval_command() -> list[str]:
    executable = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or shutil.which("lm_eval")
    if executable is None:
        pytest.skip("the lm_eval command is not on PATH; install lm-eval in this environment")
    return [executable]


def test_cli_wikitext_kl_end_to_end(tiny_llama2_dir, wikitext_file, tmp_path):
    output = tmp_path / "results"
    command = [
        *lm_eval_command(),
        "--model", "lcc_compressed",
        "--model_args", f"pretrained={tiny_llama2_dir},w_bits=3,w_group_size=128,dtype=float32",
        "--tasks", "wikitext_kl_4k",
        "--limit", "2",
        "--device", "cpu",
        "--output_path", str(output),
        "--log_samples",
        "--metadata", f"wikitext_file={wikitext_file}",
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    environment.pop("LCC_WIKITEXT_FILE", None)
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=900, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]

    # The harness's results table, with lcc's metrics in it.
    assert "wikitext_kl_4k" in completed.stdout
    for metric in ("kl_pos_0_512", "kl_pos_3584_4096", "kl_ref", "top1_agree", "ppl_ratio"):
        assert metric in completed.stdout, metric

    results_files = sorted(output.rglob("results_*.json"))
    assert len(results_files) == 1
    results = json.loads(results_files[0].read_text())
    metrics = results["results"]["wikitext_kl_4k"]
    assert metrics["kl,none"] > 0
    assert metrics["kl_ref,none"] > 0
    assert results["n-samples"]["wikitext_kl_4k"]["effective"] == 2
    compression = results["config"]["compression"]
    assert compression["spec"]["w_bits"] == 3
    assert compression["overall"]["bits_per_weight"] == pytest.approx(3 + 19 / 128)

    date_id = results_files[0].stem.removeprefix("results_")
    curve_file = results_files[0].with_name(f"kl_curves_{date_id}.json")
    assert curve_file.is_file(), sorted(path.name for path in results_files[0].parent.iterdir())
    curve_document = json.loads(curve_file.read_text())
    curve = curve_document["tasks"]["wikitext_kl_4k"]
    assert curve["num_sequences"] == 2
    assert len(curve["kl"]) == 4095 // 64 + 1
    assert curve["tokens"][0] == 2 * 64
    assert curve_document["compression"]["spec"]["w_bits"] == 3

    sample_files = sorted(output.rglob("samples_wikitext_kl_4k_*.jsonl"))
    assert len(sample_files) == 1
    samples = [json.loads(line) for line in sample_files[0].read_text().splitlines()]
    assert len(samples) == 2
    assert samples[0]["kl_pos_0_512"][1] == 512
    assert "TokenSequence(num_tokens=4096" in json.dumps(samples[0]["doc"])
