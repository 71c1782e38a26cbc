"""Shared fixtures: tiny LLaMA checkpoints built on the fly, and the data beside the repo.

Random tiny models are enough to test the mechanics (their distributions are nearly
uniform, which is fine for comparing two computations of the same thing). Tests that need
the real LLaMA-2 tokenizer or WikiText read them from ``../shared`` and skip, saying why,
where it is missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
WIKITEXT_FILE = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
LLAMA2_TOKENIZER_DIR = SHARED / "tokenizers" / "llama-2"
LLAMA2_CONFIG = SHARED / "configs" / "llama-2-7b-32k.json"

# No test may reach the Hugging Face hub; a test that tries fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing: this test needs the shared data folder beside the repository")
    return path


def save_tiny_llama(folder: Path, tokenizer, *, base_config: dict | None = None, seed: int = 0, **overrides) -> Path:
    """Save a randomly initialized 2-layer LLaMA with ``tokenizer`` into ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(base_config or {})
    settings.update(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=settings.get("max_position_embeddings", 4096),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    for key in ("architectures", "torch_dtype", "pretraining_tp"):
        settings.pop(key, None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    # Weights as large as a trained model's make the two models' distributions differ
    # visibly once compressed; the default init (std 0.02) gives near-identical ones.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.2 if "embed" not in name else 1.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def demo_tokenizer():
    from transformers import AutoTokenizer

    from lcc_models.checkpoints import resolve_pretrained

    return AutoTokenizer.from_pretrained(resolve_pretrained("lcc-tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, demo_tokenizer) -> Path:
    """A random tiny LLaMA with the embedded 4,096-token tokenizer; needs nothing from ../shared."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), demo_tokenizer)


@pytest.fixture(scope="session")
def llama2_tokenizer():
    from transformers import LlamaTokenizer

    require_shared(LLAMA2_TOKENIZER_DIR / "tokenizer.model")
    return LlamaTokenizer.from_pretrained(str(LLAMA2_TOKENIZER_DIR), add_bos_token=True)


@pytest.fixture(scope="session")
def tiny_llama2_dir(tmp_path_factory, llama2_tokenizer) -> Path:
    """A random tiny model with LLaMA-2-7B-32K's configuration shrunk and the real LLaMA-2 tokenizer."""
    base_config = json.loads(require_shared(LLAMA2_CONFIG).read_text())
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama2-32k"), llama2_tokenizer, base_config=base_config)


@pytest.fixture(scope="session")
def wikitext_file() -> Path:
    return require_shared(WIKITEXT_FILE)


@pytest.fixture(scope="session")
def task_manager_factory():
    """Build TaskManagers that index lcc's task configs only (the harness's 15k configs take 17 s)."""
    from lm_eval.tasks import TaskManager

    from lcc_tasks.harness_hooks import task_folder

    def build(**metadata):
        return TaskManager(include_defaults=False, include_path=str(task_folder()), metadata=metadata)

    return build


@pytest.fixture(scope="module")
def single_thread():
    """Run a test module's torch code on one thread."""
    import torch

    # For tiny matrices a second thread costs more in synchronization than it saves. On a
    # busy 2-core machine, test_gptq.py took 28 s with two threads and 6 s with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def long_context_model_dir(tmp_path_factory, demo_tokenizer) -> Path:
    """A random tiny LLaMA with the embedded tokenizer that accepts 32,768 positions."""
    return save_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama-32k"), demo_tokenizer, max_position_embeddings=32768
    )
