"""Time each compression method takes on the CPU, as a multiple of one forward pass over the calibration set.

    python benchmarks/compression_time.py                       # tiny and mid-sized models
    python benchmarks/compression_time.py --sizes mid --repeats 3 --nsamples 16 --seqlen 256

Two random LLaMA models: "tiny" (2 layers, hidden 128, MLP 384) and "mid" (4 layers,
hidden 1024, MLP 2816, 8 heads). For every method it times ``compress_model`` on a fresh
copy of the model, including the calibration forward passes of the methods that need
them. The ratio divides that by one forward pass of the uncompressed model over the same
calibration tokens: ``nsamples`` sequences of ``seqlen`` tokens, one at a time. Times are
medians over ``--repeats`` runs, all in one process, in float32.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

SIZES = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=2),
    "mid": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=8),
}

METHODS = {
    "magnitude 50%": {"prune": "magnitude", "sparsity": 0.5},
    "magnitude 2:4": {"prune": "magnitude", "nm": "2:4"},
    "random 10%": {"prune": "random", "sparsity": 0.1},
    "wanda 50%": {"prune": "wanda", "sparsity": 0.5},
    "sparsegpt 50%": {"prune": "sparsegpt", "sparsity": 0.5},
    "rtn w4 g128": {"w_bits": 4},
    "rtn w3 + 2% salient": {"w_bits": 3, "salient_frac": 0.02},
    "rtn w3 + 2% salient by activation": {"w_bits": 3, "salient_by": "activation"},
    "gptq w4 g128": {"w_bits": 4, "w_method": "gptq"},
    "gptq w4 g128 act_order": {"w_bits": 4, "w_method": "gptq", "gptq_act_order": True},
    "w8a8": {"w_bits": 8, "a_bits": 8},
    "kv4": {"kv_bits": 4},
    "wanda 50% + gptq w4": {"prune": "wanda", "sparsity": 0.5, "w_bits": 4, "w_method": "gptq"},
}


def build_model(size: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, max_position_embeddings=4096, tie_word_embeddings=False, **SIZES[size])
    return LlamaForCausalLM(config).eval()


@torch.no_grad()
def forward_seconds(model, tokens: torch.Tensor) -> float:
    started = time.perf_counter()
    for sample in tokens:
        model(input_ids=sample.unsqueeze(0), use_cache=False)
    return time.perf_counter() - started


@torch.no_grad()
def compression_seconds(size: str, model_args: dict, tokens: torch.Tensor) -> float:
    from lcc_models.compression.walk import compress_model
    from lcc_models.spec import CompressionSpec

    model = build_model(size)
    spec, _ = CompressionSpec.from_model_args(model_args)
    started = time.perf_counter()
    compress_model(model, spec, calibration_tokens=tokens if spec.needs_calibration else None)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["tiny", "mid"])
    parser.add_argument("--nsamples", type=int, default=16, help="calibration sequences")
    parser.add_argument("--seqlen", type=int, default=256, help="tokens per calibration sequence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    logging.basicConfig(level=logging.WARNING)

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4096, (arguments.nsamples, arguments.seqlen), generator=generator)
    print(f"calibration set: {arguments.nsamples} x {arguments.seqlen} tokens; {arguments.threads} threads; "
          f"medians of {arguments.repeats}")
    for size in arguments.sizes:
        model = build_model(size)
        parameters = sum(parameter.numel() for parameter in model.parameters())
        forward = statistics.median(forward_seconds(model, tokens) for _ in range(arguments.repeats))
        del model
        print(f"\n{size}: {parameters / 1e6:.1f}M parameters; one forward over the calibration set: {forward:.3f} s")
        print(f"| {'method':<34} | {'seconds':>8} | {'x forward':>9} |")
        print(f"| {'-' * 34} | {'-' * 8}:| {'-' * 9}:|")
        for name, model_args in METHODS.items():
            seconds = statistics.median(
                compression_seconds(size, model_args, tokens) for _ in range(arguments.repeats)
            )
            print(f"| {name:<34} | {seconds:8.3f} | {seconds / forward:9.2f} |", flush=True)


if __name__ == "__main__":
    main()
