"""Calibration data for the methods that read activations (Wanda, SparseGPT, GPTQ, salient_by=activation).

    documents = read_documents("c4")                      # before the model loads: fails fast
    tokens = calibration_tokens(tokenizer, documents, "c4", nsamples=128, seqlen=2048, seed=0)  # [128, 2048]
    inputs = capture_block_inputs(model, blocks, tokens)       # the first block's inputs
    stats = collect_statistics(block, targets, inputs, needs)  # one forward of one block

The walk feeds the captured inputs through the model one block at a time: it collects
statistics of the block's target layers, compresses the block, and then runs the
compressed block to produce the next block's inputs. Only one block's activations are in
memory at a time: nsamples x seqlen x hidden values, 2 GB in bf16 for the defaults and a
4096-wide model.

Sources: ``c4`` is the first shard of allenai/c4 (English), the calibration set of Wanda
and SparseGPT. ``wikitext`` is the WikiText-2 raw train split. Any other value is a local
file, read as JSON Lines with a ``text`` field when its name ends in .jsonl (or .json),
and as plain text otherwise. Documents are shuffled with ``seed``, tokenized, concatenated
and cut into non-overlapping windows, of which ``nsamples`` are drawn with ``seed``. Each
window starts with BOS when the tokenizer adds one.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lcc_models.compression.base import FEATURE_NORMS, HESSIAN, LayerStatistics
from lcc_models.compression.layers import CompressedLinear
from lcc_tasks.sequences import tokenizer_adds_bos
from lcc_tasks.text_sources import TextSourceError, hub_column, read_jsonl_records, read_local_text

logger = logging.getLogger(__name__)

HUB_SOURCES = {
    "c4": {
        "path": "allenai/c4",
        "name": None,
        "data_files": {"train": "en/c4-train.00000-of-01024.json.gz"},
        "split": "train",
    },
    "wikitext": {"path": "Salesforce/wikitext", "name": "wikitext-2-raw-v1", "data_files": None, "split": "train"},
}


class CalibrationDataError(ValueError):
    """The calibration text could not be loaded, or it is too short for the requested samples."""


def read_documents(source: str) -> list[str]:
    """Return the documents of ``source``: a hub dataset name or a local file."""
    try:
        if source in HUB_SOURCES:
            return _hub_documents(source)
        path = Path(source)
        if path.suffix.lower() in (".jsonl", ".json"):
            return [record["text"] for record in read_jsonl_records(path, "text")]
        return [read_local_text(path)]
    except TextSourceError as error:
        raise CalibrationDataError(str(error)) from error


def _hub_documents(source: str) -> list[str]:
    settings = HUB_SOURCES[source]
    hint = (
        f" calib_data={source} needs the Hugging Face hub. Without access to it, pass "
        "calib_data=<local file>: a plain-text file, or a JSONL file with a 'text' field per line."
    )
    data_files = {"data_files": settings["data_files"]} if settings["data_files"] else None
    texts = hub_column(settings["path"], settings["name"], settings["split"], data_files, "text", hint)
    # WikiText rows are lines of one corpus. C4 rows are separate web documents.
    return ["\n\n".join(texts)] if source == "wikitext" else texts


def calibration_tokens(
    tokenizer: Any, documents: list[str], source: str, nsamples: int, seqlen: int, seed: int
) -> torch.Tensor:
    """Return ``nsamples`` token windows of ``seqlen`` tokens from ``documents``, as int64 [nsamples, seqlen]."""
    bos = [tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) else []
    body = seqlen - len(bos)
    needed = nsamples * body

    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    stream: list[int] = []
    for index in order:
        if len(stream) >= needed:
            break
        text = documents[index]
        if text.strip():
            stream.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    available = len(stream) // body
    if available < nsamples:
        raise CalibrationDataError(
            f"calib_data={source} has {len(stream)} tokens, enough for {available} calibration sequences of "
            f"calib_seqlen={seqlen} tokens, but calib_nsamples={nsamples} were requested. Use a longer text, "
            "a smaller calib_nsamples or a shorter calib_seqlen"
        )
    chosen = sorted(random.Random(seed).sample(range(available), nsamples))
    windows = [bos + stream[index * body : (index + 1) * body] for index in chosen]
    logger.info("Calibration data: %d sequences of %d tokens from %s", nsamples, seqlen, source)
    return torch.tensor(windows, dtype=torch.long)


# ---------------------------------------------------------------------- block inputs


class _InputsCaptured(Exception):
    """Raised by the hook on the first block once it has recorded its inputs."""


@dataclass
class BlockInputs:
    """The hidden states entering a block, one [1, seqlen, hidden] tensor per sample, and the block's other arguments."""

    hidden_states: list[torch.Tensor]
    block_kwargs: dict[str, Any]


def capture_block_inputs(model: nn.Module, blocks: nn.ModuleList, tokens: torch.Tensor) -> BlockInputs:
    """Run the model up to its first block for each calibration sequence and record what the block receives."""
    captured: list[torch.Tensor] = []
    block_kwargs: dict[str, Any] = {}

    def record(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        captured.append(hidden.detach())
        if not block_kwargs:
            block_kwargs.update({key: value for key, value in kwargs.items() if key != "hidden_states"})
        raise _InputsCaptured

    handle = blocks[0].register_forward_pre_hook(record, with_kwargs=True)
    device = model.get_input_embeddings().weight.device
    try:
        for sample in tokens:
            try:
                model(input_ids=sample.unsqueeze(0).to(device), use_cache=False)
            except _InputsCaptured:
                pass
    finally:
        handle.remove()
    # The block arguments (rotary cos/sin, causal mask, positions) are the same for every
    # sample, because all samples have the same length. No cache is built or read.
    block_kwargs["use_cache"] = False
    # transformers 5.25 names the cache argument ``cache``; earlier releases used the other two.
    for key in ("cache", "past_key_values", "past_key_value"):
        if key in block_kwargs:
            block_kwargs[key] = None
    return BlockInputs(captured, block_kwargs)


def run_block(block: nn.Module, inputs: BlockInputs, keep_outputs: bool = True) -> list[torch.Tensor]:
    """Run ``block`` on every sample and return the output hidden states (none unless ``keep_outputs``)."""
    device = next(block.parameters()).device
    kwargs = _to_device(inputs.block_kwargs, device)
    outputs = []
    for hidden in inputs.hidden_states:
        result = block(hidden.to(device), **kwargs)
        if keep_outputs:
            outputs.append(result[0] if isinstance(result, tuple) else result)
    return outputs


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(item, device) for item in value)
    if isinstance(value, list):
        return [_to_device(item, device) for item in value]
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    return value


# ---------------------------------------------------------------------- layer statistics


class _StatisticsCollector:
    """Forward hook that accumulates the input statistics of one linear layer in float32."""

    def __init__(self, layer: CompressedLinear, needs: set[str]) -> None:
        device = layer.weight.device
        self.tokens = 0
        self.squared_sum = torch.zeros(layer.in_features, dtype=torch.float32, device=device)
        self.gram = (
            torch.zeros(layer.in_features, layer.in_features, dtype=torch.float32, device=device)
            if HESSIAN in needs
            else None
        )

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        inputs = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        self.tokens += inputs.shape[0]
        self.squared_sum += inputs.pow(2).sum(dim=0)
        if self.gram is not None:
            self.gram.addmm_(inputs.T, inputs)

    def result(self) -> LayerStatistics:
        hessian = None
        if self.gram is not None:
            hessian = self.gram.mul_(2.0 / max(self.tokens, 1))
        return LayerStatistics(tokens=self.tokens, squared_sum=self.squared_sum, hessian=hessian)


def collect_statistics(
    block: nn.Module, layers: list[CompressedLinear], inputs: BlockInputs, needs: set[str]
) -> dict[str, LayerStatistics]:
    """Run ``block`` over the calibration inputs once and return each layer's statistics by qualified name."""
    unknown = needs - {FEATURE_NORMS, HESSIAN}
    if unknown:
        raise ValueError(f"unknown calibration statistics {sorted(unknown)}")
    collectors = {layer.qualified_name: _StatisticsCollector(layer, needs) for layer in layers}
    handles = [layer.register_forward_hook(collectors[layer.qualified_name]) for layer in layers]
    try:
        run_block(block, inputs, keep_outputs=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: collector.result() for name, collector in collectors.items()}
