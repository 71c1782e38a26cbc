"""Train the tiny LLaMA checkpoint that ships with lcc as its embedded default.

    python scripts/train_demo_model.py                      # writes lcc_models/demo_checkpoint/
    python scripts/train_demo_model.py --steps 50 --output /tmp/tiny   # quick smoke run

The training text is the source code of the CPython standard library that runs
this script (code, comments and docstrings), read from disk, so nothing has to be
downloaded and no third-party text enters the repository. The documentation text
in ``pydoc_data.topics`` is left out of training, because the demo task evaluates
on it. A byte-level BPE tokenizer is trained on the same text.

The result depends on the Python version, whose standard library is the corpus, and on
the torch version. Both are written to ``training_info.json`` beside the weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sysconfig
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

logger = logging.getLogger("train_demo_model")

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "lcc_models" / "demo_checkpoint"
# Standard-library folders left out of the corpus: test suites (large, repetitive
# data files), third-party packages and the documentation the demo task evaluates on.
EXCLUDED_TOP_LEVEL = {"test", "site-packages", "pydoc_data", "idlelib", "lib2to3", "turtledemo"}


def collect_corpus() -> list[str]:
    """Return the text of every standard-library source file, in sorted path order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if parts[0] in EXCLUDED_TOP_LEVEL or "tests" in parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) >= 200:
            documents.append(text)
    return documents


def train_tokenizer(documents: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer that prepends ``<s>`` like LLaMA-2's does."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=2048,
    )


def build_model(vocab_size: int, bos_id: int, eos_id: int) -> LlamaForCausalLM:
    # Every linear layer's input width (128 and 384) is a multiple of the default
    # quantization group size of 128, as it is for LLaMA-2-7B (4096 and 11008).
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    return LlamaForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="checkpoint folder to write")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per training sequence")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    torch.manual_seed(args.seed)
    documents = collect_corpus()
    logger.info("corpus: %d files, %d characters", len(documents), sum(map(len, documents)))
    tokenizer = train_tokenizer(documents, args.vocab_size)

    # One long token stream, each file starting with BOS, cut into training windows.
    stream = []
    for ids in tokenizer(documents)["input_ids"]:
        stream.extend(ids)
    tokens = torch.tensor(stream, dtype=torch.long)
    logger.info("corpus: %d tokens", tokens.numel())

    model = build_model(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, args.steps // 20)

    def learning_rate(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(args.steps):
        offsets = torch.randint(0, tokens.numel() - args.seq_len - 1, (args.batch_size,), generator=generator)
        batch = torch.stack([tokens[o : o + args.seq_len] for o in offsets.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            logger.info("step %d/%d loss %.3f (%.0f s)", step, args.steps, loss.item(), time.time() - start)

    args.output.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    # Name the class that both transformers 4 and 5 resolve, not the 5-only alias.
    tokenizer_config_path = args.output / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "corpus_files": len(documents),
        "corpus_tokens": int(tokens.numel()),
        "final_training_loss": round(loss.item(), 4),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output"},
    }
    (args.output / "training_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
