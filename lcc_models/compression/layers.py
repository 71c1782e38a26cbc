"""The linear layer that compression methods modify, and the switch back to the reference.

``CompressedLinear`` takes over the parameters of the ``nn.Linear`` it replaces and keeps
a copy of the original weight, so one loaded model serves both as the compressed model
and, inside ``reference_mode(model)``, as the uncompressed reference. It also quantizes
its input per token when ``a_bits`` is set. Its ``extra_repr`` lists what each method did,
so ``print(model)`` shows it layer by layer.

Run-time transforms of the KV cache sit on the attention modules under the attribute
``KV_TRANSFORM_ATTRIBUTE``; ``reference_mode`` switches them off too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from lcc_models.compression.quantizer import fake_quantize

KV_TRANSFORM_ATTRIBUTE = "lcc_kv_cache_transform"


class CompressedLinear(nn.Linear):
    """``nn.Linear`` whose weight is compressed in place, with the original kept as a buffer."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, qualified_name: str, keep_reference: bool = True) -> CompressedLinear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight = linear.weight
        layer.bias = linear.bias
        # Not persistent: save_pretrained() writes the compressed weights only.
        reference = linear.weight.detach().clone() if keep_reference else None
        layer.register_buffer("reference_weight", reference, persistent=False)
        layer.qualified_name = qualified_name
        layer.compression_steps: list[str] = []
        layer.use_reference = False
        layer.activation_bits: int | None = None
        return layer

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.use_reference:
            if self.reference_weight is None:
                raise RuntimeError(f"{self.qualified_name} was compressed without keeping its original weight")
            return F.linear(inputs, self.reference_weight, self.bias)
        if self.activation_bits is not None:
            # Per token: each row of the input (one token's features) is one asymmetric group.
            inputs = fake_quantize(inputs, self.activation_bits, group_size=-1, symmetric=False)
        return F.linear(inputs, self.weight, self.bias)

    def add_step(self, description: str) -> None:
        """Record what a compression method did to this layer, for ``print(model)``."""
        self.compression_steps.append(description)

    def extra_repr(self) -> str:
        steps = "; ".join(self.compression_steps) or "uncompressed"
        return f"{super().extra_repr()}, {steps}"


@contextmanager
def reference_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` uncompressed inside the block: original weights, no activation or KV-cache transforms."""
    switches = []
    for module in model.modules():
        if isinstance(module, CompressedLinear):
            switches.append(module)
        if hasattr(module, KV_TRANSFORM_ATTRIBUTE):
            switches.append(getattr(module, KV_TRANSFORM_ATTRIBUTE))
    for switch in switches:
        switch.use_reference = True
    try:
        yield
    finally:
        for switch in switches:
            switch.use_reference = False
