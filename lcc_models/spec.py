"""The compression keys of ``--model_args``, parsed and checked before any model is loaded.

    spec, rest = CompressionSpec.from_model_args({"pretrained": "...", "w_bits": 3, "sparsity": 0.5, ...})

Every invalid value raises ``ModelArgumentError`` naming the key, the value, the accepted
values and the fix. Methods are applied in a fixed order: pruning first, then weight
quantization, which keeps the pruned weights at exactly zero.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

PRUNE_METHODS = ("magnitude",)
PRUNE_SCOPES = ("row", "layer")
W_BITS_RANGE = (2, 8)
DEFAULT_W_GROUP_SIZE = 128
DEFAULT_KL_CHUNK_SIZE = 1024

# Keys lcc adds on top of --model hf, with the help text used in error messages.
COMPRESSION_KEYS = {
    "prune": f"pruning method: one of {', '.join(PRUNE_METHODS)}",
    "sparsity": "fraction of weights to prune, a float in [0, 1)",
    "prune_scope": "where weights compete for pruning: row (each output row, the default) or layer (the whole matrix)",
    "w_bits": f"weight quantization bits, an integer from {W_BITS_RANGE[0]} to {W_BITS_RANGE[1]}",
    "w_group_size": f"weights per quantization group along the input dimension (default {DEFAULT_W_GROUP_SIZE}); -1 for one group per output channel",
    "w_sym": "symmetric weight quantization: true, or false (the default, asymmetric with a zero point)",
    "targets": "which linear layers to compress: '+'-separated layer names or glob patterns (default: every nn.Linear in the decoder blocks)",
}
EVALUATION_KEYS = {
    "reference": "reference model (path or hub id); default: the uncompressed weights of pretrained",
    "kl_chunk_size": f"positions per chunk of the lm_head and softmax in the KL tasks (default {DEFAULT_KL_CHUNK_SIZE})",
}
LCC_KEYS = {**COMPRESSION_KEYS, **EVALUATION_KEYS}


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
    w_bits: int | None = None
    w_group_size: int = DEFAULT_W_GROUP_SIZE
    w_sym: bool = False
    targets: str | None = None

    @property
    def enabled(self) -> bool:
        return self.prune is not None or self.w_bits is not None

    def steps(self) -> list[str]:
        """Return the names of the methods to apply, in the order they are applied."""
        order = []
        if self.prune is not None:
            order.append(f"prune:{self.prune}")
        if self.w_bits is not None:
            order.append("quantize_weights:rtn")
        return order

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "order": self.steps()}

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

        spec = cls(**values)
        spec._check_combinations(compression_args)
        return spec, rest

    def _check_combinations(self, compression_args: dict[str, Any]) -> None:
        if self.prune is not None and self.sparsity is None:
            raise ModelArgumentError(
                f"prune={self.prune} needs sparsity=<float in [0, 1)>, the fraction of weights to prune"
            )
        if self.prune is None:
            for key in ("sparsity", "prune_scope"):
                if key in compression_args:
                    raise ModelArgumentError(
                        f"{key}={compression_args[key]} has no effect without prune=<method>; add one of "
                        f"prune={'|'.join(PRUNE_METHODS)}, or remove {key}"
                    )
        if self.w_bits is None:
            for key in ("w_group_size", "w_sym"):
                if key in compression_args:
                    raise ModelArgumentError(
                        f"{key}={compression_args[key]} has no effect without w_bits=<{W_BITS_RANGE[0]}..{W_BITS_RANGE[1]}>; "
                        f"add w_bits, or remove {key}"
                    )
        if "targets" in compression_args and not self.enabled:
            raise ModelArgumentError(
                f"targets={compression_args['targets']} has no effect without a compression method; add prune=... or w_bits=..."
            )


_PARSERS = {
    "prune": lambda key, value: _choice(key, value, PRUNE_METHODS),
    "sparsity": lambda key, value: _float_in_range(key, value, 0.0, 1.0),
    "prune_scope": lambda key, value: _choice(key, value, PRUNE_SCOPES),
    "w_bits": lambda key, value: _integer(key, value, *W_BITS_RANGE),
    "w_group_size": lambda key, value: _group_size(key, value),
    "w_sym": lambda key, value: _boolean(key, value),
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
    accepted = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    if number is None or number < low or (high is not None and number > high):
        raise ModelArgumentError(f"invalid {key}={value!r}: accepted values are {accepted}")
    return number


def _float_in_range(key: str, value: Any, low: float, high: float) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number < high:
        raise ModelArgumentError(f"invalid {key}={value!r}: accepted values are floats in [{low:g}, {high:g})")
    return number


def _group_size(key: str, value: Any) -> int:
    try:
        number = _integer(key, value, -1, None)
    except ModelArgumentError:
        number = 0
    if number == 0:
        raise ModelArgumentError(
            f"invalid {key}={value!r}: accepted values are a positive integer that divides the input width "
            "of every target layer (128 is the common choice), or -1 for one group per output channel"
        )
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
