"""The single walk over a model that applies every compression method.

    report = compress_model(model, spec)     # in place; spec from CompressionSpec.from_model_args
    print(model)                             # CompressedLinear(..., w_bits=3 group=128 asym rtn)

Targets are the ``nn.Linear`` layers inside the decoder blocks (never the embeddings or
``lm_head``), optionally narrowed by ``targets=``. Every method checks all targets before
any weight changes; then the blocks are compressed one after another, each layer by every
method in the order of ``CompressionSpec.steps()``.

When a method reads activations, the calibration sequences are captured at the input of
the first block, and each block receives the outputs of the blocks before it as they are
after compression. The statistics of all targets of a block come from one forward of the
block before any of them changes, as in Wanda's and SparseGPT's reference setups.
KV-cache transforms are installed on the attention modules after the walk.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import defaultdict

import torch
from torch import nn
from tqdm import tqdm

from lcc_models.compression.activations import ActivationQuantization
from lcc_models.compression.base import CompressionMethod, TargetLayer
from lcc_models.compression.blocks import find_decoder_blocks
from lcc_models.compression.calibration import capture_block_inputs, collect_statistics, run_block
from lcc_models.compression.gptq import GPTQ
from lcc_models.compression.kv_cache import check_group_size as check_kv_group_size
from lcc_models.compression.kv_cache import config_head_dim, find_attention_modules, install_kv_cache_transform
from lcc_models.compression.layers import CompressedLinear
from lcc_models.compression.magnitude import MagnitudePruning
from lcc_models.compression.random_pruning import RandomPruning
from lcc_models.compression.report import CompressionReport, measure
from lcc_models.compression.rtn import RoundToNearest
from lcc_models.compression.salient import SalientGroups
from lcc_models.compression.sparsegpt import SparseGPTPruning
from lcc_models.compression.wanda import WandaPruning
from lcc_models.spec import CompressionSpec, ModelArgumentError

logger = logging.getLogger(__name__)


def build_methods(spec: CompressionSpec) -> list[CompressionMethod]:
    """Return the methods of ``spec`` that act on linear layers, in the order of ``spec.steps()``."""
    methods: list[CompressionMethod] = []
    sparsity, scope, nm = spec.sparsity, spec.prune_scope, spec.nm
    if spec.prune == "magnitude":
        methods.append(MagnitudePruning(sparsity, scope, nm))
    elif spec.prune == "wanda":
        methods.append(WandaPruning(sparsity, scope, nm))
    elif spec.prune == "random":
        methods.append(RandomPruning(sparsity, scope, spec.seed))
    elif spec.prune == "sparsegpt":
        methods.append(SparseGPTPruning(spec.target_sparsity, nm))

    if spec.w_bits is not None:
        salient = None
        if spec.salient_frac is not None:
            salient = SalientGroups(spec.salient_frac, spec.salient_bits, spec.salient_by)
        if spec.w_method == "gptq":
            methods.append(
                GPTQ(
                    spec.w_bits,
                    spec.w_group_size,
                    spec.w_sym,
                    salient,
                    damp=spec.gptq_damp,
                    block_size=spec.gptq_block,
                    act_order=spec.gptq_act_order,
                )
            )
        else:
            methods.append(RoundToNearest(spec.w_bits, spec.w_group_size, spec.w_sym, salient))
    if spec.a_bits is not None:
        methods.append(ActivationQuantization(spec.a_bits))

    linear_steps = [step for step in spec.steps() if not step.startswith(("quantize_kv_cache", "kv_cache_noise"))]
    assert [method.name for method in methods] == linear_steps, "build_methods and CompressionSpec.steps disagree"
    return methods


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


def check_structure(
    model: nn.Module, spec: CompressionSpec, methods: list[CompressionMethod] | None = None
) -> list[TargetLayer]:
    """Run every check of ``spec`` that needs only the model's modules, and return the target layers.

    The weights may be on the meta device, so ``CompressedHFLM`` runs this on a model built
    from the config before it loads any weight. ``methods`` defaults to ``build_methods(spec)``.
    """
    if methods is None:
        methods = build_methods(spec)
    # KV-cache methods alone leave every linear layer as it is.
    targets = select_targets(model, spec.targets) if methods else []
    for method in methods:
        method.check(targets)
    if spec.kv_bits is not None:
        attention_modules = find_attention_modules(model)
        if attention_modules:
            check_kv_group_size(spec.kv_group_size, config_head_dim(model, attention_modules[0][1]), model)
    return targets


@torch.no_grad()
def compress_model(
    model: nn.Module,
    spec: CompressionSpec,
    keep_reference: bool = True,
    calibration_tokens: torch.Tensor | None = None,
) -> CompressionReport:
    """Compress ``model`` in place as ``spec`` requests and return what was measured afterwards.

    With ``keep_reference`` every compressed layer keeps its original weight, so that
    ``reference_mode(model)`` can run the uncompressed model. Without it, which suits a
    separate reference model, that copy is not made. ``calibration_tokens`` [nsamples,
    seqlen] are required when a method reads activations (``spec.needs_calibration``).
    """
    methods = build_methods(spec)
    targets = check_structure(model, spec, methods)
    needs = {statistic for method in methods for statistic in method.statistics}
    if needs and calibration_tokens is None:
        raise ValueError(f"{', '.join(spec.steps())} needs calibration_tokens, but none were given")

    seconds: dict[str, float] = defaultdict(float)
    by_block: dict[int, list[TargetLayer]] = defaultdict(list)
    for target in targets:
        by_block[target.block_index].append(target)
    _, blocks = find_decoder_blocks(model)
    started = time.perf_counter()
    calibration_seconds = 0.0
    inputs = None
    if needs:
        calibration_started = time.perf_counter()
        inputs = capture_block_inputs(model, blocks, calibration_tokens)
        calibration_seconds += time.perf_counter() - calibration_started
    # With calibration, every block runs to feed the next one; otherwise only blocks with targets matter.
    block_indices = range(len(blocks)) if needs else sorted(by_block)

    for block_index in tqdm(block_indices, desc="Compressing blocks", unit="block", disable=not block_indices):
        layers = []
        for target in by_block.get(block_index, []):
            layer = CompressedLinear.from_linear(target.linear, target.qualified_name, keep_reference)
            setattr(target.parent, target.attribute, layer)
            layers.append(layer)

        statistics = {}
        if needs and layers:
            calibration_started = time.perf_counter()
            statistics = collect_statistics(blocks[block_index], layers, inputs, needs)
            calibration_seconds += time.perf_counter() - calibration_started
        for layer in layers:
            layer_type = layer.qualified_name.rpartition(".")[2]
            layer_statistics = statistics.pop(layer.qualified_name, None)
            for method in methods:
                method_started = time.perf_counter()
                method.apply(layer, layer_statistics if method.statistics else None)
                seconds[layer_type] += time.perf_counter() - method_started
            del layer_statistics  # frees the Hessian before the next layer's is used

        if needs and block_index + 1 < len(blocks):
            calibration_started = time.perf_counter()
            inputs.hidden_states = run_block(blocks[block_index], inputs)
            calibration_seconds += time.perf_counter() - calibration_started

    kv_cache = None
    if spec.kv_bits is not None or spec.kv_noise_std is not None:
        kv_cache = install_kv_cache_transform(
            model, bits=spec.kv_bits, group_size=spec.kv_group_size, noise_std=spec.kv_noise_std, seed=spec.seed
        )

    report = measure(model, spec, seconds, time.perf_counter() - started)
    report.calibration_seconds = calibration_seconds
    report.kv_cache = kv_cache
    report.log_summary()
    return report
