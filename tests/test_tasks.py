"""The KL tasks through the harness's Python API, with a TaskManager limited to lcc's configs."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

import lm_eval
from lcc_tasks import curves
from lcc_tasks.harness_hooks import _prepend_path, task_folder
from lcc_tasks.sequences import load_tokenizer, split_into_sequences
from lcc_tasks.text_sources import TextSourceError, python_documentation

BUCKETS_1K = [f"kl_pos_{start}_{start + 128}" for start in range(0, 1024, 128)]


def run(model_dir, tasks, task_manager, limit=None, **model_args):
    return lm_eval.simple_evaluate(
        model="lcc_compressed",
        model_args={"pretrained": str(model_dir), "dtype": "float32", **model_args},
        tasks=tasks,
        task_manager=task_manager,
        device="cpu",
        limit=limit,
        bootstrap_iters=0,
    )


def test_demo_task_reports_all_metrics(tiny_model_dir, task_manager_factory):
    results = run(tiny_model_dir, ["lcc_demo_kl"], task_manager_factory(pretrained=str(tiny_model_dir)), limit=3, w_bits=3)
    metrics = results["results"]["lcc_demo_kl"]
    for name in ["kl", "kl_ref", "top1_agree", "ppl_ratio", *BUCKETS_1K]:
        assert f"{name},none" in metrics, name
    assert metrics["kl,none"] > 0
    assert 0 < metrics["top1_agree,none"] <= 1
    assert metrics["ppl_ratio,none"] > 0
    # The overall mean is the token-weighted mean of the buckets: 1,023 positions score the
    # 1,024 tokens, so the last bucket has one position fewer.
    bucket_means = [metrics[f"{name},none"] for name in BUCKETS_1K]
    weights = [128] * 7 + [127]
    assert metrics["kl,none"] == pytest.approx(np.average(bucket_means, weights=weights), rel=1e-6)
    assert results["n-samples"]["lcc_demo_kl"]["effective"] == 3
    assert results["config"]["compression"]["spec"]["w_bits"] == 3

    curve = curves.take_curves(["lcc_demo_kl"])["lcc_demo_kl"]
    assert curve["num_sequences"] == 3
    assert curve["curve_stride"] == 16
    assert len(curve["kl"]) == 1023 // 16 + 1
    assert curve["position_start"][:3] == [0, 16, 32]
    assert curve["tokens"][0] == 3 * 16
    assert curve["bucket_edges"] == list(range(0, 1025, 128))


def test_demo_task_kl_zero_without_compression(tiny_model_dir, task_manager_factory):
    results = run(tiny_model_dir, ["lcc_demo_kl"], task_manager_factory(pretrained=str(tiny_model_dir)), limit=2)
    metrics = results["results"]["lcc_demo_kl"]
    assert metrics["kl,none"] < 1e-6
    assert metrics["kl_ref,none"] < 1e-6
    assert metrics["top1_agree,none"] == 1.0
    assert metrics["ppl_ratio,none"] == 1.0
    curves.take_curves()


def test_wikitext_task_reads_local_copy(tiny_llama2_dir, wikitext_file, task_manager_factory, monkeypatch):
    monkeypatch.setenv("LCC_WIKITEXT_FILE", str(wikitext_file))
    results = run(tiny_llama2_dir, ["wikitext_kl_4k"], task_manager_factory(pretrained=str(tiny_llama2_dir)), limit=2, w_bits=4)
    metrics = results["results"]["wikitext_kl_4k"]
    assert [key for key in metrics if key.startswith("kl_pos_")][:2] == ["kl_pos_0_512,none", "kl_pos_0_512_stderr,none"]
    assert "kl_pos_3584_4096,none" in metrics
    # 341,468 tokens of WikiText-2 test in sequences of 1 BOS + 4,095 text tokens.
    assert results["n-samples"]["wikitext_kl_4k"] == {"original": 83, "effective": 2}
    assert metrics["kl,none"] > 0
    curves.take_curves()


def test_metadata_names_local_copy(tiny_llama2_dir, wikitext_file, task_manager_factory, monkeypatch):
    monkeypatch.delenv("LCC_WIKITEXT_FILE", raising=False)
    manager = task_manager_factory(pretrained=str(tiny_llama2_dir), wikitext_file=str(wikitext_file))
    task = manager.load(["wikitext_kl_32k"])["tasks"]["wikitext_kl_32k"]
    assert len(task.test_docs()) == 10
    assert task.test_docs()[0]["token_ids"].ids.shape == (32768,)


def test_missing_local_copy_error_names_the_fix(tiny_model_dir, task_manager_factory, monkeypatch):
    monkeypatch.delenv("LCC_WIKITEXT_FILE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    manager = task_manager_factory(pretrained=str(tiny_model_dir))
    with pytest.raises(TextSourceError) as error:
        manager.load(["wikitext_kl_4k"])
    message = str(error.value)
    assert "could not load the Hugging Face dataset 'Salesforce/wikitext'" in message
    assert "--metadata wikitext_file=PATH" in message
    assert "LCC_WIKITEXT_FILE=PATH" in message


def test_missing_local_file_is_named(tiny_model_dir, task_manager_factory, tmp_path):
    manager = task_manager_factory(pretrained=str(tiny_model_dir), wikitext_file=str(tmp_path / "absent.raw"))
    with pytest.raises(TextSourceError, match="absent.raw does not exist"):
        manager.load(["wikitext_kl_4k"])


def test_missing_tokenizer_metadata_error(task_manager_factory):
    with pytest.raises(ValueError, match=r"needs the model's tokenizer.*TaskManager\(metadata=\{'pretrained'"):
        task_manager_factory().load(["lcc_demo_kl"])


def test_sequences_are_consecutive_and_start_with_bos(llama2_tokenizer, wikitext_file):
    text = wikitext_file.read_text(encoding="utf-8")
    sequences = split_into_sequences(llama2_tokenizer, text, 4096)
    stream = np.asarray(llama2_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(sequences) == len(stream) // 4095
    for index, sequence in enumerate(sequences[:5]):
        assert sequence.ids.shape == (4096,)
        assert sequence.ids[0] == llama2_tokenizer.bos_token_id == 1
        np.testing.assert_array_equal(sequence.ids[1:], stream[index * 4095 : (index + 1) * 4095])


def test_sequences_without_bos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {word: index for index, word in enumerate(["[UNK]", "a", "b", "c"])}
    backend = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    sequences = split_into_sequences(tokenizer, "a b c a b c a", 3)
    assert [sequence.ids.tolist() for sequence in sequences] == [[1, 2, 3], [1, 2, 3]]
    with pytest.raises(ValueError, match="fewer than one sequence of 10 tokens"):
        split_into_sequences(tokenizer, "a b", 10)


def test_include_path_is_deduplicated():
    folder = task_folder()
    assert _prepend_path(folder, None) == [folder]
    assert _prepend_path(folder, str(folder)) == [folder]
    assert _prepend_path(folder, ["/elsewhere", str(folder)]) == [folder, "/elsewhere"]


def test_default_task_manager_lists_lcc_tasks():
    from lm_eval.tasks import TaskManager

    names = set(TaskManager().all_tasks)
    assert {"wikitext_kl", "wikitext_kl_4k", "wikitext_kl_8k", "wikitext_kl_16k", "wikitext_kl_32k", "lcc_demo_kl"} <= names
    assert "hellaswag" in names


def test_standard_task_matches_hf_model(tiny_model_dir, tmp_path):
    """The harness's own wikitext task gives the same word perplexity on lcc_compressed as on hf."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    pages = [{"page": python_documentation()[start : start + 3000]} for start in range(0, 15000, 3000)]
    data_file = tmp_path / "pages.jsonl"
    data_file.write_text("\n".join(json.dumps(page) for page in pages) + "\n", encoding="utf-8")
    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / "wikitext" / "wikitext.yaml")
    config.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {"test": str(data_file)}},
        training_split=None,
        validation_split=None,
        test_split="test",
    )
    manager = TaskManager(include_defaults=False, include_path=str(task_folder()))
    word_perplexity = {}
    for model in ("hf", "lcc_compressed"):
        results = lm_eval.simple_evaluate(
            model=model,
            model_args={"pretrained": str(tiny_model_dir), "dtype": "float32", "max_length": 512},
            tasks=[dict(config)],
            task_manager=manager,
            device="cpu",
            bootstrap_iters=0,
        )
        word_perplexity[model] = results["results"]["wikitext"]["word_perplexity,none"]
    assert math.isfinite(word_perplexity["hf"])
    assert word_perplexity["lcc_compressed"] == word_perplexity["hf"]


def test_load_tokenizer_resolves_embedded_name():
    tokenizer = load_tokenizer("lcc-tiny-llama")
    assert len(tokenizer) == 4096
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id


def test_kl_task_rejects_plain_hf(tiny_model_dir, task_manager_factory):
    manager = task_manager_factory(pretrained=str(tiny_model_dir))
    with pytest.raises(NotImplementedError, match="run only on --model lcc_compressed"):
        lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(tiny_model_dir)},
            tasks=["lcc_demo_kl"],
            task_manager=manager,
            device="cpu",
            limit=1,
        )
