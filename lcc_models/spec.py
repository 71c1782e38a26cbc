"""The compression keys of ``--model_args``, parsed and checked before any model is loaded.

    spec, rest = CompressionSpec.from_model_args({"pretrained": "...", "w_bits": 3, "sparsity": 0.5, ...})

Every invalid value or combination raises ``ModelArgumentError`` naming the key, the value,
the accepted values and the fix. Methods are applied in the fixed order of
``CompressionSpec.steps()``: pruning, then weight quantization (whose levels include 0, so
pruned weights stay zero), then the run-time quantizers of activations and of the KV
cache, then noise on the KV cache.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PRUNE_METHODS = ("magnitude", "wanda", "random", "sparsegpt")
PRUNE_SCOPES = ("row", "layer")
W_METHODS = ("rtn", "gptq")
SALIENT_SCORES = ("magnitude", "activation")
CALIBRATION_DATASETS = ("c4", "wikitext")
W_BITS_RANGE = (2, 8)
A_BITS_RANGE = (4, 8)
KV_BITS_RANGE = (2, 8)
DEFAULT_W_GROUP_SIZE = 128
DEFAULT_KL_CHUNK_SIZE = 1024
DEFAULT_CALIB_DATA = "c4"
DEFAULT_CALIB_NSAMPLES = 128
# Calibration length is fixed, never the model's maximum context: 128 sequences of
# 32k positions of a 4096-wide model would take 32 GB of bf16 activations.
DEFAULT_CALIB_SEQLEN = 2048
DEFAULT_SALIENT_FRAC = 0.02
DEFAULT_SALIENT_BITS = 8
DEFAULT_GPTQ_DAMP = 0.01
DEFAULT_GPTQ_BLOCK = 128

# Keys lcc adds on top of --model hf, with the help text used in error messages.
COMPRESSION_KEYS = {
    "prune": f"pruning method: one of {', '.join(PRUNE_METHODS)}",
    "sparsity": "fraction of weights to prune, a float in [0, 1)",
    "prune_scope": "where weights compete for pruning: row (each output row, the default) or layer (the whole matrix)",
    "nm": "N:M semi-structured sparsity, at most N non-zero weights in every M consecutive input weights of a row (2:4)",
    "seed": "random seed of random pruning, calibration sampling and KV-cache noise (default 0)",
    "calib_data": f"calibration text: {', '.join(CALIBRATION_DATASETS)} (from the hub), or the path of a local text or JSONL file (default {DEFAULT_CALIB_DATA})",
    "calib_nsamples": f"number of calibration sequences (default {DEFAULT_CALIB_NSAMPLES})",
    "calib_seqlen": f"tokens per calibration sequence (default {DEFAULT_CALIB_SEQLEN})",
    "w_bits": f"weight quantization bits, an integer from {W_BITS_RANGE[0]} to {W_BITS_RANGE[1]}",
    "w_group_size": f"weights per quantization group along the input dimension (default {DEFAULT_W_GROUP_SIZE}); -1 for one group per output channel",
    "w_sym": "symmetric weight quantization: true, or false (the default, asymmetric with a zero point)",
    "w_method": f"weight quantization method: {' or '.join(W_METHODS)} (default rtn)",
    "gptq_damp": f"GPTQ dampening, as a fraction of the mean Hessian diagonal (default {DEFAULT_GPTQ_DAMP})",
    "gptq_block": f"GPTQ columns updated per block (default {DEFAULT_GPTQ_BLOCK})",
    "gptq_act_order": "GPTQ quantizes columns in order of decreasing Hessian diagonal: true or false (default)",
    "salient_frac": f"fraction of weight groups kept at salient_bits (default {DEFAULT_SALIENT_FRAC} once any salient key is given)",
    "salient_bits": f"bits of the salient weight groups (default {DEFAULT_SALIENT_BITS})",
    "salient_by": f"score that picks the salient groups: {' or '.join(SALIENT_SCORES)} (default magnitude)",
    "a_bits": f"per-token dynamic quantization of every target layer's input, an integer from {A_BITS_RANGE[0]} to {A_BITS_RANGE[1]}",
    "kv_bits": f"KV-cache quantization bits, an integer from {KV_BITS_RANGE[0]} to {KV_BITS_RANGE[1]}",
    "kv_group_size": "channels per KV-cache quantization group within one head and one token (default -1, the whole head)",
    "kv_noise_std": "standard deviation of seeded Gaussian noise added to every cached key and value (a float >= 0)",
    "targets": "which linear layers to compress: '+'-separated layer names or glob patterns (default: every nn.Linear in the decoder blocks)",
}
EVALUATION_KEYS = {
    "reference": "reference model (path or hub id); default: the uncompressed weights of pretrained",
    "kl_chunk_size": f"positions per chunk of the lm_head and softmax in the KL tasks (default {DEFAULT_KL_CHUNK_SIZE})",
}
LCC_KEYS = {**COMPRESSION_KEYS, **EVALUATION_KEYS}
CALIBRATION_KEYS = ("calib_data", "calib_nsamples", "calib_seqlen")
GPTQ_KEYS = ("gptq_damp", "gptq_block", "gptq_act_order")
SALIENT_KEYS = ("salient_frac", "salient_bits", "salient_by")


class ModelArgumentError(ValueError):
    """An invalid ``--model_args`` key or value for ``lcc_compressed``."""


def near_matches(name: str, choices: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)


@dataclass(frozen=True)
class CompressionSpec:
    """The requested compression; the defaults compress nothing."""

    prune: str | None = None
    sparsity: float | None = None
    prune_scope: str = "row"
    nm: tuple[int, int] | None = None
    seed: int = 0
    calib_data: str = DEFAULT_CALIB_DATA
    calib_nsamples: int = DEFAULT_CALIB_NSAMPLES
    calib_seqlen: int = DEFAULT_CALIB_SEQLEN
    w_bits: int | None = None
    w_group_size: int = DEFAULT_W_GROUP_SIZE
    w_sym: bool = False
    w_method: str = "rtn"
    gptq_damp: float = DEFAULT_GPTQ_DAMP
    gptq_block: int = DEFAULT_GPTQ_BLOCK
    gptq_act_order: bool = False
    salient_frac: float | None = None
    salient_bits: int = DEFAULT_SALIENT_BITS
    salient_by: str = "magnitude"
    a_bits: int | None = None
    kv_bits: int | None = None
    kv_group_size: int = -1
    kv_noise_std: float | None = None
    targets: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.steps())

    @property
    def needs_calibration(self) -> bool:
        """Whether a method reads activations of calibration text (Wanda, SparseGPT, GPTQ, activation-scored salient groups)."""
        return (
            self.prune in ("wanda", "sparsegpt")
            or (self.w_bits is not None and self.w_method == "gptq")
            or (self.salient_frac is not None and self.salient_by == "activation")
        )

    @property
    def target_sparsity(self) -> float | None:
        """Fraction of weights pruned: ``sparsity``, or 1 - N/M for ``nm``."""
        if self.nm is not None:
            return 1.0 - self.nm[0] / self.nm[1]
        return self.sparsity

    def steps(self) -> list[str]:
        """Return the names of the methods to apply, in the order they are applied."""
        order = []
        if self.prune is not None:
            order.append(f"prune:{self.prune}")
        if self.w_bits is not None:
            order.append(f"quantize_weights:{self.w_method}{'+salient' if self.salient_frac is not None else ''}")
        if self.a_bits is not None:
            order.append("quantize_activations:per_token")
        if self.kv_bits is not None:
            order.append("quantize_kv_cache:per_token")
        if self.kv_noise_std is not None:
            order.append("kv_cache_noise:gaussian")
        return order

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["nm"] = f"{self.nm[0]}:{self.nm[1]}" if self.nm else None
        if not self.needs_calibration:
            # Defaults of settings that no method read would suggest a calibration set was used.
            for key in CALIBRATION_KEYS:
                values[key] = None
        return {**values, "order": self.steps()}

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any]) -> tuple[CompressionSpec, dict[str, Any]]:
        """Split ``model_args`` into the compression spec and the remaining arguments."""
        rest = {key: value for key, value in model_args.items() if key not in COMPRESSION_KEYS}
        compression_args = {key: value for key, value in model_args.items() if key in COMPRESSION_KEYS}
        values: dict[str, Any] = {}

        for key, value in compression_args.items():
            if key == "prune" and str(value).lower() == "none":
                continue
            values[key] = _PARSERS[key](key, value)
        if any(key in values for key in SALIENT_KEYS):
            values.setdefault("salient_frac", DEFAULT_SALIENT_FRAC)

        spec = cls(**values)
        spec._check_combinations(compression_args)
        return spec, rest

    def _check_combinations(self, args: dict[str, Any]) -> None:
        self._check_pruning(args)
        self._check_weight_quantization(args)
        if self.kv_bits is None and "kv_group_size" in args:
            raise ModelArgumentError(
                f"kv_group_size={args['kv_group_size']} has no effect without kv_bits=<{KV_BITS_RANGE[0]}..{KV_BITS_RANGE[1]}>; "
                "add kv_bits, or remove kv_group_size"
            )
        if not self.needs_calibration:
            _reject_unused(args, CALIBRATION_KEYS, "a method that reads calibration data (prune=wanda, prune=sparsegpt, w_method=gptq or salient_by=activation)")
        if not (self.prune == "random" or self.kv_noise_std is not None or self.needs_calibration):
            _reject_unused(args, ("seed",), "prune=random, kv_noise_std or a method that reads calibration data")
        if "targets" in args and not (self.prune is not None or self.w_bits is not None or self.a_bits is not None):
            raise ModelArgumentError(
                f"targets={args['targets']} has no effect without a method that compresses linear layers; "
                "add prune=..., w_bits=... or a_bits=..."
            )

    def _check_pruning(self, args: dict[str, Any]) -> None:
        if self.prune is None:
            _reject_unused(args, ("sparsity", "prune_scope", "nm"), f"prune=<{'|'.join(PRUNE_METHODS)}>")
            return
        if self.nm is not None:
            if self.prune == "random":
                raise ModelArgumentError(
                    f"invalid nm={args['nm']} with prune=random: N:M sparsity is accepted with "
                    "prune=magnitude, prune=wanda and prune=sparsegpt. For random pruning, use sparsity=<fraction> instead"
                )
            for key in ("sparsity", "prune_scope"):
                if key in args:
                    raise ModelArgumentError(
                        f"{key}={args[key]} conflicts with nm={args['nm']}, which fixes the sparsity at "
                        f"1 - N/M = {self.target_sparsity:g} within every group of M input weights; remove {key}"
                    )
        elif self.sparsity is None:
            raise ModelArgumentError(
                f"prune={self.prune} needs sparsity=<float in [0, 1)>, the fraction of weights to prune, "
                "or nm=N:M for semi-structured sparsity"
            )
        if self.prune == "sparsegpt" and "prune_scope" in args:
            raise ModelArgumentError(
                f"prune_scope={args['prune_scope']} is not accepted with prune=sparsegpt, which picks its mask "
                "over blocks of columns as it updates the weights; remove prune_scope"
            )

    def _check_weight_quantization(self, args: dict[str, Any]) -> None:
        if self.w_bits is None:
            _reject_unused(
                args,
                ("w_group_size", "w_sym", "w_method", *GPTQ_KEYS, *SALIENT_KEYS),
                f"w_bits=<{W_BITS_RANGE[0]}..{W_BITS_RANGE[1]}>",
            )
            return
        if self.w_method != "gptq":
            _reject_unused(args, GPTQ_KEYS, "w_method=gptq")
        if self.salient_frac is not None and self.salient_bits <= self.w_bits:
            raise ModelArgumentError(
                f"invalid salient_bits={self.salient_bits}: salient groups must keep more bits than "
                f"w_bits={self.w_bits}; accepted values are integers from {self.w_bits + 1} to {W_BITS_RANGE[1]}"
            )


def _reject_unused(args: dict[str, Any], keys: Iterable[str], needed: str) -> None:
    for key in keys:
        if key in args:
            raise ModelArgumentError(f"{key}={args[key]} has no effect without {needed}; add it, or remove {key}")


_PARSERS = {
    "prune": lambda key, value: _choice(key, value, PRUNE_METHODS),
    "sparsity": lambda key, value: _float_in_range(key, value, 0.0, 1.0),
    "prune_scope": lambda key, value: _choice(key, value, PRUNE_SCOPES),
    "nm": lambda key, value: _n_of_m(key, value),
    "seed": lambda key, value: _integer(key, value, 0, None),
    "calib_data": lambda key, value: _calibration_source(key, value),
    "calib_nsamples": lambda key, value: _integer(key, value, 1, None),
    "calib_seqlen": lambda key, value: _integer(key, value, 2, None),
    "w_bits": lambda key, value: _integer(key, value, *W_BITS_RANGE),
    "w_group_size": lambda key, value: _group_size(
        key,
        value,
        "a positive integer that divides the input width of every target layer (128 is the common choice), "
        "or -1 for one group per output channel",
    ),
    "w_sym": lambda key, value: _boolean(key, value),
    "w_method": lambda key, value: _choice(key, value, W_METHODS),
    "gptq_damp": lambda key, value: _float_in_range(key, value, 0.0, 1.0, low_open=True),
    "gptq_block": lambda key, value: _integer(key, value, 1, None),
    "gptq_act_order": lambda key, value: _boolean(key, value),
    "salient_frac": lambda key, value: _float_in_range(key, value, 0.0, 1.0),
    "salient_bits": lambda key, value: _integer(key, value, W_BITS_RANGE[0] + 1, W_BITS_RANGE[1]),
    "salient_by": lambda key, value: _choice(key, value, SALIENT_SCORES),
    "a_bits": lambda key, value: _integer(key, value, *A_BITS_RANGE),
    "kv_bits": lambda key, value: _integer(key, value, *KV_BITS_RANGE),
    "kv_group_size": lambda key, value: _group_size(
        key, value, "a positive integer that divides the head dimension, or -1 for one group per head and token"
    ),
    "kv_noise_std": lambda key, value: _float_in_range(key, value, 0.0, float("inf")),
    "targets": lambda key, value: _nonempty_string(key, value),
}


def parse_positive_int(key: str, value: Any) -> int:
    return _integer(key, value, 1, None)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    text = str(value).lower()
    if text not in choices:
        hint = near_matches(text, choices)
        did_you_mean = f" Did you mean {hint[0]}?" if hint else ""
        raise ModelArgumentError(f"invalid {key}={value!r}: accepted values are {', '.join(choices)}.{did_you_mean}")
    return text


def _integer(key: str, value: Any, low: int, high: int | None) -> int:
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value)
    accepted = f"integers from {low} to {high}" if high is not None else f"integers >= {low}"
    if number is None or number < low or (high is not None and number > high):
        raise ModelArgumentError(f"invalid {key}={value!r}: accepted values are {accepted}")
    return number


def _float_in_range(key: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    above_low = number is not None and (number > low if low_open else number >= low)
    if number is None or not above_low or not number < high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g})"
        raise ModelArgumentError(f"invalid {key}={value!r}: accepted values are floats in {interval}")
    return number


def _n_of_m(key: str, value: Any) -> tuple[int, int]:
    text = str(value).strip()
    parts = text.split(":")
    if len(parts) == 2 and all(part.isdigit() for part in parts):
        num_kept, group_size = int(parts[0]), int(parts[1])
        if 0 < num_kept < group_size:
            return num_kept, group_size
    raise ModelArgumentError(
        f"invalid {key}={value!r}: accepted values are N:M with integers 0 < N < M, such as 2:4 "
        "(at most N non-zero weights in every M consecutive input weights of a row)"
    )


def _calibration_source(key: str, value: Any) -> str:
    text = str(value).strip()
    if text.lower() in CALIBRATION_DATASETS:
        return text.lower()
    path = Path(text).expanduser().resolve()
    if not path.is_file():
        raise ModelArgumentError(
            f"invalid {key}={value!r}: it is neither a dataset name ({', '.join(CALIBRATION_DATASETS)}) nor an "
            "existing file. Accepted values are c4, wikitext, or the path of a local plain-text file or of a "
            "JSONL file with a 'text' field per line"
        )
    return str(path)


def _group_size(key: str, value: Any, accepted: str) -> int:
    try:
        number = _integer(key, value, -1, None)
    except ModelArgumentError:
        number = 0
    if number == 0:
        raise ModelArgumentError(f"invalid {key}={value!r}: accepted values are {accepted}")
    return number


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ModelArgumentError(f"invalid {key}={value!r}: accepted values are true and false")


def _nonempty_string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ModelArgumentError(f"invalid {key}={value!r}: expected a non-empty string")
    return value.strip()
