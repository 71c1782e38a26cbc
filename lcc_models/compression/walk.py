"""The single walk over a model that applies every compression method.

    report = compress_model(model, spec)     # in place; spec from CompressionSpec.from_model_args
    print(model)                             # CompressedLinear(..., w_bits=3 group=128 asym rtn)

Targets are the ``nn.Linear`` layers inside the decoder blocks (never the embeddings or
``lm_head``), optionally narrowed by ``targets=``. Every method checks all targets before
any weight changes; then the blocks are compressed one after another.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import defaultdict

import torch
from torch import nn
from tqdm import tqdm

from lcc_models.compression.base import CompressionMethod, TargetLayer
from lcc_models.compression.layers import CompressedLinear
from lcc_models.compression.magnitude import MagnitudePruning
from lcc_models.compression.report import CompressionReport, measure
from lcc_models.compression.rtn import RoundToNearest
from lcc_models.spec import CompressionSpec, ModelArgumentError

logger = logging.getLogger(__name__)


def build_methods(spec: CompressionSpec) -> list[CompressionMethod]:
    """Return the methods of ``spec`` in the order of ``spec.steps()``."""
    methods: list[CompressionMethod] = []
    if spec.prune == "magnitude":
        methods.append(MagnitudePruning(spec.sparsity, spec.prune_scope))
    if spec.w_bits is not None:
        methods.append(RoundToNearest(spec.w_bits, spec.w_group_size, spec.w_sym))
    assert [method.name for method in methods] == spec.steps(), "build_methods and CompressionSpec.steps disagree"
    return methods


def find_decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return the qualified name and the ``nn.ModuleList`` of the model's decoder blocks."""
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    num_layers = getattr(text_config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if num_layers is not None and len(module) != num_layers:
            continue
        if any(isinstance(child, nn.Linear) for child in module[0].modules()):
            return name, module
    raise ValueError(
        f"could not find the decoder blocks of {type(model).__name__}: expected an nn.ModuleList of "
        f"{num_layers} blocks containing nn.Linear layers"
    )


def select_targets(model: nn.Module, targets: str | None = None) -> list[TargetLayer]:
    """Return the linear layers to compress, in block order.

    ``targets`` is a '+'-separated list of patterns. A pattern with '.' or a wildcard is
    matched (fnmatch) against the qualified name; a bare name such as ``q_proj`` matches
    the last name component.
    """
    blocks_name, blocks = find_decoder_blocks(model)
    candidates = []
    for block_index, block in enumerate(blocks):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear) and name:
                qualified = f"{blocks_name}.{block_index}.{name}"
                parent_name, _, attribute = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                candidates.append(TargetLayer(qualified, attribute, block_index, parent, attribute, module))
    if targets is None:
        return candidates

    patterns = [pattern.strip() for pattern in targets.split("+") if pattern.strip()]
    selected = []
    for pattern in patterns:
        matches = [layer for layer in candidates if _matches(layer, pattern)]
        if not matches:
            layer_types = sorted({layer.layer_type for layer in candidates})
            raise ModelArgumentError(
                f"invalid targets pattern {pattern!r}: it matches no linear layer inside the decoder blocks "
                f"({blocks_name}.*). Accepted: '+'-separated layer names ({', '.join(layer_types)}) or glob "
                f"patterns on qualified names such as '{candidates[0].qualified_name}'; "
                "embeddings and lm_head are never compressed"
            )
        selected.extend(layer for layer in matches if layer not in selected)
    return [layer for layer in candidates if layer in selected]


def _matches(layer: TargetLayer, pattern: str) -> bool:
    if "." in pattern or any(char in pattern for char in "*?["):
        return fnmatch.fnmatchcase(layer.qualified_name, pattern)
    return layer.layer_type == pattern


@torch.no_grad()
def compress_model(model: nn.Module, spec: CompressionSpec, keep_reference: bool = True) -> CompressionReport:
    """Compress ``model`` in place as ``spec`` requests and return what was measured afterwards.

    With ``keep_reference`` every compressed layer keeps its original weight, so that
``reference_mode(model)`` can run the uncompressed model. Without it, which suits a
separate reference model, that copy is not made.
    """
    targets = select_targets(model, spec.targets)
    methods = build_methods(spec)
    for method in methods:
        method.check(targets)

    seconds: dict[str, float] = defaultdict(float)
    by_block: dict[int, list[TargetLayer]] = defaultdict(list)
    for target in targets:
        by_block[target.block_index].append(target)
    started = time.perf_counter()
    for block_index in tqdm(sorted(by_block), desc="Compressing blocks", unit="block"):
        for target in by_block[block_index]:
            layer = CompressedLinear.from_linear(target.linear, target.qualified_name, keep_reference)
            setattr(target.parent, target.attribute, layer)
            for method in methods:
                method_started = time.perf_counter()
                method.apply(layer)
                seconds[target.layer_type] += time.perf_counter() - method_started

    report = measure(model, spec, seconds, time.perf_counter() - started)
    report.log_summary()
    return report
