"""Cost of the KL task against plain forward passes, on the CPU, for a tiny random LLaMA.

    python benchmarks/kl_overhead.py                      # 4,096 and 32,768 positions
    python benchmarks/kl_overhead.py --positions 4096 --repeats 5

For each sequence length it prints two ratios. The first is the KL path's wall time
divided by the time of two plain forward passes (``model(ids).logits``, what ``--model
hf`` runs). The KL path covers both models' decoder passes, then lm_head, fp32
log_softmax and the sums over the vocabulary in chunks. The second is the KL path's peak
memory divided by that of one plain forward. Times are medians over ``--repeats`` runs.
Each peak is the largest resident-set growth above the process's size after loading the
model, measured in a fresh subprocess per mode and length. The model has
2 layers, hidden size 128 and LLaMA-2's 32,000-token vocabulary, so the logits dominate
memory the way they do for a 7B model at long context.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB_SIZE = 32000


def build_model(folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lcc_models.checkpoints import resolve_pretrained

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    # Any tokenizer will do: the benchmark feeds token ids directly.
    AutoTokenizer.from_pretrained(resolve_pretrained("lcc-tiny-llama")).save_pretrained(folder)


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def worker(mode: str, model_dir: str, positions: int, repeats: int, chunk_size: int) -> dict:
    """Run one mode in this process and return its times and peak memory growth."""
    import torch

    from lcc_models.compressed_lm import CompressedHFLM

    torch.manual_seed(1)
    lm = CompressedHFLM(pretrained=model_dir, device="cpu", dtype="float32", w_bits=4, kl_chunk_size=chunk_size)
    ids = torch.randint(3, VOCAB_SIZE, (1, positions))
    baseline = resident_mb()

    def run_once() -> None:
        with torch.no_grad():
            if mode == "kl":
                lm.sequence_kl(ids)
            elif mode == "two_forwards":
                lm.model(ids).logits
                lm.model(ids).logits
            else:
                lm.model(ids).logits

    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run_once()
        seconds.append(time.perf_counter() - started)
    # ru_maxrss is the process's peak resident size in KiB on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_growth_mb": peak - baseline}


def measure(mode: str, model_dir: Path, positions: int, repeats: int, chunk_size: int) -> dict:
    command = [
        sys.executable, __file__, "--worker", mode, "--model-dir", str(model_dir),
        "--positions", str(positions), "--repeats", str(repeats), "--chunk-size", str(chunk_size),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, nargs="+", default=[4096, 32768], help="sequence lengths in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode; the table shows medians")
    parser.add_argument("--chunk-size", type=int, default=1024, help="kl_chunk_size of the KL path")
    parser.add_argument("--worker", choices=["kl", "two_forwards", "one_forward"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = worker(args.worker, args.model_dir, args.positions[0], args.repeats, args.chunk_size)
        print(json.dumps(result))
        return

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        build_model(Path(folder))
        for positions in args.positions:
            kl = measure("kl", Path(folder), positions, args.repeats, args.chunk_size)
            two = measure("two_forwards", Path(folder), positions, args.repeats, args.chunk_size)
            one = measure("one_forward", Path(folder), positions, 1, args.chunk_size)
            kl_seconds = statistics.median(kl["seconds"])
            two_seconds = statistics.median(two["seconds"])
            rows.append(
                (
                    f"{positions}",
                    f"{two_seconds:.2f}",
                    f"{kl_seconds:.2f}",
                    f"{kl_seconds / two_seconds:.2f}",
                    f"{one['peak_growth_mb']:.0f}",
                    f"{kl['peak_growth_mb']:.0f}",
                    f"{kl['peak_growth_mb'] / one['peak_growth_mb']:.2f}",
                )
            )

    header = ("positions", "2 forwards s", "KL s", "time ratio", "1 forward peak MB", "KL peak MB", "memory ratio")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    print(f"tiny random LLaMA (2 layers, hidden 128, vocab {VOCAB_SIZE}), CPU, kl_chunk_size={args.chunk_size}, "
          f"median of {args.repeats} runs")
    for row in [header, *rows]:
        print("| " + " | ".join(cell.rjust(width) for cell, width in zip(row, widths)) + " |")


if __name__ == "__main__":
    main()
