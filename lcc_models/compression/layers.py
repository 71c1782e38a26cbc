"""The linear layer that compression methods modify, and the switch back to the reference.

``CompressedLinear`` takes over the parameters of the ``nn.Linear`` it replaces and keeps
a copy of the original weight, so one loaded model serves both as the compressed model
and, inside ``reference_mode(model)``, as the uncompressed reference. Its ``extra_repr``
lists what each method did, so ``print(model)`` shows it layer by layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


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
        return layer

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.use_reference:
            if self.reference_weight is None:
                raise RuntimeError(f"{self.qualified_name} was compressed without keeping its original weight")
            weight = self.reference_weight
        return F.linear(inputs, weight, self.bias)

    def add_step(self, description: str) -> None:
        """Record what a compression method did to this layer, for ``print(model)``."""
        self.compression_steps.append(description)

    def extra_repr(self) -> str:
        steps = "; ".join(self.compression_steps) or "uncompressed"
        return f"{super().extra_repr()}, {steps}"


@contextmanager
def reference_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with every compressed layer's original weights inside the block."""
    layers = [module for module in model.modules() if isinstance(module, CompressedLinear)]
    for layer in layers:
        layer.use_reference = True
    try:
        yield
    finally:
        for layer in layers:
            layer.use_reference = False
