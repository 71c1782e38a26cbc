"""The embedded lcc-tiny-llama checkpoint is a trained model, not random weights."""

import math

import torch

from lcc_models.compressed_lm import CompressedHFLM
from lcc_tasks.sequences import split_into_sequences
from lcc_tasks.text_sources import python_documentation


def test_demo_model_beats_uniform():
    lm = CompressedHFLM(pretrained="lcc-tiny-llama", device="cpu", dtype="float32", w_bits=3)
    sequences = split_into_sequences(lm.tokenizer, python_documentation(), 1024)
    assert len(sequences) > 50
    input_ids = torch.as_tensor(sequences[0].ids).unsqueeze(0)
    stats = lm.sequence_kl(input_ids)

    uniform_nll = math.log(len(lm.tokenizer))
    assert uniform_nll > 8.0
    # A random model scores about log(4096) = 8.3 nats per token; the trained one far less.
    assert stats.nll_ref.mean() < 6.0
    # 3-bit weights make it visibly worse, but it stays a language model.
    assert 0.001 < stats.kl.mean() < 1.0
    assert stats.nll.mean() > stats.nll_ref.mean()
