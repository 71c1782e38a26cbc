"""The stock lm_eval command line finds lcc's model and tasks with no --include_path.

Each lm_eval start costs about 30 s, 17 s of it indexing the harness's task configs. This
file therefore keeps to one WikiText run and a few runs that together use every
compression key; everything else is tested through the Python API.
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
    assert samples[0]["kl_pos_0_512"]["tokens"] == 512
    assert samples[0]["tokens_pos_0_512"] == 512
    assert "TokenSequence(num_tokens=4096" in json.dumps(samples[0]["doc"])


METHOD_RUNS = {
    # Together these runs use every compression key at least once.
    "wanda-nm-gptq-act-order": (
        "prune=wanda,nm=2:4,w_bits=4,w_method=gptq,gptq_act_order=true,gptq_damp=0.02,gptq_block=64,"
        "calib_nsamples=4,calib_seqlen=128,seed=1",
        ["prune:wanda", "quantize_weights:gptq"],
    ),
    "sparsegpt-salient-activation": (
        "prune=sparsegpt,sparsity=0.5,w_bits=3,w_group_size=64,salient_frac=0.05,salient_bits=6,"
        "salient_by=activation,calib_nsamples=4,calib_seqlen=128",
        ["prune:sparsegpt", "quantize_weights:rtn+salient"],
    ),
    "random-kv-cache": (
        "prune=random,sparsity=0.1,prune_scope=layer,seed=3,kv_bits=4,kv_group_size=32",
        ["prune:random", "quantize_kv_cache:per_token"],
    ),
    "magnitude-nm-w8a8-noise": (
        "prune=magnitude,nm=1:4,w_bits=8,w_sym=true,a_bits=8,kv_noise_std=0.05,targets=*.mlp.*+q_proj",
        ["prune:magnitude", "quantize_weights:rtn", "quantize_activations:per_token", "kv_cache_noise:gaussian"],
    ),
}


@pytest.fixture(scope="module")
def calibration_text(tmp_path_factory):
    from lcc_tasks.text_sources import python_documentation

    path = tmp_path_factory.mktemp("calibration") / "calibration.jsonl"
    text = python_documentation()
    lines = [json.dumps({"text": text[start : start + 4000]}) for start in range(0, 400_000, 4000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("run", sorted(METHOD_RUNS))
def test_cli_compression_methods(run, calibration_text, tmp_path):
    compression, order = METHOD_RUNS[run]
    if "calib_" in compression:
        compression += f",calib_data={calibration_text}"
    output = tmp_path / "results"
    command = [
        *lm_eval_command(),
        "--model", "lcc_compressed",
        "--model_args", f"pretrained=lcc-tiny-llama,dtype=float32,{compression}",
        "--tasks", "lcc_demo_kl",
        "--limit", "1",
        "--device", "cpu",
        "--output_path", str(output),
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=900, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    # The compression summary table reaches the log.
    assert "Compression applied" in completed.stderr

    results = json.loads(next(output.rglob("results_*.json")).read_text())
    assert results["results"]["lcc_demo_kl"]["kl,none"] > 0
    spec = results["config"]["compression"]["spec"]
    assert spec["order"] == order


def test_cli_lcc_kl_group(long_context_model_dir, tmp_path):
    """The top group runs WikiText and every LongBench subset from local files."""
    import importlib.util

    from lcc_tasks.text_sources import python_documentation

    spec = importlib.util.spec_from_file_location(
        "generate_longbench_configs", Path(__file__).resolve().parent.parent / "scripts" / "generate_longbench_configs.py"
    )
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    configs = [*generator.ENGLISH_SUBSETS, *(f"{subset}_e" for subset in generator.E_SUBSETS)]
    longbench_file = tmp_path / "longbench.jsonl"
    rows = [
        {"context": f"Document of {config}. " * 60, "input": "?", "answers": [""], "length": 180,
         "dataset": config, "language": "en", "_id": config}
        for config in configs
    ]
    longbench_file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    # Any text of more than 32k tokens serves as the local WikiText copy here.
    wikitext_file = tmp_path / "wiki.test.raw"
    wikitext_file.write_text(python_documentation(), encoding="utf-8")

    output = tmp_path / "results"
    command = [
        *lm_eval_command(),
        "--model", "lcc_compressed",
        "--model_args", f"pretrained={long_context_model_dir},dtype=float32,w_bits=3",
        "--tasks", "lcc_kl",
        "--limit", "1",
        "--device", "cpu",
        "--output_path", str(output),
        "--metadata", json.dumps({"wikitext_file": str(wikitext_file), "longbench_file": str(longbench_file)}),
    ]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=1200, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]

    results = json.loads(next(output.rglob("results_*.json")).read_text())
    task_results = results["results"]
    kl_tasks = [name for name in task_results if name.startswith(("wikitext_kl_", "longbench_kl_", "longbench_e_kl_"))]
    assert len([name for name in kl_tasks if name.startswith("wikitext_kl_")]) == 4
    assert len([name for name in kl_tasks if name.startswith("longbench_kl_") and name[-1] == "k"]) >= 48
    assert task_results["wikitext_kl_32k"]["kl,none"] > 0
    assert "kl_slope,none" in task_results["wikitext_kl_32k"]
    assert task_results["longbench_kl_qasper_32k"]["tokens_pos_0_4096,none"] > 0
    # The results table shows the slope with its stderr.
    assert "kl_slope" in completed.stdout
